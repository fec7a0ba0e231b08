"""SQLite through the standard library's sqlite3: the embedded default, no server needed.

Each connection is opened with ``check_same_thread=False`` (the pool
guarantees one user at a time) and ``isolation_level=None`` in autocommit mode,
``""`` (implicit transactions) otherwise. There is no server session to
protect, so closing and dropping a connection are the same.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Literal, Optional

from dbutils.steady_db import SteadyDBConnection

from .base import REUSE, Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["SQLiteConnector"]


class SQLiteConnector(Connector):
    """Opens sqlite3 connections for one pool."""

    adapter = "sqlite"

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn)
        self.config = config
        self._owners: dict[int, SteadyDBConnection] = {}

    def _create(self) -> sqlite3.Connection:
        cfg = self.config
        isolation: Optional[Literal["DEFERRED"]] = None if cfg.autocommit else "DEFERRED"
        conn = sqlite3.connect(
            str(cfg.database),
            timeout=cfg.connect_timeout,
            check_same_thread=False,  # the pool guarantees one user at a time
            isolation_level=isolation,
        )
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
        try:
            raw.close()
        except sqlite3.Error:
            pass

    discard = close

    def ping(self, raw: Any, timeout: float) -> None:
        raw.execute("SELECT 1")

    def check_in(self, raw: Any) -> bool:
        return not raw.in_transaction

    def finish(self, raw: Any, *, commit: bool) -> str:
        if raw.in_transaction:
            raw.commit() if commit else raw.rollback()
        return REUSE
