"""The synchronous pool: a bounded, fair, fork-aware pool of one database's connections, for
threads and gevent greenlets.

:class:`ConnectionPool` knows nothing of gunicorn; :class:`~gunicorn_pool.
database.DatabasePool` builds one per named config. Usage::

    pool = ConnectionPool(make_connector(cfg), name="default", options=cfg)
    pool.open()                       # warm-up: opens min_size connections
    with pool.connection() as conn:   # the driver's own connection
        cur = conn.cursor(); cur.execute("SELECT 1")
    pool.close()

The rules are :class:`~gunicorn_pool.core.PoolCore`'s, shared with the
asyncio front end (:mod:`gunicorn_pool.pool_async`); this module adds how a
thread or greenlet waits (its own lock, or the gevent hub), the calls to the
driver, and what a process forked from this one does with the pool.

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
:mod:`gunicorn_pool.slot`); :class:`Lease` runs them inline. The lock, an OS
lock even under gevent (it guards short sections that never yield),
serialises the rest: queueing, hand-offs, opening, closing. A waiter blocks on
its own ``threading`` lock or, once gevent patched threading, parks on the
hub (:mod:`gunicorn_pool._concurrency`).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from . import _concurrency as cc
from ._frames import place
from .connectors.base import Connector
from .core import LEASE_SINK, PING, REPLACE, PoolCore, PoolObserver
from .errors import PoolClosed, PoolError
from .options import DEFAULTS, PoolOptions
from .slot import IDLE, LENT, Slot

__all__ = ["ConnectionPool", "Lease", "PoolObserver"]

logger = logging.getLogger("gunicorn_pool")
monotonic = time.monotonic
T = TypeVar("T")


class ConnectionPool(cc.ForkAware, PoolCore):
    """A pool of connections to one database, for use inside one process (threads, greenlets).

    *options* (a :class:`~gunicorn_pool.options.PoolOptions`, or a
    :class:`~gunicorn_pool.config.DatabaseConfig`, which is one) says how it
    sizes, waits and checks; keyword *overrides* replace single fields
    (``ConnectionPool(c, name="p", max_size=4)``). Sizes left at ``None`` take
    *default_sizes* (``(min, max)``): the service that builds the pool passes the
    worker type's (:func:`gunicorn_pool.service.fit`), the core reads no process
    global.
    """

    _connector: Connector

    def __init__(self, connector: Connector, *, name: str, options: PoolOptions = DEFAULTS,
                 default_sizes: tuple[int, int] = (1, 1), **overrides: Any) -> None:  # fmt: skip
        PoolCore.__init__(self, connector, name=name, options=options, default_sizes=default_sizes, **overrides)
        if connector.lends:
            self._lend = connector.lend
        self._track_forks()

    @property
    def connector(self) -> Connector:
        """The connector this pool opens, checks and closes its connections with."""
        return self._connector

    def _init_state(self) -> None:
        PoolCore._init_state(self)
        self.inherited = False
        self._waiter_class = cc.waiter_class()  # looked up in each process: gevent may have patched
        self._lock_free = cc.lock_free_ok()
        self._loop_check = cc.REFUSE_ON_EVENT_LOOP  # set by an ASGI worker's boot
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        # One flag for Lease's inline checkout and return: no fork to adopt, no observer, a GIL,
        # and no event loop thread to refuse (an ASGI worker).
        self._fast = self._lock_free and not self.inherited and self._observer is None and not self._loop_check

    def _forked(self) -> None:
        super()._forked()
        self._fast = False

    def _adopt_process(self) -> None:
        """Drop connections inherited through fork and start afresh here."""
        inherited = list(self._slots.values())
        parent = self.pid
        for slot in inherited:
            self._connector.discard(slot.raw)  # no word to the server: the parent owns the session
        self._init_state()
        if inherited:
            logger.info(
                "pool %s (%s): dropped %d connection(s) inherited from pid %s",
                self.name, self.dsn, len(inherited), parent,
            )  # fmt: skip

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
        while self._warm_up_next(opened, deadline):
            try:
                slot = self._connect(force=True)
            except BaseException:
                self._release_capacity()
                raise
            self._retire(self._shelve_locked(slot, cold=True))
            opened += 1
        return opened

    def _connect(self, *, force: bool = False) -> Slot:
        """OPENING: open one connection for a reservation the caller holds in ``_size``.

        On failure the caller releases the reservation.
        """
        started = monotonic()
        if not force and (refused := self._connect_refusal(started)) is not None:
            raise refused
        try:
            raw = self._connector.connect()
        except Exception as exc:
            raise self._connect_failed(exc) from None
        return self._connected(raw, started)

    # -- checkout (IDLE or OPENING -> LENT) -----------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        Waits at most *timeout* seconds (the pool's ``timeout`` by default).
        """
        slot = self._lend_fast() if self._fast else None
        if slot is None:
            where = place(sys._getframe(1)) if self._record_places else ""
            slot = self._take(timeout, where)
        self._lent[slot.key] = slot  # putconn()'s dict.pop() ends this lease (invariant 1)
        return slot.raw

    def connection(self, timeout: Optional[float] = None) -> Lease:
        """Context manager lending a connection (see "Return" above)."""
        return Lease(self, timeout)

    def _lend_fast(self) -> Optional[Slot]:
        """The common checkout, or None (then :meth:`_take`): an idle connection not due for a look,
        nobody waiting, no ``leak_timeout``, and, in a request, a taker *frame* that is the app's
        own (getconn()'s caller: its place recorded without a walk). The caller checked ``_fast`` (no fork, no
        observer, a GIL). :meth:`_take` and :meth:`PoolCore._begin_lease` written out, their twin
        (test_slots compares them)."""
        if self._waiters or self._leak_timeout is not None:
            return None
        sink = LEASE_SINK.get()
        where = ""
        if sink is not None and self._record_places and not (where := place(sys._getframe(2))):
            return None  # taken through a framework: the walk names the app's line (_take)
        try:
            slot = self._idle.pop()  # invariant 1
        except IndexError:
            return None
        now = monotonic()
        if now >= slot.recheck_at and not self._quiet(slot, now):
            slot = self._ready(slot, peek=True)
            self._begin_lease(slot, now, threading.get_ident(), where)
            return slot
        slot.state = LENT
        slot.lent_at = now
        slot.uses += 1
        if sink is not None:
            slot.taken_at = where
            sink.append((self, slot, slot.uses))  # reclaimed if still out when the request ends
        elif slot.taken_at:
            slot.taken_at = ""
        slot.holder = taker = threading.get_ident()  # looked up per call: gevent patches it
        raw = slot.raw
        if self._guarded:
            raw._gp_holder = taker if self._owner_check else None
            raw._gp_taken_at = where
        if self._lend is not None:
            self._lend(raw, taker if self._owner_check else None, where)
        return slot

    def _take(self, timeout: Optional[float], where: str = "") -> Slot:
        """Check out a slot (IDLE or OPENING -> LENT). The common case (an idle connection,
        nobody queued, returned moments ago) takes no lock and reads the clock once."""
        if self.inherited:
            self._adopt_process()
        if self._loop_check:
            self._refuse_on_event_loop()
        observer = self._observer
        if observer is not None:
            asked = monotonic()
        slot = None
        if not self._waiters and self._idle and self._lock_free:
            try:
                slot = self._idle.pop()  # invariant 1: atomic, so no two takers get one slot
            except IndexError:  # taken by another checkout since the test above
                pass
        if slot is None:
            slot, now = self._take_slow(timeout)
        else:
            now = monotonic()
            if now >= slot.recheck_at:
                slot = self._ready(slot, peek=True)
        # Looked up on each call: gevent replaces it when patching, and the lease guard compares
        # with threading.get_ident() at use time.
        self._begin_lease(slot, now, threading.get_ident(), where)
        if observer is not None:
            observer.waited(monotonic() - asked)
        return slot

    def _refuse_on_event_loop(self) -> None:
        """In an ASGI worker: refuse a lease on a thread whose event loop is running (a lease, and
        any query on it, would block every request of the worker while it waits)."""
        import asyncio

        if asyncio._get_running_loop() is not None:
            raise PoolError(
                f"pool {self.name!r}: a synchronous connection taken on the event loop's thread would block every"
                " request of this worker while it waits: use gunicorn_pool.AsyncDatabasePool (async with"
                " db.connection()) in async code, or take it in a def endpoint (run in a thread)"
            )

    def _take_slow(self, timeout: Optional[float]) -> tuple[Slot, float]:
        """Check out when the fast path cannot: under the lock, open a connection, or queue."""
        with self._lock:
            slot, waiter = self._reserve()
        if waiter is None:
            return self._ready(slot, peek=True), monotonic()
        limit = self._options.timeout if timeout is None else timeout
        started = monotonic()
        try:
            woken = waiter.wait(max(limit, 0.0))
        except BaseException:
            self._retire(self._abandon(waiter))
            raise
        slot, now = self._wait_ended(waiter, started, limit, woken)
        # Handed over by a return just now: only lifetime and check_interval apply.
        if slot is None or now >= slot.expires or now - slot.last_used > self._options.check_interval:
            slot = self._ready(slot, peek=False)
        return slot, now

    def _ready(self, slot: Optional[Slot], *, peek: bool) -> Slot:
        """Make *slot* fit for use, replacing it if needed (the only retry); None: open one. The
        caller holds the capacity; if this fails it is given back."""
        try:
            if slot is not None:
                check = self._check_of(slot, monotonic(), peek=peek)
                if check == REPLACE:
                    self._unregister(slot)
                    self._connector.close(slot.raw)
                    slot = None
                elif check == PING:
                    try:
                        self._connector.ping(slot.raw, self._options.check_timeout)
                    except BaseException as exc:
                        # Interrupted mid-ping or dead: the state is unknown either way.
                        self._lost(slot, exc)
                        if not isinstance(exc, Exception):
                            raise
                        slot = None
            if slot is None:  # the capacity stays reserved for the replacement
                slot = self._connect()
            return slot
        except BaseException:
            self._checkout_failed()
            raise

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
        if self.inherited:
            self._adopt_process()
        slot = self._lent.get(id(raw))
        if (
            slot is not None
            and slot.raw is raw
            and (not self._owner_check or slot.holder == threading.get_ident())
            and self._lent.pop(slot.key, None) is slot  # invariant 1: only one return wins
        ):
            pass  # PoolCore._unlend's common case, written out
        else:
            slot = self._unlend(raw, threading.get_ident())
            if slot is None:
                return
        if discard:
            self._drop(slot)
        else:
            self._give_back(slot, commit=commit)

    def _give_back(self, slot: Slot, *, commit: bool) -> None:
        """End a lease: straight back if the connector says it is clean, else settle it first.

        The common return (clean, not expired, nobody waiting, no observer, a GIL) is
        :meth:`PoolCore._end_lease` and :meth:`PoolCore._shelve` written out, their twin."""
        if not self._check_in(slot.raw):
            self._settle(slot, commit=commit)
            return
        now = monotonic()
        if self._fast and now < slot.expires:
            slot.usage += now - slot.lent_at
            slot.last_used = now
            recheck = now + self._recheck_after
            slot.recheck_at = recheck if recheck < slot.expires else slot.expires
            slot.state = IDLE
            self._idle.append(slot)  # invariant 4: look at the queue (and closed) again after
            if self._waiters or self.closed or self._size > self.min_size:
                self._retire(self._after_append(now))
            return
        self._retire(self._shelve(slot))

    def _settle(self, slot: Slot, *, commit: bool, failed: bool = False) -> None:
        """Return a connection the user left something open on, or whose user failed
        (see Connector.finish)."""
        try:
            outcome = self._connector.finish(slot.raw, commit=commit, failed=failed)
        except BaseException as exc:
            # A failed commit/rollback/reset, or one interrupted mid-way (gevent.Timeout,
            # GreenletExit): the state is unknown, drop it. A failed commit is the user's news.
            self._drop(slot)
            if commit or not isinstance(exc, Exception):
                raise
            return
        self._retire(self._settled(slot, outcome))

    def _retire(self, slots: tuple[Slot, ...]) -> None:
        """Close politely the slots the core unregistered (expired, surplus, a closed pool's),
        then free their capacity."""
        for slot in slots:
            self._connector.close(slot.raw)
            self._release_capacity()

    def _remove(self, slot: Slot, *, polite: bool) -> None:
        """-> CLOSED: close (*polite*: tell the server) or drop *slot*, free its capacity."""
        if polite:
            self._retire(self._closing(slot))
        else:
            self._drop(slot)

    # -- the pool's own use of idle connections ------------------------------------------------

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
                    self._drop(slot)
                    continue
                except BaseException:
                    self._drop(slot)
                    raise
                used += 1
                self._retire(self._shelve_locked(slot, cold=False))  # oldest first: the stack keeps its order
        finally:
            for slot in reversed(slots):  # interrupted: give back the rest untouched
                self._retire(self._shelve_locked(slot, cold=False))
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
            self._drop(slot)
            raise
        self._retire(self._shelve_locked(slot, cold=False))
        return result

    def close(self) -> None:
        """Close idle connections, fail waiters, refuse new requests.

        Connections in use are closed when they are returned. In a process
        other than the one that opened them they are dropped without a word
        to the server.
        """
        if self.inherited:
            self._adopt_process()
        idle = self._start_closing()
        if idle is None:
            return
        for slot in idle:
            self._connector.close(slot.raw)
            self._release_capacity()
        logger.info("pool %s (%s): closed %d connection(s)", self.name, self.dsn, len(idle))

    def stats(self) -> dict[str, int]:
        """Current figures, under the names of :mod:`gunicorn_pool.stats`."""
        if self.inherited:  # the parent's lock may have been held at fork time
            self._adopt_process()
        return PoolCore.stats(self)


class Lease:
    """``with pool.connection() as conn``: one lease; commit/rollback and return on exit.

    The Lease object is the lease's token (a getconn() lease's is its entry in the
    pool's lent map): the slot's lease number tells whether the pool took it back
    (a leak reclaimed at the end of a request) before the block ended.

    The common checkout and return run inline here: they are
    :meth:`ConnectionPool._lend_fast` and :meth:`ConnectionPool._give_back` (the
    core's steps written out) written out once more, to spare the ``with``
    statement, every plain app's lease, two calls. ``tests/test_slots.py``
    checks that all these twins agree with the core's full paths. Anything else
    takes the full paths.
    """

    __slots__ = ("_pool", "_timeout", "_slot", "_number")
    _slot: Optional[Slot]  # set by __enter__
    _number: int

    def __init__(self, pool: ConnectionPool, timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Any:
        pool = self._pool
        sink = LEASE_SINK.get()
        # The with statement's own frame took it: its place, without a walk (in a request, or for
        # leak_timeout); a framework's frame ("") leaves it to the walk.
        recording = pool._record_places  # the taking line is recorded (leak_timeout, or after a leak)
        where = place(sys._getframe(1)) if recording else ""
        if pool._fast and not pool._waiters and pool._leak_timeout is None and (sink is None or where or not recording):
            try:
                slot = pool._idle.pop()  # invariant 1
            except IndexError:
                pass
            else:
                now = monotonic()
                if now < slot.recheck_at or (  # PoolCore._quiet, written out
                    (window := pool._probe_window) is not None
                    and (probe := slot.probe) is not None
                    and now < slot.expires
                    and now - slot.last_used <= window
                    and not probe()
                ):  # ConnectionPool._lend_fast, written out (one call less)
                    slot.state = LENT
                    slot.lent_at = now
                    self._number = slot.uses = slot.uses + 1
                    if sink is not None:
                        slot.taken_at = where
                        sink.append((pool, slot, slot.uses))  # reclaimed if still out when the request ends
                    elif slot.taken_at:
                        slot.taken_at = ""
                    slot.holder = taker = threading.get_ident()  # looked up per call: gevent patches it
                    raw = slot.raw
                    if pool._guarded:
                        raw._gp_holder = taker if pool._owner_check else None
                        raw._gp_taken_at = where
                    if pool._lend is not None:
                        pool._lend(raw, taker if pool._owner_check else None, where)
                    self._slot = slot
                    return raw
                slot = pool._ready(slot, peek=True)
                pool._begin_lease(slot, now, threading.get_ident(), where)
                self._slot = slot
                self._number = slot.uses
                return slot.raw
        self._slot = slot = pool._take(self._timeout, where)
        self._number = slot.uses
        return slot.raw

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Any, tb: Any) -> None:
        slot, self._slot = self._slot, None
        pool = self._pool
        if slot is None or slot.uses != self._number or slot.state is not LENT:
            return  # the lease already ended (taken back by the pool)
        if exc_type is None:
            if not pool._check_in(slot.raw):
                pool._settle(slot, commit=True)
                return
            now = monotonic()
            if pool._fast and now < slot.expires:  # ConnectionPool._give_back, written out
                slot.usage += now - slot.lent_at
                slot.last_used = now
                recheck = now + pool._recheck_after
                slot.recheck_at = recheck if recheck < slot.expires else slot.expires
                slot.state = IDLE
                pool._idle.append(slot)  # invariant 4: look at the queue (and closed) again after
                if pool._waiters or pool.closed or pool._size > pool.min_size:
                    pool._retire(pool._after_append(now))
                return
            pool._retire(pool._shelve(slot))
        elif issubclass(exc_type, Exception):
            # The block failed: whatever clean-up code it skipped may have left state behind.
            pool._settle(slot, commit=False, failed=True)
        else:  # BaseException: interrupted mid-use, protocol state unknown
            pool._drop(slot)


@atexit.register
def _close_at_exit() -> None:
    """Close every pool still open at interpreter exit, by its owner (inherited ones are dropped)."""
    for pool in ConnectionPool.live_instances():
        try:
            pool.close()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
