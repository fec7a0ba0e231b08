"""The pool core: a bounded, fair, fork-aware pool of one database's connections.

:class:`ConnectionPool` knows nothing of gunicorn; :class:`~gunicorn_pool.
database.DatabasePool` builds one per named config. Usage::

    pool = ConnectionPool(make_connector(cfg), name="default", options=cfg)
    pool.open()                       # warm-up: opens min_size connections
    with pool.connection() as conn:   # the driver's own connection
        cur = conn.cursor(); cur.execute("SELECT 1")
    pool.close()

Life cycle of a connection (the slot states and the invariants behind the
lock-free paths are in :mod:`gunicorn_pool.slot`):

1. *Open*: by ``open()`` (warm-up, up to ``min_size``) or on demand when a
   caller finds no idle connection and the pool holds fewer than ``max_size``.
   After a failed connect the pool backs off (exponential, with jitter, capped
   by ``reconnect_backoff_max``); callers during the back-off get
   :class:`ConnectError` at once instead of piling up on a dead server.
2. *Checkout*: an idle connection is taken (last returned first, so hot
   connections stay hot and surplus ones age out). If it outlived its
   ``max_lifetime`` (-10 % jitter per connection, so a worker's connections do
   not all expire together) it is replaced. If it was last used more than
   ``check_interval`` ago (HikariCP's rule), or, idle for ``probe_after`` or
   more, its connector's probe (for MySQL a zero-timeout poll of the socket,
   no round trip) says the server closed it, it is pinged with
   ``check_timeout`` as a hard bound; a dead one is replaced. Only this
   checkout step retries: a statement that failed is never re-run.
3. *Wait*: when ``max_size`` connections are out, the caller queues. Waiters
   are served strictly in arrival order: a returned connection is handed to
   the first waiter directly, never to a newcomer. A waiter gives up after
   ``timeout`` seconds (:class:`PoolTimeout`); when ``max_waiting`` callers
   already wait, a new one fails at once (:class:`TooManyRequests`).
4. *Return*: the connector says whether the user left anything open (one
   call, no round trip). If so, an open transaction is committed (clean exit
   of ``connection()``) or rolled back (exception, or ``putconn()``), and a
   session the user changed is reset. A connection whose user was interrupted
   by a BaseException (``gevent.Timeout``, ``GreenletExit``, ``SystemExit``,
   ``KeyboardInterrupt``) is in an unknown protocol state and is dropped,
   never reused (PyMySQL/PyMySQL#275).
5. *Close*: on ``close()``, expiry, a failed check, or when an idle connection
   above ``min_size`` was idle for ``max_idle`` seconds (checked when a
   connection is returned).

Fork safety: in a forked child (gunicorn ``--preload``) the first use drops
the inherited connections without a word to the server (PyMySQL's ``close()``
would send COM_QUIT and end the parent's session) and opens the child's own.

Concurrency and cost: the common checkout (an idle connection, nobody queued)
and the common return (nobody waiting) take no lock (invariants 1, 3 and 4 of
:mod:`gunicorn_pool.slot`). The lock, an OS lock even under gevent (it guards
short sections that never yield), serialises the rest: queueing, hand-offs,
opening, closing. A waiter blocks on its own ``threading`` lock or, once
gevent patched threading, parks on the hub (:mod:`gunicorn_pool._concurrency`).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, TypeVar

from . import _concurrency as cc
from . import leaks
from . import stats as keys
from ._frames import caller
from .connectors.base import DROP, RESET, Connector
from .core import LEASE_SINK, PoolObserver
from .errors import ConnectError, LeaseError, PoolClosed, PoolTimeout, TooManyRequests
from .options import DEFAULTS, PoolOptions
from .slot import CLOSED, IDLE, LENT, Slot

__all__ = ["ConnectionPool", "Lease", "PoolObserver"]

logger = logging.getLogger("gunicorn_pool")
monotonic = time.monotonic
T = TypeVar("T")

#: Counters the pool keeps itself (requests_num and usage_ms are summed from the slots).
_POOL_COUNTERS = (
    keys.REQUESTS_QUEUED, keys.REQUESTS_WAIT_MS, keys.REQUESTS_TIMEOUTS, keys.REQUESTS_ERRORS,
    keys.CONNECTIONS_NUM, keys.CONNECTIONS_MS, keys.CONNECTIONS_ERRORS, keys.CONNECTIONS_LOST,
    keys.CONNECTIONS_LEAKED, keys.CONNECTIONS_RESET, keys.CONNECTIONS_CLOSED,
)  # fmt: skip


class ConnectionPool(cc.ForkAware):
    """A pool of connections to one database, for use inside one process.

    *options* (a :class:`~gunicorn_pool.options.PoolOptions`, or a
    :class:`~gunicorn_pool.config.DatabaseConfig`, which is one) says how it
    sizes, waits and checks; keyword *overrides* replace single fields
    (``ConnectionPool(c, name="p", max_size=4)``). Sizes left at ``None`` take
    *default_sizes* (``(min, max)``): the service that builds the pool passes the
    worker type's (:func:`gunicorn_pool.service.fit`), the core reads no process
    global.
    """

    def __init__(self, connector: Connector, *, name: str, options: PoolOptions = DEFAULTS,
                 default_sizes: tuple[int, int] = (1, 1), **overrides: Any) -> None:  # fmt: skip
        options = dataclasses.replace(options, **overrides) if overrides else options
        options.check(name)
        self.name = name
        self.options = options
        self.dsn = connector.dsn or name
        self.min_size, self.max_size = options.sizes(default_sizes)
        self._connector = connector
        #: Set to a PoolObserver to be told of each connect, wait and lease (None: nobody asks).
        self.observer: Optional[PoolObserver] = None
        # A lease starts with attribute writes on the connection (its LeaseGuard) and no call,
        # unless the connector has more to do then; a plain return is one call (check_in).
        self._guarded = connector.guarded
        self._lend = connector.lend if type(connector).lend is not Connector.lend else None
        self._check_in = connector.check_in
        self._track_forks()
        self._reset_state()

    # -- process-local state ------------------------------------------------

    def _reset_state(self) -> None:
        """(Re)create everything that belongs to one process."""
        self.pid = os.getpid()
        self._generation = cc.fork_generation()
        self.inherited = False
        self._lock = cc.native_lock()
        self._waiter_class = cc.waiter_class()
        self._lock_free = cc.lock_free_ok()
        self._idle: deque[Slot] = deque()  # IDLE slots; the last returned on the right
        self._lent: dict[int, Slot] = {}  # slots lent by getconn(), by id() of the driver's connection
        self._waiters: deque[cc.Waiter] = deque()
        self._slots: dict[int, Slot] = {}  # every registered slot (IDLE, LENT or in a thread's hands)
        self._size = 0  # registered slots plus reservations (OPENING): never above max_size
        self.closed = False  #: True once close() ran (read by DatabasePool on every connection())
        self._watched = False  # by the leak watcher of this process (leak_timeout)
        self._told_closed = False  # the "closed by its user" warning was logged
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._last_error = ""
        # Figures of slots already closed (a slot counts its own while it lives).
        self._retired_uses = self._retired_usage_ms = 0
        self._counts = dict.fromkeys(_POOL_COUNTERS, 0)

    def _adopt_process(self) -> None:
        """Drop connections inherited through fork and start afresh here."""
        inherited = list(self._slots.values())
        parent = self.pid
        for slot in inherited:
            self._connector.discard(slot.raw)  # no word to the server: the parent owns the session
        self._reset_state()
        if inherited:
            logger.info(
                "pool %s (%s): dropped %d connection(s) inherited from pid %s",
                self.name, self.dsn, len(inherited), parent,
            )  # fmt: skip

    @property
    def options(self) -> PoolOptions:
        """The options this pool runs by (replace them whole: ``pool.options = replace(...)``)."""
        return self._options

    @options.setter
    def options(self, options: PoolOptions) -> None:
        self._options = options
        # Read on every return: a connection is looked at again on checkout only this long after.
        self._recheck_after = options.check_interval if options.probe_after is None else options.probe_after
        self._owner_check = options.owner_check
        self._leak_timeout = options.leak_timeout

    @property
    def leak_timeout(self) -> Optional[float]:
        """Seconds after which a lease held outside a request is reported (None: never)."""
        return self._leak_timeout

    @property
    def connector(self) -> Connector:
        """The connector this pool opens, checks and closes its connections with."""
        return self._connector

    @property
    def busy(self) -> int:
        """Connections out now (lent, or being opened): a snapshot read without the lock."""
        return self._size - len(self._idle)

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the sizes (the worker profile may be known only after the pool was built)."""
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(f"pool {self.name!r}: need 0 <= min_size <= max_size and max_size >= 1")
        self.min_size, self.max_size = min_size, max_size

    # -- opening (reservation -> OPENING -> a registered slot) -----------------------

    def open(self, *, deadline: Optional[float] = None) -> int:
        """Open connections up to ``min_size`` now; return how many were opened.

        *deadline* is a ``time.monotonic()`` value after which no further
        connect is started. Raises :class:`ConnectError` on the first failure.
        """
        if self.inherited:
            self._adopt_process()
        if not self._waiters:  # gevent may have patched threading since
            self._waiter_class = cc.waiter_class()
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        opened = 0
        while True:
            with self._lock:
                if self._size >= self.min_size:
                    return opened
                self._size += 1
            if deadline is not None and monotonic() >= deadline:
                self._release_capacity()
                raise ConnectError(
                    f"pool {self.name!r} ({self.dsn}): warm-up deadline passed after {opened} connection(s)"
                )
            try:
                slot = self._connect(force=True)
            except BaseException:
                self._release_capacity()
                raise
            self._shelve_locked(slot, cold=True)
            opened += 1

    def _connect(self, *, force: bool = False) -> Slot:
        """OPENING: open one connection for a reservation the caller holds in ``_size``.

        On failure the caller releases the reservation.
        """
        start = monotonic()
        if not force and start < self._next_attempt:
            raise ConnectError(
                f"pool {self.name!r}: cannot connect to {self._connector.address}: {self._last_error}"
                f" (next attempt in {self._next_attempt - start:.1f}s)"
            )
        try:
            raw = self._connector.connect()
        except Exception as exc:
            self._counts[keys.CONNECTIONS_ERRORS] += 1
            self._last_error = self._connector.describe_error(exc)
            self._backoff = min(self._options.reconnect_backoff_max, max(0.1, self._backoff * 2))
            self._next_attempt = monotonic() + self._backoff * random.uniform(0.5, 1.0)
            logger.error(
                "pool %s (%s): cannot connect to %s: %s", self.name, self.dsn, self._connector.address, self._last_error
            )
            raise ConnectError(
                f"pool {self.name!r}: cannot connect to {self._connector.address}: {self._last_error}"
            ) from None
        if self._backoff:
            logger.info("pool %s (%s): reconnected to %s", self.name, self.dsn, self._connector.address)
        self._backoff = 0.0
        self._counts[keys.CONNECTIONS_NUM] += 1
        took = monotonic() - start
        ms = int(took * 1000)  # before the read-modify-write: no thread switch inside it
        self._counts[keys.CONNECTIONS_MS] += ms
        if self.observer is not None:
            self.observer.connected(took)
        try:
            probe = self._connector.probe(raw)
        except BaseException:
            self._connector.discard(raw)
            raise
        slot = Slot(raw, probe, self._options.max_lifetime)
        self._slots[slot.key] = slot
        return slot

    # -- checkout (IDLE or OPENING -> LENT) -----------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        Waits at most *timeout* seconds (the pool's ``timeout`` by default).
        """
        slot = self._take(timeout)
        self._lent[slot.key] = slot  # putconn()'s dict.pop() ends this lease (invariant 1)
        return slot.raw

    def connection(self, timeout: Optional[float] = None) -> Lease:
        """Context manager lending a connection (see "Return" above)."""
        return Lease(self, timeout)

    def _take(self, timeout: Optional[float]) -> Slot:
        """Check out a slot (IDLE or OPENING -> LENT). The common case (an idle connection,
        nobody queued, returned moments ago) is this method alone: no lock, one clock read."""
        if self.inherited:
            self._adopt_process()
        observer = self.observer
        if observer is not None:
            asked = monotonic()
        if self._waiters or not self._idle or not self._lock_free:
            slot, now = self._take_slow(timeout)
        else:
            try:
                slot = self._idle.pop()  # invariant 1: atomic, so no two takers get one slot
            except IndexError:  # taken by another checkout since the test above
                slot, now = self._take_slow(timeout)
            else:
                now = monotonic()
                if now >= slot.recheck_at:
                    slot = self._ready(slot, peek=True)
        # -> LENT: the lease starts; the slot is the caller's alone from here (invariant 5).
        slot.state = LENT
        slot.lent_at = now
        slot.uses += 1
        sink = LEASE_SINK.get()
        if sink is not None or self._leak_timeout is not None:
            slot.taken_at = caller()
            if sink is not None:
                sink.leases.append((self, slot, slot.uses))  # reclaimed if still out when the request ends
            if self._leak_timeout is not None and not self._watched:
                self._watched = True
                leaks.watch(self)
        elif slot.taken_at:
            slot.taken_at = ""
        # Looked up on each call: gevent replaces it when patching, and the lease guard compares
        # with threading.get_ident() at use time. The taker is recorded even without the owner
        # check: a request tells its own leases from those of a thread it handed work to.
        slot.holder = taker = threading.get_ident()
        holder = taker if self._owner_check else None
        raw = slot.raw
        if self._guarded:
            raw._gp_holder = holder
            raw._gp_taken_at = slot.taken_at
        if self._lend is not None:
            self._lend(raw, holder, slot.taken_at)
        if observer is not None:
            observer.waited(monotonic() - asked)
        return slot

    def _take_slow(self, timeout: Optional[float]) -> tuple[Slot, float]:
        """Check out when the fast path cannot: under the lock, open a connection, or queue."""
        waiter = slot = None
        with self._lock:
            if self.closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            waiters = self._waiters
            if not waiters and (slot := self._pop_idle()) is not None:
                pass
            elif not waiters and self._size < self.max_size:
                self._size += 1  # a reservation: this caller opens a connection
            elif self._options.max_waiting and len(waiters) >= self._options.max_waiting:
                self._counts[keys.REQUESTS_ERRORS] += 1
                raise TooManyRequests(
                    f"pool {self.name!r}: {len(waiters)} requests already waiting"
                    f" (max_waiting={self._options.max_waiting})"
                )
            else:
                waiter = self._waiter_class()
                waiters.append(waiter)
                self._counts[keys.REQUESTS_QUEUED] += 1
                if self._idle:  # invariant 4: a lock-free return raced this queueing
                    self._hand_over_idle()
        if waiter is None:
            slot = self._ready(slot, peek=True)
            now = monotonic()
        else:
            slot, now = self._wait(waiter, self._options.timeout if timeout is None else timeout)
            # Handed over by a return just now: only lifetime and check_interval apply.
            if slot is None or now >= slot.expires or now - slot.last_used > self._options.check_interval:
                slot = self._ready(slot, peek=False)
        return slot, now

    def _pop_idle(self) -> Optional[Slot]:
        if not self._idle:  # raising IndexError costs more than this test
            return None
        try:
            return self._idle.pop()
        except IndexError:  # taken by a lock-free checkout meanwhile
            return None

    def _hand_over_idle(self) -> None:
        """With the lock held: give idle slots to waiters (a race left both)."""
        while self._waiters and (slot := self._pop_idle()) is not None:
            waiter = self._waiters.popleft()
            waiter.slot = slot
            waiter.wake()

    def _wait(self, waiter: cc.Waiter, timeout: float) -> tuple[Optional[Slot], float]:
        """Block until served: (the slot handed over, or None for leave to open one; now)."""
        start = monotonic()
        try:
            woken = waiter.wait(max(timeout, 0.0))
        except BaseException:
            self._abandon(waiter)
            raise
        if not woken:
            with self._lock:
                timed_out = waiter in self._waiters
                if timed_out:
                    self._waiters.remove(waiter)
                    self._counts[keys.REQUESTS_TIMEOUTS] += 1
                    self._counts[keys.REQUESTS_WAIT_MS] += int((monotonic() - start) * 1000)
                    in_use, waiting = self.busy, len(self._waiters)
            if timed_out:  # logged outside the lock: a log handler may block
                logger.warning(
                    "pool %s (%s): timed out after %.2fs waiting for a connection (%d in use, %d waiting)",
                    self.name, self.dsn, timeout, in_use, waiting,
                )  # fmt: skip
                raise PoolTimeout(
                    f"pool {self.name!r}: no connection available within {timeout:g}s"
                    f" (max_size={self.max_size}, in use={in_use})"
                )
            # Handed a connection just as the wait ran out: take it.
        now = monotonic()
        ms = int((now - start) * 1000)  # computed first: see connections_ms
        self._counts[keys.REQUESTS_WAIT_MS] += ms
        if waiter.error is not None:
            raise waiter.error
        slot: Optional[Slot] = waiter.slot
        return slot, now

    def _abandon(self, waiter: cc.Waiter) -> None:
        """A waiter was interrupted: leave the queue, pass on what it was given."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return
        if waiter.slot is not None:
            self._shelve(waiter.slot)
        elif waiter.may_open:
            self._release_capacity()

    def _ready(self, slot: Optional[Slot], *, peek: bool) -> Slot:
        """:meth:`_validate`, giving the reservation back if that fails."""
        try:
            return self._validate(slot, peek=peek)
        except BaseException:
            self._counts[keys.REQUESTS_ERRORS] += 1
            self._release_capacity()
            raise

    def _validate(self, slot: Optional[Slot], *, peek: bool) -> Slot:
        """Make *slot* fit for use, replacing it if needed (the only retry).

        *peek* is False for a connection handed to a waiter: it came back after
        the caller asked for one, so the wake-up latency is not idle time.
        """
        if slot is not None:
            now = monotonic()
            probe_after = self._options.probe_after
            if now >= slot.expires:
                self._unregister(slot)
                self._connector.close(slot.raw)
                slot = None
            elif (idle := now - slot.last_used) > self._options.check_interval or (
                peek and slot.probe is not None and probe_after is not None and idle >= probe_after and slot.probe()
            ):
                try:
                    self._connector.ping(slot.raw, self._options.check_timeout)
                except BaseException as exc:
                    # Interrupted mid-ping or dead: the state is unknown either way.
                    self._unregister(slot)
                    self._connector.discard(slot.raw)
                    if not isinstance(exc, Exception):
                        raise
                    self._counts[keys.CONNECTIONS_LOST] += 1
                    logger.warning(
                        "pool %s (%s): dropping dead connection: %s",
                        self.name, self.dsn, self._connector.describe_error(exc),
                    )  # fmt: skip
                    slot = None
        if slot is None:  # the capacity stays reserved for the replacement
            slot = self._connect()
        return slot

    # -- return (LENT -> IDLE, or -> CLOSED) ----------------------------------------------

    def putconn(self, raw: Any, *, commit: bool = False, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn`.

        An open transaction is rolled back (committed with *commit*); with
        *discard* the connection is dropped instead of reused. A connection
        this pool has not lent out (given back already, reclaimed at the end of
        its request, or another pool's), or one given back by a thread or
        greenlet that did not take it, raises :class:`LeaseError` and is left
        as it is.
        """
        slot = self._unlend(raw)
        if slot is None:
            return
        if discard:
            self._remove(slot, polite=False)
        else:
            self._give_back(slot, commit=commit)

    def has_lent(self, raw: Any) -> bool:
        """True if *raw* is out on a lease of this pool now."""
        slot = self._lent.get(id(raw))
        return slot is not None and slot.raw is raw

    def _unlend(self, raw: Any) -> Optional[Slot]:
        """LENT -> in the returner's hands: the lent map's ``dict.pop()`` is the one move
        (invariant 1), so two returns of one lease never both succeed. None: taken before fork."""
        if self.inherited:
            self._adopt_process()
        key = id(raw)
        slot = self._lent.get(key)
        if slot is not None and slot.raw is raw and self._owner_check and slot.holder != threading.get_ident():
            where = f" (taken at {slot.taken_at})" if slot.taken_at else ""
            raise LeaseError(
                f"pool {self.name!r}: putconn() by a thread or greenlet other than the one that took the"
                f" connection{where}"
            )
        slot = self._lent.pop(key, None)
        if slot is None or slot.raw is not raw:
            if self._generation != cc.fork_generation():
                return None  # taken before fork; the child's pool never lent it
            raise LeaseError(
                f"pool {self.name!r}: putconn() of a connection this pool has not lent out (given back"
                " already, reclaimed at the end of its request, or not from this pool)"
            )
        return slot

    def _give_back(self, slot: Slot, *, commit: bool) -> None:
        """End a lease: straight back if the connector says it is clean, else settle it first."""
        if self._check_in(slot.raw):
            self._shelve(slot)
        else:
            self._settle(slot, commit=commit)

    def _settle(self, slot: Slot, *, commit: bool, failed: bool = False) -> None:
        """Return a connection the user left something open on, or whose user failed
        (see Connector.finish)."""
        try:
            outcome = self._connector.finish(slot.raw, commit=commit, failed=failed)
        except BaseException as exc:
            # A failed commit/rollback/reset, or one interrupted mid-way (gevent.Timeout,
            # GreenletExit): the state is unknown, drop it. A failed commit is the user's news.
            self._remove(slot, polite=False)
            if commit or not isinstance(exc, Exception):
                raise
            return
        if outcome == DROP:
            if getattr(slot.raw, "_gp_closed_by_user", False):
                self.count_user_close()
            self._remove(slot, polite=False)
            return
        if outcome == RESET:
            self._counts[keys.CONNECTIONS_RESET] += 1
        self._shelve(slot)

    def count_user_close(self) -> None:
        """Count a ``close()`` of a lent connection by its user (a teardown kept from code that
        connected per request: a closed connection is replaced, a connect per lease); say so
        once per pool."""
        self._counts[keys.CONNECTIONS_CLOSED] += 1
        if not self._told_closed:
            self._told_closed = True
            logger.warning(
                "pool %s (%s): conn.close() on a lent connection (in a teardown?): a request_connection()"
                " connection is given back when its request ends anyway, any other is closed and replaced,"
                " a new connection per lease; give connections back instead of closing them."
                " Logged once per pool; counted in connections_closed",
                self.name, self.dsn,
            )  # fmt: skip

    def _shelve(self, slot: Slot) -> None:
        """-> IDLE: to the first waiter, else onto the idle stack.

        The common case (nobody waiting) takes no lock (invariant 4).
        """
        now = monotonic()
        if slot.state is LENT:
            slot.usage_ms += int((now - slot.lent_at) * 1000)
            if self.observer is not None:
                self.observer.used(now - slot.lent_at)
            slot.last_used = now
            # Checkout looks at the slot again only after this; capped by expiry.
            recheck = now + self._recheck_after
            slot.recheck_at = recheck if recheck < slot.expires else slot.expires
        if now >= slot.expires:
            self._remove(slot, polite=True)
        elif self._waiters or self.closed or not self._lock_free:
            self._shelve_locked(slot, cold=False)
        else:
            slot.state = IDLE
            idle = self._idle
            idle.append(slot)
            if self._waiters or self.closed:
                self._shelve_locked(None, cold=False)
            elif self._size > self.min_size:
                try:
                    oldest = idle[0].last_used
                except IndexError:  # emptied by lock-free checkouts meanwhile
                    return
                if now - oldest > self._options.max_idle:
                    self._shrink(now)

    def _shelve_locked(self, slot: Optional[Slot], *, cold: bool) -> None:
        """-> IDLE under the lock (*slot* may be None: only settle races), and close
        what a closed pool holds. *cold* puts it at the bottom of the stack (warm-up)."""
        with self._lock:
            if slot is not None:
                slot.state = IDLE
                if self._waiters:  # straight to the first waiter (invariant 3)
                    waiter = self._waiters.popleft()
                    waiter.slot = slot
                    waiter.wake()
                else:
                    self._idle.appendleft(slot) if cold else self._idle.append(slot)
            if self._idle:
                self._hand_over_idle()
            if not self.closed:
                return
            leftover = []
            while (extra := self._pop_idle()) is not None:
                leftover.append(extra)
        for extra in leftover:
            self._remove(extra, polite=True)

    def _shrink(self, now: float) -> None:
        """Close idle connections above ``min_size`` unused for ``max_idle`` seconds."""
        surplus: list[Slot] = []
        with self._lock:
            while self._size - len(surplus) > self.min_size and not self._waiters:
                try:
                    oldest = self._idle[0]
                    if now - oldest.last_used <= self._options.max_idle:
                        break
                    surplus.append(self._idle.popleft())
                except IndexError:  # emptied by lock-free checkouts meanwhile
                    break
        for slot in surplus:
            self._remove(slot, polite=True)

    # -- leases not given back ---------------------------------------------------------------

    def reclaim(self, slot: Slot, number: int, request: str) -> bool:
        """LENT -> CLOSED for a lease its request left out; called by gunicorn_pool.request.

        *number* is the lease's number on the slot: a slot given back and lent
        again since is someone else's now. Returns True if it was reclaimed.
        """
        if self.inherited or slot.uses != number or slot.state is not LENT:
            return False  # given back (or lent again) already: nothing leaked
        if slot.key in self._lent and self._lent.pop(slot.key, None) is not slot:
            return False  # a putconn() from another thread won the race
        self._counts[keys.CONNECTIONS_LEAKED] += 1
        logger.warning(
            "pool %s (%s): a connection taken at %s was not given back by the end of its request%s;"
            " reclaimed: closed and its capacity freed",
            self.name, self.dsn, slot.taken_at or "an unknown place", f" ({request})" if request else "",
        )  # fmt: skip
        self._remove(slot, polite=False)
        return True

    def report_long_leases(self, now: float) -> None:
        """Log, once per lease, each lease held longer than ``leak_timeout``; called by gunicorn_pool.leaks."""
        limit = self._leak_timeout
        if limit is None or self.inherited:
            return
        for slot in list(self._slots.values()):
            if slot.state is LENT and slot.reported != slot.uses and now - slot.lent_at > limit:
                slot.reported = slot.uses
                logger.warning(
                    "pool %s (%s): a connection taken at %s has been out for %.1fs (leak_timeout=%gs)",
                    self.name, self.dsn, slot.taken_at or "an unknown place", now - slot.lent_at, limit,
                )  # fmt: skip

    # -- closing (-> CLOSED) and capacity -----------------------------------------------------

    def _remove(self, slot: Slot, *, polite: bool) -> None:
        """-> CLOSED: unregister, close (*polite*: tell the server) or drop, free the capacity.

        Releases capacity only if this call unregistered the slot (invariant 2).
        """
        if self._unregister(slot):
            if polite:
                self._connector.close(slot.raw)
            else:
                self._connector.discard(slot.raw)
            self._release_capacity()

    def _unregister(self, slot: Slot) -> bool:
        """Forget *slot*, keeping its figures; False if it was not registered."""
        slot.state = CLOSED
        with self._lock:
            if self._slots.pop(slot.key, None) is None:
                return False
            self._lent.pop(slot.key, None)
            self._retired_uses += slot.uses
            self._retired_usage_ms += slot.usage_ms
        return True

    def _release_capacity(self) -> None:
        """One connection less: let the first waiter open a new one instead."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.may_open = True
                waiter.wake()
            else:
                self._size -= 1

    def warm(self) -> int:
        """Give every idle connection its first use now, not on a request.

        :meth:`Connector.warm` (for SQL databases a ping, bounded by
        ``check_timeout``, and one ``SELECT 1``) runs the driver's query and
        result code once in this process before traffic. Not counted in
        :meth:`stats`. A connection that fails is dropped (the next checkout
        opens another); returns how many were used.
        """
        if self.inherited:
            self._adopt_process()
        slots = []
        with self._lock:
            while (slot := self._pop_idle()) is not None:
                slots.append(slot)
        used = 0
        try:
            while slots:
                slot = slots.pop()
                try:
                    self._connector.warm(slot.raw, self._options.check_timeout)
                    if slot.probe is not None:
                        slot.probe()
                except Exception as exc:  # noqa: BLE001 - dropped, replaced on demand
                    logger.warning(
                        "pool %s (%s): warm-up use failed: %s", self.name, self.dsn, self._connector.describe_error(exc)
                    )
                    self._remove(slot, polite=False)
                    continue
                except BaseException:
                    self._remove(slot, polite=False)
                    raise
                used += 1
                self._shelve_locked(slot, cold=False)  # oldest first: the stack keeps its order
        finally:
            for slot in reversed(slots):  # interrupted: give back the rest untouched
                self._shelve_locked(slot, cold=False)
        return used

    def use_idle(self, use: Callable[[Any], T]) -> Optional[T]:
        """``use(raw)`` on an idle connection, the pool's own use (not counted in :meth:`stats`);
        None when none is idle. A failure drops that connection and propagates."""
        if self.inherited:
            self._adopt_process()
        with self._lock:
            slot = self._pop_idle()
        if slot is None:
            return None
        try:
            result = use(slot.raw)
        except BaseException:
            self._remove(slot, polite=False)
            raise
        self._shelve_locked(slot, cold=False)
        return result

    def close(self) -> None:
        """Close idle connections, fail waiters, refuse new requests.

        Connections in use are closed when they are returned. In a process
        other than the one that opened them they are dropped without a word
        to the server.
        """
        if self.inherited:
            self._adopt_process()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            idle = []
            while (slot := self._pop_idle()) is not None:
                idle.append(slot)
            waiters, self._waiters = list(self._waiters), deque()
            for waiter in waiters:
                waiter.error = PoolClosed(f"pool {self.name!r} closed while waiting")
                waiter.wake()
        for slot in idle:
            self._remove(slot, polite=True)
        logger.info("pool %s (%s): closed %d connection(s)", self.name, self.dsn, len(idle))

    # -- figures -----------------------------------------------------------------------------

    def connections(self, state: str) -> list[Any]:
        """The driver connections whose slots are in *state* now (``slot.IDLE`` or
        ``slot.LENT``): a snapshot, for adapters and tests; they stay the pool's."""
        return [slot.raw for slot in list(self._slots.values()) if slot.state is state]

    def stats(self) -> dict[str, int]:
        """Current figures, under the names of :mod:`gunicorn_pool.stats`."""
        if self.inherited:  # the parent's lock may have been held at fork time
            self._adopt_process()
        with self._lock:
            slots = list(self._slots.values())
            uses, usage_ms = self._retired_uses, self._retired_usage_ms
            out = {
                keys.POOL_MIN: self.min_size,
                keys.POOL_MAX: self.max_size,
                keys.POOL_SIZE: self._size,
                keys.POOL_AVAILABLE: len(self._idle),
                keys.REQUESTS_WAITING: len(self._waiters),
            }
            out.update(self._counts)
        uses += sum(slot.uses for slot in slots)
        # Every request ends in a use, a timeout or an error.
        out[keys.REQUESTS_NUM] = uses + out[keys.REQUESTS_TIMEOUTS] + out[keys.REQUESTS_ERRORS]
        out[keys.USAGE_MS] = usage_ms + sum(slot.usage_ms for slot in slots)
        return {key: out[key] for key in keys.KEYS}

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name!r} {self.dsn} size={self._size}/{self.max_size}"
            f" idle={len(self._idle)} pid={self.pid}{' closed' if self.closed else ''}>"
        )


class Lease:
    """``with pool.connection() as conn``: one lease; commit/rollback and return on exit.

    The Lease object is the lease's token (a getconn() lease's is its entry in the
    pool's lent map): the slot's lease number tells whether the pool took it back
    (a leak reclaimed at the end of a request) before the block ended.
    """

    __slots__ = ("_pool", "_timeout", "_slot", "_number")
    _slot: Optional[Slot]  # set by __enter__
    _number: int

    def __init__(self, pool: ConnectionPool, timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Any:
        self._slot = slot = self._pool._take(self._timeout)
        self._number = slot.uses
        return slot.raw

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Any, tb: Any) -> None:
        slot, self._slot = self._slot, None
        pool = self._pool
        if slot is None or slot.uses != self._number or slot.state is not LENT:
            return  # the lease already ended (taken back by the pool)
        if exc_type is None:
            pool._give_back(slot, commit=True)
        elif issubclass(exc_type, Exception):
            # The block failed: whatever clean-up code it skipped may have left state behind.
            pool._settle(slot, commit=False, failed=True)
        else:  # BaseException: interrupted mid-use, protocol state unknown
            pool._remove(slot, polite=False)


@atexit.register
def _close_at_exit() -> None:
    """Close every pool still open at interpreter exit, by its owner (inherited ones are dropped)."""
    for pool in ConnectionPool.live_instances():
        try:
            pool.close()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
