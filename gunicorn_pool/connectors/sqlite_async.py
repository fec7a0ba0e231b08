"""SQLite through aiosqlite: the asyncio twin of :mod:`.sqlite`.

Why aiosqlite: SQLite has no socket to wait on; every call blocks the thread
that makes it, for as long as the statement (or a lock wait, up to
``connect_timeout``) runs. aiosqlite gives each connection a thread of its
own and hands each call to it, so the event loop never blocks and one
connection's calls run in order. A thread offload of our own
(``asyncio.to_thread`` per call) would share the default executor with the
app and could run two calls of one connection at once.

The rules are the synchronous connector's (:mod:`.sqlite`, shared functions):
the same ``sqlite3.connect()`` arguments (``connect_timeout`` as the lock wait,
autocommit unless configured otherwise, a shared in-memory database per pool
for ``:memory:``), ``init_command`` and ``session`` on each new connection, a
return that commits or rolls back an open transaction, and a connection its
user closed dropped.

A task cancelled while its statement runs cannot stop the statement: it runs
to its end in the connection's thread. The connection is then still busy:
``check_in()`` says so (the last call has not returned), and it is dropped,
never lent again (its thread closes it once the statement ends).
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any, Optional

import aiosqlite
from aiosqlite.core import set_exception, set_result

from .base import CLOSED, DROP, IDLE, REUSE
from .base_async import AsyncConnector, TaskGuard
from .sqlite import connect_kwargs, target, transaction_state

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["AsyncSQLiteConnector", "PooledAioSQLiteConnection"]


class PooledAioSQLiteConnection(TaskGuard, aiosqlite.Connection):
    """An ``aiosqlite.Connection`` that knows its lease: every call (``execute``, cursors,
    ``commit``...) passes :meth:`_execute`, where the guard refuses a use by another request or
    after the connection went back, before the call is queued to the connection's thread."""

    _gp_queued = 0  # calls handed to the connection's thread (written by the loop's thread only)
    _gp_done = 0  # calls that thread finished (written by that thread only)

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._gp_holder is not None:
            self._gp_check()
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def call() -> None:  # in the connection's thread; done before the task is told
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                self._gp_done += 1
                _deliver(loop, set_exception, future, exc)
            else:
                self._gp_done += 1
                _deliver(loop, set_result, future, result)

        self._gp_queued += 1
        self._tx.put_nowait((None, call))
        return await future

    async def close(self) -> None:
        if self._gp_user_close():
            await aiosqlite.Connection.close(self)

    @property
    def busy(self) -> bool:
        """True while a call of this connection is queued or runs in its thread (the task that
        made it may have been cancelled: the call runs on)."""
        return self._gp_queued != self._gp_done


class AsyncSQLiteConnector(AsyncConnector):
    """Opens aiosqlite connections for one pool (see the module docstring)."""

    adapter = "sqlite"

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn)
        self.config = config
        self._target, self._uri = target(config)
        self._kwargs = connect_kwargs(config, self._uri)

    async def connect(self) -> PooledAioSQLiteConnection:
        def opener() -> sqlite3.Connection:
            conn: sqlite3.Connection = sqlite3.connect(self._target, **self._kwargs)
            return conn

        conn = PooledAioSQLiteConnection(opener, 64)
        await conn  # starts its thread and opens the sqlite3 connection there
        conn._gp_pool = self.config.pool_name
        try:
            for statement in ((self.config.init_command,) if self.config.init_command else ()) + self.config.session:
                await conn.execute(statement)
        except BaseException:
            self.discard(conn)
            raise
        return conn

    async def close(self, raw: Any) -> None:
        raw._gp_holder = None
        try:
            await aiosqlite.Connection.close(raw)
        except Exception:  # noqa: BLE001 - never raises
            pass
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        """Stop the connection's thread once what it runs ends; it closes the sqlite3 connection
        (no round trip: nothing to tell a server)."""
        raw._gp_holder = CLOSED
        drop(raw)

    async def ping(self, raw: Any, timeout: float) -> None:
        raw._gp_holder = None
        await asyncio.wait_for(raw.execute("SELECT 1"), timeout)

    async def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already."""
        if not raw.in_transaction:
            await raw.execute("BEGIN")

    def lend(self, raw: Any, holder: Optional[int], taken_at: str = "") -> None:
        raw.arm(holder, taken_at)

    def check_in(self, raw: Any) -> bool:
        busy = raw._gp_closed_by_user or raw.busy or transaction_state(raw) is not False
        raw._gp_holder = None if busy else IDLE
        return not busy

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        state = transaction_state(raw)
        if raw._gp_closed_by_user or raw.busy or state is None:
            return DROP
        if state:
            await (raw.commit() if commit else raw.rollback())
        raw._gp_holder = IDLE
        return REUSE

    async def warm(self, raw: Any, timeout: float) -> None:
        await self.ping(raw, timeout)
        raw._gp_holder = IDLE


def drop(raw: Any) -> None:
    """Stop aiosqlite connection *raw*'s thread once what it runs ends; it closes the sqlite3
    connection. No loop needed. Never raises."""
    try:
        raw._running = False
        connection, raw._connection = raw._connection, None
        if connection is not None:
            raw._tx.put_nowait((None, connection.close))
        raw._tx.put_nowait((None, _stop))
    except Exception:  # noqa: BLE001 - never raises
        pass


def _deliver(loop: asyncio.AbstractEventLoop, how: Any, future: Any, value: Any) -> None:
    """Hand a call's outcome to its task; nobody waits any more once the loop is closed."""
    try:
        loop.call_soon_threadsafe(how, future, value)
    except RuntimeError:  # the event loop is closed
        pass


def _stop() -> object:
    """The last call a dropped connection's thread runs: it ends the thread's loop."""
    from aiosqlite.core import _STOP_RUNNING_SENTINEL

    return _STOP_RUNNING_SENTINEL
