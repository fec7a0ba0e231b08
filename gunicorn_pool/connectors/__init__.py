"""Connectors: one module per driver, all on the contract of :mod:`.base`.

:func:`make_connector` picks the module by the config's ``adapter`` (and, for
PostgreSQL, its ``driver``: psycopg 3 or psycopg2); a driver is imported only
when a pool of its adapter and driver is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional

from .base import Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = [
    "Connector", "DBAPIConnector", "MySQLConnector", "Psycopg2Connector", "PostgreSQLConnector", "SQLiteConnector",
    "connector_class", "make_connector",
]  # fmt: skip

#: adapter -> (module, class)
_BY_ADAPTER = {
    "mysql": (".mysql", "MySQLConnector"),
    "postgresql": (".postgresql", "PostgreSQLConnector"),
    "sqlite": (".sqlite", "SQLiteConnector"),
    "dbapi": (".dbapi", "DBAPIConnector"),
}
#: (adapter, driver) -> (module, class), for an adapter with more than one driver; a driver not
#: listed (None, or the adapter's first) is the adapter's own module above.
_BY_DRIVER: dict[tuple[str, Optional[str]], tuple[str, str]] = {
    ("postgresql", "psycopg2"): (".psycopg2", "Psycopg2Connector"),
}


def connector_class(adapter: str, driver: Optional[str] = None) -> Any:
    """The connector class of *adapter* (and *driver*, for PostgreSQL: ``psycopg`` or
    ``psycopg2``), its module (and driver) imported now.

    DatabasePool calls it where the config is read: in the master, for a pool
    registered in gunicorn.conf.py, so every worker inherits the import
    instead of paying it at each boot and max_requests respawn."""
    module, name = _BY_DRIVER.get((adapter, driver)) or _BY_ADAPTER[adapter]
    return getattr(importlib.import_module(module, __name__), name)


def make_connector(config: DatabaseConfig) -> Connector:
    """The connector for *config*'s adapter and driver."""
    connector: Connector = connector_class(config.adapter, config.driver)(config)
    return connector


def __getattr__(name: str) -> Any:
    # MySQLConnector imports PyMySQL, PostgreSQLConnector psycopg: load a connector class only when asked for it.
    for module, cls_name in (*_BY_ADAPTER.values(), *_BY_DRIVER.values()):
        if cls_name == name:
            return getattr(importlib.import_module(module, __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
