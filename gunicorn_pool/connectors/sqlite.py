"""SQLite through the standard library's sqlite3: the embedded default, no server needed.

Each connection is opened with ``check_same_thread=False`` (the pool
guarantees one user at a time) and ``isolation_level=None`` in autocommit mode,
``"DEFERRED"`` (implicit transactions) otherwise. There is no server session to
protect, so closing and dropping a connection are the same.

``sqlite:///:memory:`` would give every connection its own empty database, so
the pool's connections share one in-memory database instead (a shared-cache
URI named after the pool): it lives while any of them is open, per process.

SQLite calls block the thread that makes them: under gevent they block the
hub for as long as they run (the worker logs this at boot).
"""

from __future__ import annotations

import itertools
import sqlite3
from typing import TYPE_CHECKING, Any, Literal, Optional

from dbutils.steady_db import SteadyDBConnection

from .base import CLOSED, DROP, IDLE, REUSE, Connector, LeaseGuard

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["PooledSQLiteConnection", "SQLiteConnector", "connect_kwargs", "target", "transaction_state"]

_memory_names = itertools.count(1)


def target(config: DatabaseConfig) -> tuple[str, bool]:
    """What the pool's connections open: (the database path or URI, is it a URI). ``:memory:``
    is a shared-cache in-memory database named after the pool, so every connection of the pool
    sees the same one."""
    name = str(config.database)
    if name == ":memory:":
        return f"file:gunicorn_pool_{config.pool_name}_{next(_memory_names)}?mode=memory&cache=shared", True
    return name, False


def connect_kwargs(config: DatabaseConfig, uri: bool) -> dict[str, Any]:
    """``sqlite3.connect()``'s keyword arguments for *config* (the synchronous connector's and
    aiosqlite's): ``connect_timeout`` is the lock wait; autocommit unless the config says
    otherwise (implicit DEFERRED transactions); any thread may use a connection, the pool
    guarantees one user at a time."""
    isolation: Optional[Literal["DEFERRED"]] = None if config.autocommit else "DEFERRED"
    return dict(timeout=config.connect_timeout, check_same_thread=False, isolation_level=isolation, uri=uri)


def transaction_state(conn: Any) -> Optional[bool]:
    """Is a transaction open on *conn* (an ``sqlite3.Connection``, or aiosqlite's, which reads
    it without its thread)? None: the connection was closed (by a user the guard did not watch)."""
    try:
        return bool(conn.in_transaction)
    except (sqlite3.ProgrammingError, ValueError):  # closed (aiosqlite: "no active connection")
        return None


class PooledSQLiteCursor(sqlite3.Cursor):
    """A cursor whose statements pass the connection's lease guard."""

    def execute(self, *args: Any) -> Any:
        self.connection._gp_check()  # type: ignore[attr-defined]
        return super().execute(*args)

    def executemany(self, *args: Any) -> Any:
        self.connection._gp_check()  # type: ignore[attr-defined]
        return super().executemany(*args)

    def executescript(self, *args: Any) -> Any:
        self.connection._gp_check()  # type: ignore[attr-defined]
        return super().executescript(*args)


class PooledSQLiteConnection(LeaseGuard, sqlite3.Connection):
    """An ``sqlite3.Connection`` that knows its lease (see :mod:`.base`)."""

    def cursor(self, factory: Any = None) -> Any:
        self._gp_check()
        return super().cursor(factory or PooledSQLiteCursor)

    def execute(self, *args: Any) -> Any:
        return self.cursor().execute(*args)

    def executemany(self, *args: Any) -> Any:
        return self.cursor().executemany(*args)

    def executescript(self, *args: Any) -> Any:
        return self.cursor().executescript(*args)

    def commit(self) -> None:
        self._gp_check()
        super().commit()

    def rollback(self) -> None:
        self._gp_check()
        super().rollback()

    def close(self) -> None:
        if self._gp_user_close():
            super().close()


class SQLiteConnector(Connector):
    """Opens sqlite3 connections for one pool."""

    adapter = "sqlite"
    guarded = True

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn)
        self.config = config
        self._owners: dict[int, SteadyDBConnection] = {}
        self._target, self._uri = target(config)

    def _create(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, factory=PooledSQLiteConnection, **connect_kwargs(self.config, self._uri))
        conn._gp_pool = self.config.pool_name
        if self.config.init_command:
            conn.execute(self.config.init_command)
        return conn

    def connect(self) -> Any:
        steady = SteadyDBConnection(
            self._create, maxusage=None, setsession=list(self.config.session) or None,
            failures=sqlite3.Error, ping=0, closeable=True,
        )  # fmt: skip
        raw = steady.dbapi_connection
        self._owners[id(raw)] = steady
        return raw

    def close(self, raw: Any) -> None:
        self._owners.pop(id(raw), None)
        raw._gp_holder = None
        try:
            raw.close()
        except sqlite3.Error:
            pass
        raw._gp_holder = CLOSED

    discard = close

    def ping(self, raw: Any, timeout: float) -> None:
        raw._gp_holder = None
        raw.execute("SELECT 1")

    def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already."""
        if not raw.in_transaction:
            raw.execute("BEGIN")

    def check_in(self, raw: Any) -> bool:
        if raw._gp_closed_by_user:
            raw._gp_holder = None
            return False
        busy = transaction_state(raw) is not False
        raw._gp_holder = None if busy else IDLE
        return not busy

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        state = transaction_state(raw)
        if raw._gp_closed_by_user or state is None:
            return DROP
        if state:
            raw.commit() if commit else raw.rollback()
        raw._gp_holder = IDLE
        return REUSE

    def warm(self, raw: Any, timeout: float) -> None:
        super().warm(raw, timeout)
        raw._gp_holder = IDLE
