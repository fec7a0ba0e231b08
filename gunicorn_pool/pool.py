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
   more than ``check_interval`` (0.5 s, HikariCP's rule) ago, or its socket
   already shows the server closed it (a non-blocking peek, no round trip),
   it is pinged, with ``check_timeout`` as a hard bound; a dead one is replaced. Only this
   checkout step retries: a statement that failed is never re-run.
3. *Wait*: when ``max_size`` connections are out, the caller queues. Waiters
   are served strictly in arrival order: a returned connection is handed to
   the first waiter directly, never to a newcomer. A waiter gives up after
   ``timeout`` seconds (:class:`PoolTimeout`); when ``max_waiting`` callers
   already wait, a new one fails at once (:class:`TooManyRequests`).
4. *Return*: an open transaction is committed (clean exit of ``connection()``)
   or rolled back (exception), using the driver's transaction flag, so a
   caller that opened none pays no extra round trip. A connection whose user
   was interrupted by a BaseException (``gevent.Timeout``, ``GreenletExit``,
   ``SystemExit``, ``KeyboardInterrupt``) is in an unknown protocol state and
   is closed, never reused (PyMySQL/PyMySQL#275).
5. *Close*: on ``close()``, expiry, a failed check, or when an idle connection
   above ``min_size`` was idle for ``max_idle`` seconds (checked on checkout
   and return).

Fork safety: every pool remembers the process that opened it. In a forked
child (gunicorn ``--preload``) the first use drops the inherited connections
without a word to the server (PyMySQL's ``close()`` would send COM_QUIT and end
the parent's session) and opens the child's own.

Concurrency: the pool's lock and the waiters' wake-ups are ``threading``
primitives looked up when the pool is (re)initialised in its process. Under
gevent they are created after monkey-patching (``open()`` and the fork reset
rebuild them), so waits yield to the hub even for a pool built before
patching, e.g. by ``--preload``.
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
from typing import Any, Optional

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

# The socket peek (Connector.suspect) is skipped for a connection given back
# less than this many seconds ago: it was alive then, and the peek costs ~10 us
# of a ~65 us SELECT 1 (bench/overhead.py) in back-to-back reuse. A connection
# handed straight to a waiter skips it too (see _validate).
SUSPECT_AFTER = 1e-4

# Bumped in every forked child; a pool whose generation differs was inherited.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Every pool, so connections still open at interpreter exit are closed by
# their owner (e.g. the master's, with --preload); close() drops inherited ones.
_all_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for pool in list(_all_pools):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class _Slot:
    """One physical connection and its bookkeeping."""

    __slots__ = ("owner", "raw", "created", "expires", "last_used", "checked_out")

    def __init__(self, owner: Any, lifetime: float) -> None:
        now = monotonic()
        self.owner = owner  # the DBUtils steady connection that owns ``raw``
        self.raw = owner.dbapi_connection
        self.created = self.last_used = self.checked_out = now
        self.expires = now + lifetime * (1.0 - 0.1 * random.random())


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
        self.reconnect_backoff_max = reconnect_backoff_max
        self._connector = connector
        self._reset_state()
        _all_pools.add(self)

    # -- process-local state ------------------------------------------------

    def _reset_state(self) -> None:
        """(Re)create everything that belongs to one process."""
        self.pid = os.getpid()
        self._generation = _fork_generation[0]
        self._lock_factory = threading.Lock
        self._lock = threading.Lock()
        self._waiter_class = _waiter_class()
        self._idle: deque[_Slot] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._in_use: dict[int, _Slot] = {}
        self._size = 0  # open connections plus those being opened
        self._closed = False
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._last_error = ""
        self._stats = dict.fromkeys(STATS_KEYS[5:], 0)

    def _adopt_process(self) -> None:
        """Drop connections inherited through fork and start afresh here."""
        inherited = [*self._idle, *self._in_use.values()]
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
        if self._generation != _fork_generation[0]:
            self._adopt_process()
        if self._lock_factory is not threading.Lock and not self._in_use and not self._waiters:
            # Built before gevent patched threading: rebuild the primitives.
            self._lock_factory, self._lock = threading.Lock, threading.Lock()
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
            with self._lock:
                self._idle.appendleft(slot)
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
        return _Slot(owner, self.max_lifetime)

    def _address(self) -> str:
        cfg = getattr(self._connector, "config", None)
        return cfg.address if cfg is not None else self.name

    # -- checkout ------------------------------------------------------------

    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        Waits at most *timeout* seconds (the pool's ``timeout`` by default).
        """
        if self._generation != _fork_generation[0]:
            self._adopt_process()
        waiter = None
        slot = None
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            self._stats["requests_num"] += 1
            if self._idle and not self._waiters:
                slot = self._idle.pop()
            elif self._size < self.max_size and not self._waiters:
                self._size += 1
            elif self.max_waiting and len(self._waiters) >= self.max_waiting:
                self._stats["requests_errors"] += 1
                raise TooManyRequests(
                    f"pool {self.name!r}: {len(self._waiters)} requests already waiting"
                    f" (max_waiting={self.max_waiting})"
                )
            else:
                waiter = self._waiter_class()
                self._waiters.append(waiter)
                self._stats["requests_queued"] += 1
        if waiter is not None:
            slot = self._wait(waiter, self.timeout if timeout is None else timeout)
        try:
            slot = self._validate(slot, peek=waiter is None)
        except BaseException:
            self._stats["requests_errors"] += 1
            self._release_capacity()
            raise
        slot.checked_out = monotonic()
        self._in_use[id(slot.raw)] = slot
        return slot.raw

    def _wait(self, waiter: _Waiter, timeout: float) -> Optional[_Slot]:
        start = monotonic()
        try:
            woken = waiter.wait(max(timeout, 0.0))
        except BaseException:
            self._abandon(waiter)
            raise
        if not woken:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    self._stats["requests_timeouts"] += 1
                    self._stats["requests_wait_ms"] += int((monotonic() - start) * 1000)
                    logger.warning(
                        "pool %s (%s): timed out after %.2fs waiting for a connection (%d in use, %d waiting)",
                        self.name, self.dsn, timeout, len(self._in_use), len(self._waiters),
                    )  # fmt: skip
                    raise PoolTimeout(
                        f"pool {self.name!r}: no connection available within {timeout:g}s"
                        f" (max_size={self.max_size}, in use={len(self._in_use)})"
                    )
            # Handed a connection just as the wait ran out: take it.
        ms = int((monotonic() - start) * 1000)  # computed first: see connections_ms
        self._stats["requests_wait_ms"] += ms
        if waiter.error is not None:
            raise waiter.error
        return waiter.slot  # None: leave to open a new connection

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter was interrupted: leave the queue, pass on what it was given."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return
        if waiter.slot is not None:
            self._return_slot(waiter.slot)
        elif waiter.may_open:
            self._release_capacity()

    def _validate(self, slot: Optional[_Slot], peek: bool = True) -> _Slot:
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
                peek and idle >= SUSPECT_AFTER and self._connector.suspect(slot.raw)
            ):
                try:
                    self._connector.ping(slot.raw, self.check_timeout)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # interrupted mid-ping: state unknown
                        self._connector.discard(slot.raw)
                        raise
                    self._stats["connections_lost"] += 1
                    logger.warning("pool %s (%s): dropping dead connection: %s", self.name, self.dsn, _describe(exc))
                    self._connector.discard(slot.raw)
                    slot = None
        if slot is None:
            slot = self._open_slot()
        return slot

    # -- return ------------------------------------------------------------------

    def putconn(self, raw: Any, *, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn`.

        With *discard* the connection is closed instead of reused.
        """
        slot = self._in_use.pop(id(raw), None)
        if slot is None:
            if self._generation != _fork_generation[0]:
                return  # taken before fork; the child's pool never lent it
            raise PoolError(f"pool {self.name!r}: putconn() of a connection this pool did not lend")
        now = monotonic()
        ms = int((now - slot.checked_out) * 1000)  # computed first: see connections_ms
        self._stats["usage_ms"] += ms
        slot.last_used = now
        if discard:
            self._connector.discard(raw)
            self._release_capacity()
        elif self._closed or now >= slot.expires:
            self._close_slot(slot)
            self._release_capacity()
        else:
            self._return_slot(slot)

    def _return_slot(self, slot: _Slot) -> None:
        surplus = None
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.slot = slot
                waiter.wake()
                return
            self._idle.append(slot)
            if self._size > self.min_size and slot.last_used - self._idle[0].last_used > self.max_idle:
                surplus = self._idle.popleft()
        if surplus is not None:
            self._close_slot(surplus)
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

    def _close_slot(self, slot: _Slot) -> None:
        try:
            slot.owner.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            self._connector.discard(slot.raw)

    def connection(self, timeout: Optional[float] = None) -> _Borrowed:
        """Context manager lending a connection (see "Return" above)."""
        return _Borrowed(self, timeout)

    def finish(self, raw: Any, ok: bool) -> None:
        """End a use of *raw*: commit (ok) or roll back an open transaction, return it."""
        connector = self._connector
        try:
            if connector.in_transaction(raw):
                raw.commit() if ok else raw.rollback()
        except BaseException as exc:
            # A failed commit/rollback, or one interrupted mid-way (gevent.Timeout,
            # GreenletExit): state unknown, discard; otherwise the slot would stay
            # "in use" for good and the pool would shrink by one.
            self.putconn(raw, discard=True)
            if ok or not isinstance(exc, Exception):
                raise
            return
        self.putconn(raw, discard=not connector.reusable(raw))

    # -- closing and stats ---------------------------------------------------

    def close(self) -> None:
        """Close idle connections, fail waiters, refuse new requests.

        Connections in use are closed when they are returned. In a process
        other than the one that opened them they are dropped without COM_QUIT.
        """
        if self._generation != _fork_generation[0]:
            self._adopt_process()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = list(self._idle), deque()
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
        out = {
            "pool_min": self.min_size,
            "pool_max": self.max_size,
            "pool_size": self._size,
            "pool_available": len(self._idle),
            "requests_waiting": len(self._waiters),
        }
        out.update(self._stats)
        return out

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name!r} {self.dsn} size={self._size}/{self.max_size}"
            f" idle={len(self._idle)} pid={self.pid}{' closed' if self._closed else ''}>"
        )


class _Borrowed:
    """``with pool.connection() as conn``: commit/rollback and return on exit."""

    __slots__ = ("_pool", "_timeout", "_raw")

    def __init__(self, pool: ConnectionPool, timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Any:
        self._raw = self._pool.getconn(self._timeout)
        return self._raw

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        raw, self._raw = self._raw, None
        if exc_type is None:
            self._pool.finish(raw, True)
        elif issubclass(exc_type, Exception):
            self._pool.finish(raw, False)
        else:  # BaseException: interrupted mid-use, protocol state unknown
            self._pool.putconn(raw, discard=True)


def _describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a driver error."""
    args = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__
