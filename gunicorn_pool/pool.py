"""The pool core: a bounded, fair, fork-aware pool of one database's connections.

:class:`ConnectionPool` knows nothing of gunicorn; :class:`~gunicorn_pool.
database.DatabasePool` builds one per named config. Usage::

    pool = ConnectionPool(make_connector(cfg), name="default", dsn=cfg.dsn,
                          min_size=1, max_size=4, timeout=2.0)
    pool.open()                       # warm-up: opens min_size connections
    with pool.connection() as conn:   # the driver's own connection
        cur = conn.cursor(); cur.execute("SELECT 1")
    pool.close()

Life cycle of a connection
--------------------------
1. *Open*: by ``open()`` (warm-up, up to ``min_size``) or on demand when a
   caller finds no idle connection and the pool holds fewer than ``max_size``.
   After a failed connect the pool backs off (exponential, with jitter, capped
   by ``reconnect_backoff_max``); callers during the back-off get
   :class:`ConnectError` at once instead of piling up on a dead server.
2. *Checkout*: an idle connection is taken (last returned first, so hot
   connections stay hot and surplus ones age out). If it outlived its
   ``max_lifetime`` (each connection gets -10 % jitter, so a worker's
   connections do not all expire together) it is replaced. If it was last used
   more than ``check_interval`` (0.5 s, HikariCP's rule) ago, or, idle for
   ``probe_after`` (0.1 ms) or more, its socket already shows the server
   closed it (a zero-timeout poll, no round trip), it is pinged, with
   ``check_timeout`` as a hard bound; a dead one is replaced. Only this
   checkout step retries: a statement that failed is never re-run.
3. *Wait*: when ``max_size`` connections are out, the caller queues. Waiters
   are served strictly in arrival order: a returned connection is handed to
   the first waiter directly, never to a newcomer. A waiter gives up after
   ``timeout`` seconds (:class:`PoolTimeout`); when ``max_waiting`` callers
   already wait, a new one fails at once (:class:`TooManyRequests`).
4. *Return*: an open transaction is committed (clean exit of ``connection()``)
   or rolled back (exception, or ``putconn()``), using the driver's transaction
   flag, so a caller that opened none pays no extra round trip. A connection whose user
   was interrupted by a BaseException (``gevent.Timeout``, ``GreenletExit``,
   ``SystemExit``, ``KeyboardInterrupt``) is in an unknown protocol state and
   is closed, never reused (PyMySQL/PyMySQL#275).
5. *Close*: on ``close()``, expiry, a failed check, or when an idle connection
   above ``min_size`` was idle for ``max_idle`` seconds (checked when a
   connection is returned).

Fork safety: every pool remembers the process that opened it. In a forked
child (gunicorn ``--preload``) the first use drops the inherited connections
without a word to the server (PyMySQL's ``close()`` would send COM_QUIT and end
the parent's session) and opens the child's own.

Concurrency and cost: the common checkout (an idle connection, nobody queued)
and the common return (nobody waiting) take no lock: ``deque.pop()`` and
``deque.append()`` are atomic, a taker that queues re-checks the idle stack
and a returner re-checks the queue, so neither misses the other. Counters live
on the connection's slot, which its user holds alone. The lock, an OS lock
even under gevent (it guards short sections that never yield), serialises the
rest: queueing, hand-offs, opening, closing. A waiter blocks on its own
``threading`` lock, or, once gevent patched threading, parks on the hub; the
waiter type is looked up when the pool is (re)initialised in its process, so
a pool built before patching (``--preload``) still yields to the hub.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Optional

from .connectors import Connector
from .errors import ConnectError, PoolClosed, PoolError, PoolTimeout, TooManyRequests

__all__ = ["ConnectionPool", "STATS_KEYS"]

logger = logging.getLogger("gunicorn_pool")
monotonic = time.monotonic

#: Stable names of :meth:`ConnectionPool.stats` (psycopg_pool's where they fit).
STATS_KEYS = (
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
    "requests_num", "requests_queued", "requests_wait_ms", "requests_timeouts",
    "requests_errors", "connections_num", "connections_ms", "connections_errors",
    "connections_lost", "usage_ms",
)  # fmt: skip

# Default of ``probe_after``: the socket poll (Connector.probe) is skipped for
# a connection given back less than this many seconds ago: it was alive then,
# and back-to-back reuse should not pay a syscall per use (bench/overhead.py).
# A connection handed straight to a waiter skips it too (see _validate).
PROBE_AFTER = 1e-4

# Bumped in every forked child; a pool whose generation differs was inherited.
_fork_generation = [0]

# Every pool, so connections still open at interpreter exit are closed by
# their owner (e.g. the master's, with --preload); close() drops inherited ones.
_all_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1
    for pool in list(_all_pools):
        pool._inherited = True  # one flag read on the hot path; adopted on first use


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    for pool in list(_all_pools):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _native_lock_type() -> Callable[[], Any]:
    """The OS lock type, also once gevent patched ``threading``.

    The pool's lock guards only short sections that never yield (no I/O, no
    logging, no gevent primitive inside), so under gevent the OS lock is never
    contended between greenlets and costs a fraction of gevent's.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("_thread", "allocate_lock")  # type: ignore[no-any-return]
    return threading.Lock


class _Slot:
    """One physical connection and its bookkeeping."""

    __slots__ = ("owner", "raw", "probe", "expires", "last_used", "recheck_at", "checked_out", "busy", "uses",
                 "usage_ms")  # fmt: skip

    def __init__(self, owner: Any, lifetime: float, connector: Connector) -> None:
        now = monotonic()
        self.owner = owner  # the DBUtils steady connection that owns ``raw``
        self.raw = owner.dbapi_connection
        self.probe = connector.probe(self.raw)  # the no-round-trip liveness check
        self.last_used = self.checked_out = now
        self.recheck_at = now  # checkout looks at it before the first use
        self.expires = now + lifetime * (1.0 - 0.1 * random.random())
        self.busy = False
        # Counted on the slot, which its user holds alone: no lock on the hot path.
        self.uses = self.usage_ms = 0


class _Waiter:
    """A queued caller; woken with a slot, or with leave to open one."""

    __slots__ = ("lock", "slot", "may_open", "error")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # looked up now: gevent's lock once patched
        self.lock.acquire()
        self.slot: Optional[_Slot] = None
        self.may_open = False
        self.error: Optional[BaseException] = None

    def wake(self) -> None:
        self.lock.release()

    def wait(self, timeout: float) -> bool:
        """Block until woken (True) or until *timeout* seconds pass (False)."""
        return self.lock.acquire(timeout=timeout)


class _HubWaiter(_Waiter):
    """A waiter parked on the gevent hub itself, used once gevent patched threading.

    gevent's ``Lock.acquire(timeout=...)`` builds a ``gevent.Timeout`` (an
    exception object and a timer) for every wait; a hub ``Waiter`` and a raw
    loop timer do the same job for a fraction of the cost (bench/contention.py,
    100 greenlets on 10 connections: 0.73 -> 0.89 x raw). An interrupted wait
    (gevent.Timeout, GreenletExit) closes the timer and leaves via _abandon;
    a late wake-up then only stores its value in the idle Waiter.
    """

    __slots__ = ("_waiter", "_loop", "_thread")
    gevent: Any = None  # (Waiter, get_hub, the native get_ident), set by _waiter_class()

    def __init__(self) -> None:
        waiter_type, get_hub, get_ident = self.gevent
        hub = get_hub()
        self._loop = hub.loop
        self._waiter = waiter_type(hub)
        self._thread = get_ident()
        self.slot = None
        self.may_open = False
        self.error = None

    def wake(self) -> None:
        if self.gevent[2]() == self._thread:
            self._loop.run_callback(self._waiter.switch, True)
        else:  # returned by another native thread: that loop must be woken
            self._loop.run_callback_threadsafe(self._waiter.switch, True)

    def wait(self, timeout: float) -> bool:
        timer = self._loop.timer(timeout)
        timer.start(self._waiter.switch, False)
        try:
            return bool(self._waiter.get())
        finally:
            timer.close()


def _waiter_class() -> type[_Waiter]:
    """:class:`_HubWaiter` once gevent has patched threading, else :class:`_Waiter`."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return _Waiter
    if _HubWaiter.gevent is None:
        from gevent.hub import Waiter, get_hub

        _HubWaiter.gevent = (Waiter, get_hub, monkey.get_original("_thread", "get_ident"))
    return _HubWaiter


class ConnectionPool:
    """A pool of connections to one database, for use inside one process.

    All arguments after *connector* are keyword-only; sizes and times are
    validated by :func:`gunicorn_pool.config.parse_config` when built through
    :class:`~gunicorn_pool.DatabasePool`.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        name: str,
        dsn: str = "",
        min_size: int = 1,
        max_size: int = 1,
        timeout: float = 10.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        check_interval: float = 0.5,
        check_timeout: float = 2.0,
        probe_after: Optional[float] = PROBE_AFTER,
        reconnect_backoff_max: float = 2.0,
    ) -> None:
        if max_size < 1 or min_size < 0 or min_size > max_size:
            raise ValueError(f"pool {name!r}: need 0 <= min_size <= max_size and max_size >= 1")
        self.name = name
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.probe_after = probe_after
        self.reconnect_backoff_max = reconnect_backoff_max
        self._connector = connector
        self._dirty = connector.dirty
        self._reset_state()
        _all_pools.add(self)

    # -- process-local state ------------------------------------------------

    def _reset_state(self) -> None:
        """(Re)create everything that belongs to one process."""
        self.pid = os.getpid()
        self._generation = _fork_generation[0]
        self._inherited = False
        self._lock = _native_lock_type()()
        self._waiter_class = _waiter_class()
        self._idle: deque[_Slot] = deque()  # returned last on the right
        self._waiters: deque[_Waiter] = deque()
        self._slots: dict[int, _Slot] = {}  # every open connection, by id() of the driver's
        self._size = 0  # open connections plus those being opened
        self._closed = False
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._last_error = ""
        # The counters of stats(). requests_num and usage_ms are summed from
        # the slots (see _Slot) plus these two, kept for slots already closed.
        self._retired_uses = self._retired_usage_ms = 0
        self._stats = dict.fromkeys(STATS_KEYS[6:-1], 0)

    def _adopt_process(self) -> None:
        """Drop connections inherited through fork and start afresh here."""
        inherited = list(self._slots.values())
        parent = self.pid
        for slot in inherited:
            self._connector.discard(slot.raw)  # no COM_QUIT: the parent owns the session
        self._reset_state()
        if inherited:
            logger.info(
                "pool %s (%s): dropped %d connection(s) inherited from pid %s",
                self.name, self.dsn, len(inherited), parent,
            )  # fmt: skip

    # -- opening -------------------------------------------------------------

    def open(self, *, deadline: Optional[float] = None) -> int:
        """Open connections up to ``min_size`` now; return how many were opened.

        *deadline* is a ``time.monotonic()`` value after which no further
        connect is started. Raises :class:`ConnectError` on the first failure.
        """
        if self._inherited:
            self._adopt_process()
        if not self._waiters:  # gevent may have patched threading since
            self._waiter_class = _waiter_class()
        if self._closed:
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
                slot = self._open_slot(force=True)
            except BaseException:
                self._release_capacity()
                raise
            self._put_locked(slot, cold=True)
            opened += 1

    def _open_slot(self, *, force: bool = False) -> _Slot:
        """Open one connection; the caller holds a reservation in ``_size``."""
        start = monotonic()
        if not force and start < self._next_attempt:
            raise ConnectError(
                f"pool {self.name!r}: cannot connect to {self._address()}: {self._last_error}"
                f" (next attempt in {self._next_attempt - start:.1f}s)"
            )
        try:
            owner = self._connector.open()
        except Exception as exc:
            self._stats["connections_errors"] += 1
            self._last_error = _describe(exc)
            cap = self.reconnect_backoff_max
            self._backoff = min(cap, max(0.1, self._backoff * 2))
            self._next_attempt = monotonic() + self._backoff * random.uniform(0.5, 1.0)
            logger.error(
                "pool %s (%s): cannot connect to %s: %s", self.name, self.dsn, self._address(), self._last_error
            )
            raise ConnectError(f"pool {self.name!r}: cannot connect to {self._address()}: {self._last_error}") from None
        if self._backoff:
            logger.info("pool %s (%s): reconnected to %s", self.name, self.dsn, self._address())
        self._backoff = 0.0
        self._stats["connections_num"] += 1
        ms = int((monotonic() - start) * 1000)  # before the read-modify-write: no thread switch inside it
        self._stats["connections_ms"] += ms
        slot = _Slot(owner, self.max_lifetime, self._connector)
        self._slots[id(slot.raw)] = slot
        return slot

    def _address(self) -> str:
        cfg = getattr(self._connector, "config", None)
        return cfg.address if cfg is not None else self.name

    # -- checkout ------------------------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn` (or :meth:`finish`).

        Waits at most *timeout* seconds (the pool's ``timeout`` by default).
        """
        return self._take(timeout).raw

    def _take(self, timeout: Optional[float]) -> _Slot:
        """Check out a slot. The common case (an idle connection, nobody
        queued, returned moments ago) is this method alone: no lock, one clock read.

        ``deque.pop()`` is atomic, so two takers never get the same slot; a
        closed pool has no idle slot; a queued waiter sends newcomers to the
        slow path, behind it (first come, first served).
        """
        if self._inherited:
            self._adopt_process()
        if self._waiters or not self._idle:
            return self._take_slow(timeout)
        try:
            slot = self._idle.pop()
        except IndexError:  # taken by another checkout since the test above
            return self._take_slow(timeout)
        now = monotonic()
        if now >= slot.recheck_at:
            slot = self._ready(slot, True)
        slot.checked_out = now
        slot.busy = True
        slot.uses += 1
        return slot

    def _take_slow(self, timeout: Optional[float]) -> _Slot:
        """Check out when the fast path cannot: open a connection, or queue."""
        waiter = slot = None
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            waiters = self._waiters
            if not waiters and self._idle and (slot := self._pop_idle()) is not None:
                pass
            elif not waiters and self._size < self.max_size:
                self._size += 1
            elif self.max_waiting and len(waiters) >= self.max_waiting:
                self._stats["requests_errors"] += 1
                raise TooManyRequests(
                    f"pool {self.name!r}: {len(self._waiters)} requests already waiting"
                    f" (max_waiting={self.max_waiting})"
                )
            else:
                waiter = self._waiter_class()
                waiters.append(waiter)
                self._stats["requests_queued"] += 1
                if self._idle:  # a lock-free return raced this queueing
                    self._hand_over_idle()
        if waiter is None:
            slot = self._ready(slot, True)
            now = monotonic()
        else:
            slot, now = self._wait(waiter, self.timeout if timeout is None else timeout)
            # Handed over by a return just now: only lifetime and check_interval apply.
            if slot is None or now >= slot.expires or now - slot.last_used > self.check_interval:
                slot = self._ready(slot, False)
        slot.checked_out = now
        slot.busy = True
        slot.uses += 1
        return slot

    def _pop_idle(self) -> Optional[_Slot]:
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

    def _wait(self, waiter: _Waiter, timeout: float) -> tuple[Optional[_Slot], float]:
        """Block until served; (the slot handed over or None for leave to open one, now)."""
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
                    self._stats["requests_timeouts"] += 1
                    self._stats["requests_wait_ms"] += int((monotonic() - start) * 1000)
                    in_use, waiting = self._size - len(self._idle), len(self._waiters)
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
        self._stats["requests_wait_ms"] += ms
        if waiter.error is not None:
            raise waiter.error
        return waiter.slot, now

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter was interrupted: leave the queue, pass on what it was given."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return
        if waiter.slot is not None:
            self._put(waiter.slot)
        elif waiter.may_open:
            self._release_capacity()

    def _ready(self, slot: Optional[_Slot], peek: bool) -> _Slot:
        """:meth:`_validate`, giving the reservation back if that fails."""
        try:
            return self._validate(slot, peek)
        except BaseException:
            self._stats["requests_errors"] += 1
            self._release_capacity()
            raise

    def _validate(self, slot: Optional[_Slot], peek: bool) -> _Slot:
        """Make *slot* fit for use, replacing it if needed (the only retry).

        *peek* is False for a connection handed to a waiter: it came back after
        the caller asked for one, so the wake-up latency is not idle time.
        """
        if slot is not None:
            now = monotonic()
            if now >= slot.expires:
                self._close_slot(slot)
                slot = None
            elif (idle := now - slot.last_used) > self.check_interval or (
                peek
                and slot.probe is not None
                and self.probe_after is not None
                and idle >= self.probe_after
                and slot.probe()
            ):
                try:
                    self._connector.ping(slot.raw, self.check_timeout)
                except BaseException as exc:
                    self._forget(slot)  # interrupted mid-ping or dead: state unknown either way
                    if not isinstance(exc, Exception):
                        raise
                    self._stats["connections_lost"] += 1
                    logger.warning("pool %s (%s): dropping dead connection: %s", self.name, self.dsn, _describe(exc))
                    slot = None
        if slot is None:
            slot = self._open_slot()
        return slot

    # -- return ------------------------------------------------------------------

    def putconn(self, raw: Any, *, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn`.

        An open transaction is rolled back; with *discard* the connection is
        closed instead of reused.
        """
        slot = self._lent(raw)
        if slot is None:
            return
        if discard:
            self._drop(slot)
        else:
            self._give_back(slot, False)

    def finish(self, raw: Any, ok: bool) -> None:
        """End a use of *raw*: commit (ok) or roll back an open transaction, return it."""
        slot = self._lent(raw)
        if slot is not None:
            self._give_back(slot, ok)

    def _lent(self, raw: Any) -> Optional[_Slot]:
        """The slot of a connection this pool lent (None: taken before fork)."""
        slot = self._slots.get(id(raw))
        if slot is None or slot.raw is not raw or not slot.busy:
            if self._inherited or self._generation != _fork_generation[0]:
                return None  # taken before fork; the child's pool never lent it
            raise PoolError(f"pool {self.name!r}: putconn() of a connection this pool did not lend")
        return slot

    def _give_back(self, slot: _Slot, ok: bool) -> None:
        if self._dirty(slot.raw):
            self._settle(slot, ok)
        else:
            self._put(slot)

    def _settle(self, slot: _Slot, ok: bool) -> None:
        """Return a connection that needs more than a plain return."""
        raw, connector = slot.raw, self._connector
        try:
            if connector.in_transaction(raw):
                raw.commit() if ok else raw.rollback()
        except BaseException as exc:
            # A failed commit/rollback, or one interrupted mid-way (gevent.Timeout,
            # GreenletExit): state unknown, discard; otherwise the slot would stay
            # "in use" for good and the pool would shrink by one.
            self._drop(slot)
            if ok or not isinstance(exc, Exception):
                raise
            return
        if connector.reusable(raw):
            self._put(slot)
        else:
            self._drop(slot)

    def _put(self, slot: _Slot) -> None:
        """Make *slot* available: to the first waiter, else to the idle stack.

        The common case (nobody waiting) takes no lock: ``deque.append()`` is
        atomic. A taker that queued meanwhile re-checks the idle stack after
        queueing (:meth:`_hand_over_idle`) and this method re-checks the queue
        after appending, so one of the two always sees the other.
        """
        now = monotonic()
        if slot.busy:
            slot.usage_ms += int((now - slot.checked_out) * 1000)
            slot.busy = False
            slot.last_used = now
            # Checkout looks at the slot again only after this; capped by expiry.
            recheck = now + (self.check_interval if self.probe_after is None else self.probe_after)
            slot.recheck_at = recheck if recheck < slot.expires else slot.expires
        if now >= slot.expires:
            self._retire(slot)
        elif self._waiters or self._closed:
            self._put_locked(slot, cold=False)
        else:
            idle = self._idle
            idle.append(slot)
            if self._waiters or self._closed:
                self._put_locked(None, cold=False)
            elif self._size > self.min_size:
                try:
                    oldest = idle[0].last_used
                except IndexError:  # emptied by lock-free checkouts meanwhile
                    return
                if now - oldest > self.max_idle:
                    self._shrink(now)

    def _put_locked(self, slot: Optional[_Slot], *, cold: bool) -> None:
        """Return *slot* (if any) under the lock, settle races, close what a closed pool holds.

        *cold* puts it at the bottom of the idle stack (warm-up), not on top.
        """
        with self._lock:
            if slot is None:
                pass
            elif self._waiters:  # straight to the first waiter
                waiter = self._waiters.popleft()
                waiter.slot = slot
                waiter.wake()
            else:
                self._idle.appendleft(slot) if cold else self._idle.append(slot)
            if self._idle:
                self._hand_over_idle()
            if not self._closed:
                return
            leftover = []
            while (extra := self._pop_idle()) is not None:
                leftover.append(extra)
        for extra in leftover:
            self._retire(extra)

    def _shrink(self, now: float) -> None:
        """Close idle connections above ``min_size`` unused for ``max_idle`` seconds."""
        surplus = []
        with self._lock:
            while self._size - len(surplus) > self.min_size and not self._waiters:
                try:
                    oldest = self._idle[0]
                    if now - oldest.last_used <= self.max_idle:
                        break
                    surplus.append(self._idle.popleft())
                except IndexError:  # emptied by lock-free checkouts meanwhile
                    break
        for slot in surplus:
            self._retire(slot)

    def _drop(self, slot: _Slot) -> None:
        """Close *slot* without a word to the server and free its place."""
        slot.busy = False
        self._forget(slot)
        self._release_capacity()

    def _retire(self, slot: _Slot) -> None:
        """Close *slot* politely (COM_QUIT) and free its place."""
        self._close_slot(slot)
        self._release_capacity()

    def _release_capacity(self) -> None:
        """One connection less: let the first waiter open a new one instead."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.may_open = True
                waiter.wake()
            else:
                self._size -= 1

    def _unregister(self, slot: _Slot) -> None:
        with self._lock:
            if self._slots.pop(id(slot.raw), None) is not None:
                self._retired_uses += slot.uses
                self._retired_usage_ms += slot.usage_ms

    def _forget(self, slot: _Slot) -> None:
        self._unregister(slot)
        self._connector.discard(slot.raw)

    def _close_slot(self, slot: _Slot) -> None:
        self._unregister(slot)
        try:
            slot.owner.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            self._connector.discard(slot.raw)

    def warm(self) -> int:
        """Give every idle connection its first use now, not on a request.

        A ping (bounded by ``check_timeout``) and one ``SELECT 1`` each: the
        driver's query and result code runs once in this process before
        traffic. Not counted in :meth:`stats`. A connection that fails is
        dropped (the next checkout opens another); returns how many were used.
        """
        if self._inherited:
            self._adopt_process()
        slots = []
        while (slot := self._pop_idle()) is not None:
            slots.append(slot)
        used = 0
        try:
            while slots:
                slot = slots.pop()
                try:
                    self._connector.ping(slot.raw, self.check_timeout)
                    if slot.probe is not None:
                        slot.probe()
                    cursor = slot.raw.cursor()
                    try:
                        cursor.execute("SELECT 1")
                        cursor.fetchall()
                    finally:
                        cursor.close()
                except Exception as exc:  # noqa: BLE001 - dropped, replaced on demand
                    logger.warning("pool %s (%s): warm-up use failed: %s", self.name, self.dsn, _describe(exc))
                    self._drop(slot)
                    continue
                except BaseException:
                    self._drop(slot)
                    raise
                used += 1
                self._put_locked(slot, cold=False)  # oldest first: the stack keeps its order
        finally:
            for slot in reversed(slots):  # interrupted: give back the rest untouched
                self._put_locked(slot, cold=False)
        return used

    def connection(self, timeout: Optional[float] = None) -> _Borrowed:
        """Context manager lending a connection (see "Return" above)."""
        return _Borrowed(self, timeout)

    # -- closing and stats ---------------------------------------------------

    def close(self) -> None:
        """Close idle connections, fail waiters, refuse new requests.

        Connections in use are closed when they are returned. In a process
        other than the one that opened them they are dropped without COM_QUIT.
        """
        if self._inherited:
            self._adopt_process()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = []
            while (slot := self._pop_idle()) is not None:
                idle.append(slot)
            waiters, self._waiters = list(self._waiters), deque()
            self._size -= len(idle)
            for waiter in waiters:
                waiter.error = PoolClosed(f"pool {self.name!r} closed while waiting")
                waiter.wake()
        for slot in idle:
            self._close_slot(slot)
        logger.info("pool %s (%s): closed %d connection(s)", self.name, self.dsn, len(idle))

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Current figures, under the stable names in :data:`STATS_KEYS`."""
        if self._inherited:  # the parent's lock may have been held at fork time
            self._adopt_process()
        with self._lock:
            slots = list(self._slots.values())
            uses, usage_ms = self._retired_uses, self._retired_usage_ms
            out = {
                "pool_min": self.min_size,
                "pool_max": self.max_size,
                "pool_size": self._size,
                "pool_available": len(self._idle),
                "requests_waiting": len(self._waiters),
            }
            out.update(self._stats)
        uses += sum(slot.uses for slot in slots)
        # Every request ends in a use, a timeout or an error.
        out["requests_num"] = uses + out["requests_timeouts"] + out["requests_errors"]
        out["usage_ms"] = usage_ms + sum(slot.usage_ms for slot in slots)
        return {key: out[key] for key in STATS_KEYS}

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name!r} {self.dsn} size={self._size}/{self.max_size}"
            f" idle={len(self._idle)} pid={self.pid}{' closed' if self._closed else ''}>"
        )


class _Borrowed:
    """``with pool.connection() as conn``: commit/rollback and return on exit."""

    __slots__ = ("_pool", "_timeout", "_slot")

    def __init__(self, pool: ConnectionPool, timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Any:
        self._slot = slot = self._pool._take(self._timeout)
        return slot.raw

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        slot, self._slot = self._slot, None
        if exc_type is None:
            pool = self._pool
            if pool._dirty(slot.raw):
                pool._settle(slot, True)
            else:
                pool._put(slot)
        elif issubclass(exc_type, Exception):
            self._pool._give_back(slot, False)
        else:  # BaseException: interrupted mid-use, protocol state unknown
            self._pool._drop(slot)


def _describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a driver error."""
    args = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__
