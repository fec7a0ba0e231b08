"""Connectors: one module per driver, all on the contract of :mod:`.base`.

:func:`make_connector` picks the module by the config's ``adapter`` (and its
``driver``: PyMySQL or mysqlclient for MySQL, psycopg 3 or psycopg2 for
PostgreSQL); a driver is imported only when a pool of its adapter and driver
is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional

from .base import Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig
    from .base_async import AsyncConnector

__all__ = [
    "AsyncMySQLConnector", "AsyncPostgreSQLConnector", "AsyncSQLiteConnector", "Connector", "DBAPIConnector",
    "MySQLConnector", "MySQLdbConnector", "PostgreSQLConnector", "Psycopg2Connector", "SQLiteConnector",
    "async_connector_class",
    "connector_class", "make_async_connector", "make_connector",
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
    ("mysql", "mysqlclient"): (".mysqlclient", "MySQLdbConnector"),
    ("postgresql", "psycopg2"): (".psycopg2", "Psycopg2Connector"),
}


#: adapter -> (module, class) of the asyncio connectors (AsyncDatabasePool): each module shares its
#: database's rules with the synchronous connector's module.
_ASYNC_BY_ADAPTER = {
    "mysql": (".mysql_async", "AsyncMySQLConnector"),
    "postgresql": (".postgresql_async", "AsyncPostgreSQLConnector"),
    "sqlite": (".sqlite_async", "AsyncSQLiteConnector"),
}


def connector_class(adapter: str, driver: Optional[str] = None) -> Any:
    """The connector class of *adapter* (and *driver*: for MySQL ``pymysql`` or ``mysqlclient``, for
    PostgreSQL ``psycopg`` or ``psycopg2``),
    its module (and driver) imported now.

    DatabasePool calls it where the config is read: in the master, for a pool
    registered in gunicorn.conf.py, so every worker inherits the import
    instead of paying it at each boot and max_requests respawn."""
    module, name = _BY_DRIVER.get((adapter, driver)) or _BY_ADAPTER[adapter]
    return getattr(importlib.import_module(module, __name__), name)


def make_connector(config: DatabaseConfig) -> Connector:
    """The connector for *config*'s adapter and driver."""
    connector: Connector = connector_class(config.adapter, config.driver)(config)
    return connector


def async_connector_class(adapter: str) -> Any:
    """The asyncio connector class of *adapter*, its module (and driver) imported now; KeyError
    if the adapter has none."""
    module, name = _ASYNC_BY_ADAPTER[adapter]
    return getattr(importlib.import_module(module, __name__), name)


def make_async_connector(config: DatabaseConfig) -> AsyncConnector:
    """The asyncio connector for *config*'s adapter."""
    connector: AsyncConnector = async_connector_class(config.adapter)(config)
    return connector


def __getattr__(name: str) -> Any:
    # MySQLConnector imports PyMySQL, PostgreSQLConnector psycopg: load a connector class only when asked for it.
    for module, cls_name in (*_BY_ADAPTER.values(), *_BY_DRIVER.values(), *_ASYNC_BY_ADAPTER.values()):
        if cls_name == name:
            return getattr(importlib.import_module(module, __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
