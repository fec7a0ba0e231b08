"""Connectors: one module per driver, all on the contract of :mod:`.base`.

:func:`make_connector` picks the module by the config's ``adapter``; a
driver is imported only when a pool of its adapter is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["Connector", "DBAPIConnector", "MySQLConnector", "SQLiteConnector", "make_connector"]

#: adapter -> (module, class)
_BY_ADAPTER = {
    "mysql": (".mysql", "MySQLConnector"),
    "sqlite": (".sqlite", "SQLiteConnector"),
    "dbapi": (".dbapi", "DBAPIConnector"),
}


def make_connector(config: DatabaseConfig) -> Connector:
    """The connector for *config*'s adapter."""
    module, name = _BY_ADAPTER[config.adapter]
    cls: Any = getattr(importlib.import_module(module, __name__), name)
    connector: Connector = cls(config)
    return connector


def __getattr__(name: str) -> Any:
    # MySQLConnector imports PyMySQL: load a connector class only when asked for it.
    for module, cls_name in _BY_ADAPTER.values():
        if cls_name == name:
            return getattr(importlib.import_module(module, __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
