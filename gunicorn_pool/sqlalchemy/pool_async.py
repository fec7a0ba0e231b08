"""AsyncGunicornPool: the pool of a ``create_async_engine()`` engine, lending from an asyncio pool core.

SQLAlchemy's asyncio engines run its synchronous ``Pool`` inside a greenlet
(``greenlet_spawn``); every wait and round trip in there goes back to the event
loop through ``await_()`` (SQLAlchemy's own ``AsyncAdaptedQueuePool`` is
``QueuePool`` with a queue whose waits do that). :class:`AsyncGunicornPool` is
:class:`~gunicorn_pool.sqlalchemy.GunicornPool` with its core swapped for an
:class:`~gunicorn_pool.pool_async.AsyncConnectionPool` (the same rules:
:mod:`gunicorn_pool.core`), so:

- ``_do_get()`` is ``await_(core.getconn())``: a FIFO wait on a future of the
  loop, bounded by ``timeout`` (:class:`SQLAlchemyPoolTimeout`), the checkout
  probe, the holder is the task, and a lease its request left out is reclaimed
  when the request ends (the ASGI request scope), logged with the app's line;
- ``_do_return_conn()`` is ``await_(core.putconn(record))``; where nothing can
  be awaited (SQLAlchemy's garbage-collection cleanup runs outside any
  greenlet) the record is dropped without a round trip instead;
- the core's connector (:class:`AsyncRecordConnector`) opens a record with
  SQLAlchemy's creator and ``connect`` events in a greenlet of its own, reads
  the driver's transaction state without a round trip (psycopg's
  ``transaction_status``, aiomysql's server status, asyncpg's
  ``is_in_transaction()`` and SQLAlchemy's adapter's transaction; aiosqlite:
  SQLAlchemy's reset on return decides), probes the idle connection (psycopg's
  libpq socket, aiomysql's stream buffer, asyncpg's closed protocol), and drops
  connections without the loop.

Cancellation: a task cancelled mid-query leaves its connection mid-protocol.
SQLAlchemy invalidates the record on a cancellation (the DBAPI connection is
terminated and the record left without one); the record comes back with no
connection, or another one, and the core drops the slot and frees its
capacity. A lease the cancelled request never gave back is reclaimed when the
request ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool.base import ResetStyle, _AsyncConnDialect
from sqlalchemy.util.concurrency import await_, greenlet_spawn, in_greenlet

from ..connectors.base import DROP, REUSE, select_one, socket_probe
from ..connectors.base_async import AsyncConnector, stream_probe
from ..errors import LeaseError, PoolTimeout
from ..options import DEFAULTS, PoolOptions
from ..pool_async import AsyncConnectionPool
from .pool import _IN_TRANS, GunicornPool, SQLAlchemyPoolTimeout, _Entry

__all__ = ["AsyncGunicornPool", "AsyncRecordConnector", "aiomysql_connect"]

logger = logging.getLogger("gunicorn_pool")


def _driver(dbapi: Any) -> str:
    """``psycopg``, ``aiomysql``, ``aiosqlite`` or another module name: the driver under
    SQLAlchemy's adapted (asyncio) DBAPI connection *dbapi*."""
    return type(getattr(dbapi, "driver_connection", dbapi)).__module__.partition(".")[0]


def _in_transaction(dbapi: Any, driver: str) -> Optional[bool]:
    """Is a transaction open, as the driver says without a round trip? None: it does not say."""
    conn = dbapi.driver_connection
    if driver == "psycopg":
        return bool(conn.pgconn.transaction_status)  # 0 is IDLE; ACTIVE, INTRANS, INERROR, UNKNOWN are not
    if driver == "aiomysql":
        return conn._writer is None or bool(conn.server_status & _IN_TRANS)  # closed: not clean either
    if driver == "asyncpg":  # SQLAlchemy's adapter holds its own transaction object beside the server's state
        return dbapi._transaction is not None or conn.is_in_transaction() or conn.is_closed()
    return None


#: The drivers whose connections are read and dropped without a round trip (see the module docstring).
DRIVERS = frozenset({"psycopg", "aiomysql", "asyncpg", "aiosqlite"})


def _drop(dbapi: Any) -> None:
    """Close *dbapi*'s driver connection without a word to the server and without the loop (a
    driver not in :data:`DRIVERS`: left to the garbage collector, which closes its socket)."""
    conn = dbapi.driver_connection
    driver = _driver(dbapi)
    try:
        if driver == "psycopg":
            from ..connectors.postgresql_async import drop

            drop(conn)
        elif driver == "aiomysql":
            from ..connectors.mysql_async import drop

            drop(conn)
        elif driver == "aiosqlite":
            from ..connectors.sqlite_async import drop

            drop(conn)
        elif driver == "asyncpg":
            conn.terminate()  # closes the transport, no round trip
    except Exception:  # noqa: BLE001 - never raises
        pass


async def aiomysql_connect(*args: Any, **kw: Any) -> Any:
    """``aiomysql.connect()`` with its whole handshake bounded by ``connect_timeout``, for
    SQLAlchemy's aiomysql dialect (its ``async_creator_fn``). aiomysql's own ``connect_timeout``
    bounds only the TCP connect: a server that accepts and never answers (a blackhole, a hung
    server, a full listen backlog behind a proxy) held the greeting's read, so the lifespan
    startup and every request that opened a connection, forever. On a timeout or a cancellation
    the socket is closed here (aiomysql closes it only on an ``Exception``)."""
    import aiomysql

    timeout = kw.get("connect_timeout")
    conn = aiomysql.Connection(*args, **kw)
    try:
        await asyncio.wait_for(conn._connect(), timeout)
    except asyncio.TimeoutError:
        conn.close()
        where = f"{kw.get('host', 'localhost')}:{kw.get('port', 3306)}"
        raise aiomysql.OperationalError(2013, f"connect to {where} timed out after {timeout:g}s"
                                              " (connect_timeout)") from None  # fmt: skip
    except BaseException:
        conn.close()
        raise
    return conn


class AsyncRecordConnector(AsyncConnector):
    """The connector of an :class:`AsyncGunicornPool`'s core: its connections are SQLAlchemy
    records of a ``create_async_engine()`` engine (their DBAPI connections are SQLAlchemy's
    adapters over psycopg's ``AsyncConnection``, aiomysql, aiosqlite...)."""

    adapter = "sqlalchemy"
    #: Seconds a polite close may take (the pool's ``check_timeout``).
    close_timeout = DEFAULTS.check_timeout

    def __init__(self, pool: AsyncGunicornPool, *, pool_name: str, address: str, dsn: str, password: str) -> None:
        super().__init__(pool_name=pool_name, address=address, dsn=dsn, password=password)
        self._pool = pool
        self._entries: dict[int, _Entry] = {}  # id(record) -> what was opened
        self._warned = False

    def _current(self, raw: Any) -> Optional[_Entry]:
        """What was opened for record *raw*, if it still has that connection (None: SQLAlchemy
        invalidated or reconnected it)."""
        entry = self._entries.get(id(raw))
        return entry if entry is not None and raw.dbapi_connection is entry.dbapi else None

    # -- the physical connection ----------------------------------------------------------

    async def connect(self) -> Any:
        # SQLAlchemy's creator, then its connect events, in a greenlet of their own (they await_()).
        record = await greenlet_spawn(self._pool._create_connection)
        dbapi: Any = record.dbapi_connection
        entry = _Entry(dbapi, _driver(dbapi))
        self._entries[id(record)] = entry
        if entry.driver not in DRIVERS and not self._warned:
            self._warned = True
            logger.warning(
                "pool %s (%s): driver %s is not one gunicorn_pool reads (%s): SQLAlchemy's reset on return"
                " decides what is clean, no checkout probe, and a reclaimed connection is closed only when"
                " it is garbage-collected", self.pool_name, self.dsn, entry.driver, ", ".join(sorted(DRIVERS)),
            )  # fmt: skip
        try:
            if _in_transaction(dbapi, entry.driver):
                await self._end(dbapi, commit=False, timeout=self.close_timeout)  # what connect events left open
        except BaseException:
            self.discard(record)
            raise
        return record

    async def close(self, raw: Any) -> None:
        """SQLAlchemy's close (its events, then the dialect's close), bounded; dropped if it fails."""
        try:
            await asyncio.wait_for(greenlet_spawn(raw.close), self.close_timeout)
        except Exception:  # noqa: BLE001 - never raises: closed without a word then
            self.discard(raw)
        except BaseException:
            self.discard(raw)
            raise
        self._entries.pop(id(raw), None)

    def discard(self, raw: Any) -> None:
        entry = self._entries.pop(id(raw), None)
        dbapis = [c for c in (entry.dbapi if entry else None, raw.dbapi_connection) if c is not None]
        for dbapi in dict.fromkeys(dbapis):  # the one opened, and one SQLAlchemy reconnected since
            _drop(dbapi)

    # -- health ---------------------------------------------------------------------------

    async def ping(self, raw: Any, timeout: float) -> None:
        entry = self._current(raw)
        if entry is None:
            raise sa_exc.DisconnectionError("the record lost its connection")
        conn = entry.dbapi.driver_connection
        if entry.driver == "psycopg":
            from ..connectors.postgresql_async import aping  # an empty query: no transaction opened

            await aping(conn, timeout)
        elif entry.driver == "aiomysql":
            await asyncio.wait_for(conn.ping(False), timeout)  # COM_PING, never reconnecting
        elif entry.driver == "asyncpg":
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout)  # simple query protocol, no transaction
        else:
            dialect: Any = self._pool._dialect
            await asyncio.wait_for(greenlet_spawn(dialect.do_ping, entry.dbapi), timeout)
            if _in_transaction(entry.dbapi, entry.driver) is not False:
                await self._end(entry.dbapi, commit=False, timeout=timeout)

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        dbapi = raw.dbapi_connection
        driver = _driver(dbapi)
        if driver == "psycopg":
            return socket_probe(dbapi.driver_connection.pgconn.socket)  # the loop reads it only during a query
        if driver == "aiomysql":
            reader = dbapi.driver_connection._reader
            return None if reader is None else stream_probe(reader)  # the loop fills it while idle
        if driver == "asyncpg":  # the loop reads its socket: a server's goodbye closes the protocol
            return dbapi.driver_connection.is_closed  # type: ignore[no-any-return]
        return None

    async def warm(self, raw: Any, timeout: float) -> None:
        """A ping, then ``SELECT 1`` through SQLAlchemy's adapted cursor (its code paths' first use)."""
        await self.ping(raw, timeout)
        dbapi = raw.dbapi_connection
        await asyncio.wait_for(greenlet_spawn(select_one, dbapi), timeout)
        if _in_transaction(dbapi, _driver(dbapi)) is not False:
            await self._end(dbapi, commit=False, timeout=timeout)

    # -- leases ------------------------------------------------------------------------------

    def check_in(self, raw: Any) -> bool:
        entry = self._current(raw)
        if entry is None:
            return False  # invalidated or reconnected by SQLAlchemy: finish() drops it
        busy = _in_transaction(entry.dbapi, entry.driver)
        if busy is None:  # a driver that does not say: SQLAlchemy's reset, if any, decides
            return self._pool._reset_on_return is not ResetStyle.reset_none
        return not busy

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        entry = self._current(raw)
        if entry is None:
            return DROP
        if _in_transaction(entry.dbapi, entry.driver) is not False:
            if entry.driver == "aiomysql" and entry.dbapi.driver_connection._writer is None:
                return DROP
            await self._end(entry.dbapi, commit=commit, timeout=self.query_bound or self.close_timeout)
        return REUSE

    @staticmethod
    async def _end(dbapi: Any, *, commit: bool, timeout: float) -> None:
        """COMMIT or ROLLBACK through SQLAlchemy's adapter (it keeps its own transaction state),
        bounded by *timeout* (a timeout leaves it mid-protocol: the pool drops it)."""
        await asyncio.wait_for(greenlet_spawn(dbapi.commit if commit else dbapi.rollback), timeout)


class AsyncGunicornPool(GunicornPool):
    """The SQLAlchemy pool of a ``create_async_engine()`` engine, lending the connections of a
    gunicorn_pool :class:`~gunicorn_pool.pool_async.AsyncConnectionPool` (see the module
    docstring).

    Usually built by :func:`~gunicorn_pool.sqlalchemy.adopt` (given an ``AsyncEngine``) or
    ``EnginePool(..., asyncio=True)``, which open it in the worker's event loop (the ASGI
    lifespan); to build one yourself::

        engine.sync_engine.pool = AsyncGunicornPool.from_pool(engine.sync_engine.pool, max_size=4)
        await engine.sync_engine.pool.core.open()   # in the loop that will use it

    The core belongs to the event loop that first uses it.
    """

    _dialect = _AsyncConnDialect()
    _core_class = AsyncConnectionPool  # type: ignore[assignment]
    _connector_class = AsyncRecordConnector
    core: AsyncConnectionPool  # type: ignore[assignment]

    def __init__(self, creator: Any, *, options: PoolOptions = DEFAULTS, pool_name: str = "sqlalchemy",
                 url: Any = None, **kw: Any) -> None:  # fmt: skip
        super().__init__(creator, options=options, pool_name=pool_name, url=url, **kw)
        connector = self.core.connector
        assert isinstance(connector, AsyncRecordConnector)
        connector.close_timeout = self.core.options.check_timeout
        self._closing: set[asyncio.Task[None]] = set()

    def _do_get(self) -> ConnectionPoolEntry:
        # An idle connection due no check is taken without an await (each await_() is two greenlet
        # switches and a coroutine); waiting, opening or pinging awaits the core.
        record: Optional[ConnectionPoolEntry] = self.core.getconn_nowait()
        if record is not None:
            return record
        try:
            record = await_(self.core.getconn())
        except PoolTimeout as exc:
            raise SQLAlchemyPoolTimeout(str(exc)) from None
        assert record is not None
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            if in_greenlet():
                rest = self.core.putconn_nowait(record)  # a clean return needs no await
                if rest is not None:
                    await_(rest)
            else:  # SQLAlchemy's cleanup of a garbage-collected connection: nothing can be awaited
                self.core.discard(record)
        except LeaseError:
            pass  # reclaimed at the end of its request (closed already)

    def dispose(self) -> None:
        """Close the core: idle connections now, lent ones when they come back. Outside
        SQLAlchemy's greenlet, the close runs as a task of the running loop; with no loop
        running, what is left is dropped without a round trip."""
        if in_greenlet():
            await_(self.core.close())
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.core.drop_all()
            return
        task = loop.create_task(self.core.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
