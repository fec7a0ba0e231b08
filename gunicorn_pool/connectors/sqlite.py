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

__all__ = ["PooledSQLiteConnection", "SQLiteConnector"]

_memory_names = itertools.count(1)


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
        self._target = str(config.database)
        self._uri = False
        if self._target == ":memory:":
            self._target = f"file:gunicorn_pool_{config.pool_name}_{next(_memory_names)}?mode=memory&cache=shared"
            self._uri = True

    def _create(self) -> sqlite3.Connection:
        cfg = self.config
        isolation: Optional[Literal["DEFERRED"]] = None if cfg.autocommit else "DEFERRED"
        conn = sqlite3.connect(
            self._target,
            timeout=cfg.connect_timeout,
            check_same_thread=False,  # the pool guarantees one user at a time
            isolation_level=isolation,
            factory=PooledSQLiteConnection,
            uri=self._uri,
        )
        conn._gp_pool = cfg.pool_name
        if cfg.init_command:
            conn.execute(cfg.init_command)
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
        try:
            busy = raw.in_transaction
        except sqlite3.ProgrammingError:  # closed by a user the guard did not watch (owner_check off)
            busy = True
        raw._gp_holder = None if busy else IDLE
        return not busy

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        if raw._gp_closed_by_user:
            return DROP
        try:
            busy = raw.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return DROP
        if busy:
            raw.commit() if commit else raw.rollback()
        raw._gp_holder = IDLE
        return REUSE

    def warm(self, raw: Any, timeout: float) -> None:
        super().warm(raw, timeout)
        raw._gp_holder = IDLE
