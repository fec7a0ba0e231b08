"""The asyncio pool: :class:`~gunicorn_pool.core.PoolCore`'s rules under an event loop.

:class:`AsyncConnectionPool` is the twin of :class:`gunicorn_pool.pool.ConnectionPool`
for asyncio drivers (psycopg's ``AsyncConnection``, aiomysql, ``redis.asyncio``,
aiosqlite). Every rule (who is served, who queues and in which order, when a
connection is looked at again, what a return does, lifetime, ``max_idle``,
backoff, reclaim, figures) is the core's; this module adds only how a task
waits (a future, bounded by ``timeout``), the ``await`` on every round trip,
and who the holder is (the task)::

    pool = AsyncConnectionPool(connector, name="default", options=cfg)
    await pool.open()
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
    await pool.close()

Confinement: a pool belongs to the event loop that opened it (its
connections are bound to that loop's sockets). It needs no fork adoption: it
is built in the worker, after fork, inside the loop (the ASGI lifespan).

Cancellation: a task cancelled while it waits for a connection leaves the
queue, and what it was handed passes on. A task cancelled while it holds a
connection (``asyncio.timeout``, a client gone, ``task.cancel()``), anywhere
in a round trip, leaves the connection mid-protocol: ``CancelledError`` is a
``BaseException``, so the lease drops the connection without a word and its
capacity comes back; it is never lent again. The same holds for a return whose
rollback or reset is cancelled half-way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Coroutine, Optional

from . import _concurrency as cc
from .connectors.base_async import task_ident
from .core import PING, REPLACE, PoolCore
from .errors import PoolClosed, PoolError
from .options import DEFAULTS, PoolOptions
from .slot import LENT, Slot

if TYPE_CHECKING:
    from .connectors.base_async import AsyncConnector

__all__ = ["AsyncConnectionPool", "AsyncLease", "FutureWaiter", "task_ident"]

logger = logging.getLogger("gunicorn_pool")
monotonic = time.monotonic


class FutureWaiter(cc.Waiter):
    """A queued task: a future of the loop, resolved by :meth:`wake` (see :class:`cc.Waiter`)."""

    __slots__ = ("_future", "_loop", "_thread")

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[bool] = self._loop.create_future()
        self._thread = threading.get_ident()

    def wake(self) -> None:
        if threading.get_ident() == self._thread:
            self._resolve()
        else:  # never from the pool's own code; a caller in another thread must not touch the loop
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():  # a wait that timed out (or was cancelled) left it cancelled
            self._future.set_result(True)

    def wait(self, timeout: float) -> bool:
        raise PoolError("an asyncio pool's waiter is awaited (await_wake), never waited on")

    async def await_wake(self, timeout: float) -> bool:
        """Wait until woken (True) or until *timeout* seconds pass (False)."""
        try:
            return await asyncio.wait_for(self._future, timeout)
        except asyncio.TimeoutError:
            return False


class AsyncConnectionPool(PoolCore):
    """A pool of asyncio connections to one database, confined to one event loop.

    Built like :class:`~gunicorn_pool.pool.ConnectionPool`, from an
    :class:`~gunicorn_pool.connectors.base_async.AsyncConnector`; the same
    options and defaults (one source: :class:`~gunicorn_pool.options.PoolOptions`).
    """

    _connector: AsyncConnector

    def __init__(self, connector: AsyncConnector, *, name: str, options: PoolOptions = DEFAULTS,
                 default_sizes: tuple[int, int] = (1, 1), **overrides: Any) -> None:  # fmt: skip
        PoolCore.__init__(self, connector, name=name, options=options, default_sizes=default_sizes, **overrides)
        if connector.lends:
            self._lend = connector.lend

    @property
    def connector(self) -> AsyncConnector:
        """The connector this pool opens, checks and closes its connections with."""
        return self._connector

    def _init_state(self) -> None:
        PoolCore._init_state(self)
        self._waiter_class = FutureWaiter
        self._lock_free = cc.lock_free_ok()  # the loop's thread alone moves slots (and the GIL)
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise PoolError(
                f"pool {self.name!r} belongs to another event loop: its connections are bound to that loop's"
                " sockets (open one AsyncConnectionPool per loop)"
            )

    # -- opening (reservation -> OPENING -> a registered slot) -----------------------

    async def open(self, *, deadline: Optional[float] = None) -> int:
        """Open connections up to ``min_size`` now; return how many were opened.

        *deadline* is a ``time.monotonic()`` value after which no further
        connect is started. Raises :class:`ConnectError` on the first failure.
        """
        self._bind_loop()
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        opened = 0
        while self._warm_up_next(opened, deadline):
            try:
                slot = await self._connect(force=True)
            except BaseException:
                self._release_capacity()
                raise
            await self._retire(self._shelve_locked(slot, cold=True))
            opened += 1
        return opened

    async def _connect(self, *, force: bool = False) -> Slot:
        """OPENING: open one connection for a reservation the caller holds (it releases it on failure)."""
        started = monotonic()
        if not force and (refused := self._connect_refusal(started)) is not None:
            raise refused
        try:
            raw = await self._connector.connect()
        except Exception as exc:
            raise self._connect_failed(exc) from None
        return self._connected(raw, started)

    # -- checkout (IDLE or OPENING -> LENT) -----------------------------------------------

    async def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take a connection; give it back with :meth:`putconn`.

        Waits at most *timeout* seconds (the pool's ``timeout`` by default).
        """
        slot = await self._take(timeout)
        self._lent[slot.key] = slot  # putconn()'s dict.pop() ends this lease (invariant 1)
        return slot.raw

    def connection(self, timeout: Optional[float] = None) -> AsyncLease:
        """``async with pool.connection() as conn:`` lends a connection (see AsyncLease)."""
        return AsyncLease(self, timeout)

    def getconn_nowait(self) -> Optional[Any]:
        """A connection now, without an ``await``, if one is idle and due no round trip (no check
        due, or only the probe and it is quiet: the synchronous pool's inline rule); else None
        (then ``await getconn()``). For callers to whom every ``await`` costs (SQLAlchemy's
        greenlet bridge: two greenlet switches); give it back with :meth:`putconn` or
        :meth:`putconn_nowait`."""
        slot = self._pop_fast()
        if slot is None:
            return None
        now = monotonic()
        if now >= slot.recheck_at and not self._quiet(slot, now):  # a ping due: the awaited path takes it
            self._idle.append(slot)
            return None
        self._begin_lease(slot, now, task_ident())
        if self._observer is not None:
            self._observer.waited(0.0)
        self._lent[slot.key] = slot
        return slot.raw

    async def _take(self, timeout: Optional[float]) -> Slot:
        """Check out a slot (IDLE or OPENING -> LENT); the common case takes no lock."""
        observer = self._observer
        if observer is not None:
            asked = monotonic()
        slot = self._pop_fast()
        if slot is None:
            slot, now = await self._take_slow(timeout)
        else:
            now = monotonic()
            if now >= slot.recheck_at:
                slot = await self._ready(slot, peek=True)
        self._begin_lease(slot, now, task_ident())
        if observer is not None:
            observer.waited(monotonic() - asked)
        return slot

    def _pop_fast(self) -> Optional[Slot]:
        """The top idle slot when nobody waits, without the lock; None: take the slow path."""
        if not self._waiters and self._idle and self._lock_free:
            try:
                return self._idle.pop()  # invariant 1
            except IndexError:
                pass
        return None

    async def _take_slow(self, timeout: Optional[float]) -> tuple[Slot, float]:
        """Check out when the fast path cannot: under the lock, open a connection, or queue."""
        self._bind_loop()
        with self._lock:
            slot, waiter = self._reserve()
        if waiter is None:
            return await self._ready(slot, peek=True), monotonic()
        assert isinstance(waiter, FutureWaiter)
        limit = self._options.timeout if timeout is None else timeout
        started = monotonic()
        try:
            woken = await waiter.await_wake(max(limit, 0.0))
        except BaseException:  # CancelledError: the task leaves the queue
            await self._retire(self._abandon(waiter))
            raise
        slot, now = self._wait_ended(waiter, started, limit, woken)
        if slot is None or now >= slot.expires or now - slot.last_used > self._options.check_interval:
            slot = await self._ready(slot, peek=False)
        return slot, now

    async def _ready(self, slot: Optional[Slot], *, peek: bool) -> Slot:
        """Make *slot* fit for use, replacing it if needed (the only retry); None: open one. The
        caller holds the capacity; if this fails (or is cancelled) it is given back."""
        try:
            if slot is not None:
                check = self._check_of(slot, monotonic(), peek=peek)
                if check == REPLACE:
                    self._unregister(slot)
                    await self._connector.close(slot.raw)
                    slot = None
                elif check == PING:
                    try:
                        await self._connector.ping(slot.raw, self._options.check_timeout)
                    except BaseException as exc:
                        self._lost(slot, exc)
                        if not isinstance(exc, Exception):
                            raise
                        slot = None
            if slot is None:
                slot = await self._connect()
            return slot
        except BaseException:
            self._checkout_failed()
            raise

    # -- return (LENT -> IDLE, or -> CLOSED) ----------------------------------------------

    async def putconn(self, raw: Any, *, commit: bool = False, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn` (see ConnectionPool.putconn)."""
        slot = self._unlend(raw, task_ident())
        if slot is None:
            return
        if discard:
            self._drop(slot)
        else:
            await self._give_back(slot, commit=commit)

    def putconn_nowait(self, raw: Any) -> Optional[Coroutine[Any, Any, None]]:
        """Give back *raw* as :meth:`putconn` does; what needs no round trip (a clean
        connection back on the idle stack, the usual case) is done now, and the rest, if any
        (ending what the user left open, closing an expired connection), is returned as a
        coroutine the caller must await."""
        slot = self._unlend(raw, task_ident() if self._owner_check else 0)
        return None if slot is None else self._give_back_nowait(slot, commit=False)

    def discard(self, raw: Any) -> None:
        """Give back *raw*, taken with :meth:`getconn`, and drop it without a round trip: no
        ``await``, so callable where nothing can be awaited (a finaliser, a close outside the
        loop). Raises LeaseError as :meth:`putconn` does."""
        slot = self._unlend(raw, task_ident())
        if slot is not None:
            self._drop(slot)

    async def _give_back(self, slot: Slot, *, commit: bool) -> None:
        rest = self._give_back_nowait(slot, commit=commit)
        if rest is not None:
            await rest

    def _give_back_nowait(self, slot: Slot, *, commit: bool) -> Optional[Coroutine[Any, Any, None]]:
        """A return's work without a round trip; the round trips left, as a coroutine (or None)."""
        if self._check_in(slot.raw):
            closing = self._shelve(slot)
            return self._retire(closing) if closing else None
        return self._settle(slot, commit=commit)

    async def _settle(self, slot: Slot, *, commit: bool, failed: bool = False) -> None:
        try:
            outcome = await self._connector.finish(slot.raw, commit=commit, failed=failed)
        except BaseException as exc:
            # A failed or cancelled commit/rollback/reset: the state is unknown, drop it.
            self._drop(slot)
            if commit or not isinstance(exc, Exception):
                raise
            return
        await self._retire(self._settled(slot, outcome))

    async def _retire(self, slots: tuple[Slot, ...]) -> None:
        """Close politely the slots the core unregistered, then free their capacity (each one's
        capacity is freed even if its close is cancelled)."""
        for slot in slots:
            try:
                await self._connector.close(slot.raw)
            finally:
                self._release_capacity()

    # -- the pool's own use, closing -------------------------------------------------------------

    async def warm(self) -> int:
        """Give every idle connection its first use now (see ConnectionPool.warm)."""
        slots = []
        with self._lock:
            while (slot := self._pop_idle()) is not None:
                slots.append(slot)
        used = 0
        try:
            while slots:
                slot = slots.pop()
                try:
                    await self._connector.warm(slot.raw, self._options.check_timeout)
                    if slot.probe is not None:
                        slot.probe()
                except Exception as exc:  # noqa: BLE001 - dropped, replaced on demand
                    logger.warning("pool %s (%s): warm-up use failed: %s", self.name, self.dsn,
                                   self._connector.describe_error(exc))  # fmt: skip
                    self._drop(slot)
                    continue
                except BaseException:
                    self._drop(slot)
                    raise
                used += 1
                await self._retire(self._shelve_locked(slot, cold=False))
        finally:
            for slot in reversed(slots):
                self._shelve_locked(slot, cold=False)
        return used

    async def close(self) -> None:
        """Close idle connections, fail waiters, refuse new requests; connections in use are
        closed when they come back."""
        idle = self._start_closing()
        if idle is None:
            return
        try:
            for slot in idle:
                try:
                    await self._connector.close(slot.raw)
                finally:
                    self._release_capacity()
        finally:
            logger.info("pool %s (%s): closed %d connection(s)", self.name, self.dsn, len(idle))

    def drop_all(self) -> int:
        """Drop every connection now, without a word to the servers (no round trip: the event loop
        may be gone, as after gunicorn's quick shutdown); return how many."""
        with self._lock:
            self.closed = True
            slots = list(self._slots.values())
        for slot in slots:
            self._drop(slot)
        return len(slots)


class AsyncLease:
    """``async with pool.connection() as conn``: one lease; commit/rollback and return on exit.

    As :class:`gunicorn_pool.pool.Lease`: a clean exit commits what is open, an
    ``Exception`` rolls back (and resets the session), a ``BaseException``
    (``CancelledError``: a cancelled request) drops the connection, which may
    be mid-protocol.
    """

    __slots__ = ("_pool", "_timeout", "_slot", "_number")
    _slot: Optional[Slot]
    _number: int

    def __init__(self, pool: AsyncConnectionPool, timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout

    async def __aenter__(self) -> Any:
        self._slot = slot = await self._pool._take(self._timeout)
        self._number = slot.uses
        return slot.raw

    async def __aexit__(self, exc_type: Optional[type[BaseException]], exc: Any, tb: Any) -> None:
        slot, self._slot = self._slot, None
        pool = self._pool
        if slot is None or slot.uses != self._number or slot.state is not LENT:
            return  # the lease already ended (taken back by the pool)
        if exc_type is None:
            await pool._give_back(slot, commit=True)
        elif issubclass(exc_type, Exception):
            await pool._settle(slot, commit=False, failed=True)
        else:  # CancelledError and other BaseExceptions: interrupted, maybe mid-protocol
            pool._drop(slot)
