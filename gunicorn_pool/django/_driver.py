"""The driver under Django's MySQL backend: PyMySQL whether mysqlclient is installed or not, or mysqlclient.

An alias's connections are PyMySQL's unless its ``OPTIONS["pool"]["driver"]``
is ``mysqlclient`` (Django's own driver, a C library that blocks gevent's
hub). Django's ``django.db.backends.mysql.base`` does ``import MySQLdb`` at
import time and refuses a ``MySQLdb`` older than 1.4.3, so:

- when ``MySQLdb`` can be imported (mysqlclient, or a project's own
  ``pymysql.install_as_MySQLdb()``) Django's module is imported as it is, and
  our backend overrides every place where it uses that module (the ``Database``
  attribute that maps driver errors, the cursor wrapper's error mapping,
  ``_rollback``, ``is_usable``, the converters);
- when it cannot, Django's module is imported with PyMySQL standing in for
  ``MySQLdb`` for the duration of that one import, and the stand-in is removed
  again: no other code of the process sees a ``MySQLdb`` it did not install.

Django's version check reads ``MySQLdb.version_info``, which PyMySQL fakes
(it reports a mysqlclient version, 2.2.8 for PyMySQL 1.2.4), so it says
nothing about PyMySQL itself: :func:`check_pymysql` checks PyMySQL's real
version instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

import pymysql
import pymysql.constants
import pymysql.converters
from pymysql.constants import CLIENT, FIELD_TYPE

__all__ = ["MIN_PYMYSQL", "check_pymysql", "django_conversions", "django_mysql_base", "driver_module"]

#: The oldest PyMySQL the connector supports (setup.cfg says the same).
MIN_PYMYSQL = (1, 1)
_MODULE = "django.db.backends.mysql.base"


def check_pymysql() -> None:
    """Raise ImproperlyConfigured if PyMySQL is older than :data:`MIN_PYMYSQL`."""
    if tuple(pymysql.VERSION[:2]) < MIN_PYMYSQL:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"gunicorn_pool.django.mysql needs PyMySQL {'.'.join(map(str, MIN_PYMYSQL))} or newer;"
            f" you have {pymysql.VERSION_STRING}"
        )


def django_mysql_base() -> ModuleType:
    """Django's ``django.db.backends.mysql.base`` module (see the module docstring)."""
    check_pymysql()
    module = sys.modules.get(_MODULE)
    if module is not None:
        return module
    if importlib.util.find_spec("MySQLdb") is not None:
        return importlib.import_module(_MODULE)
    stand_in: dict[str, Any] = {
        "MySQLdb": pymysql,
        "MySQLdb.constants": pymysql.constants,
        "MySQLdb.constants.CLIENT": CLIENT,
        "MySQLdb.constants.FIELD_TYPE": FIELD_TYPE,
        "MySQLdb.converters": pymysql.converters,
    }
    added = [name for name in stand_in if name not in sys.modules]
    sys.modules.update({name: stand_in[name] for name in added})
    try:
        return importlib.import_module(_MODULE)
    finally:
        for name in added:
            if sys.modules.get(name) is stand_in[name]:
                del sys.modules[name]


def django_conversions(driver: str = "pymysql") -> dict[Any, Any]:
    """The converters of *driver* with Django's decoder for TIME columns: for mysqlclient,
    Django's own ``django_conversions``; for PyMySQL, the same built from PyMySQL's (what Django
    gets on PyMySQL through install_as_MySQLdb())."""
    if driver == "mysqlclient":
        return dict(django_mysql_base().django_conversions)  # Django's, from mysqlclient's converters
    from django.db.backends import utils

    return {**pymysql.converters.conversions, FIELD_TYPE.TIME: utils.typecast_time}


def driver_module(driver: str) -> Any:
    """The DB-API module of *driver* (``pymysql``, or ``MySQLdb`` for ``mysqlclient``), whose
    error classes Django maps. ImproperlyConfigured if mysqlclient cannot be used here."""
    if driver != "mysqlclient":
        return pymysql
    try:
        from ..connectors import mysqlclient  # noqa: F401 - refuses a MySQLdb that is not mysqlclient
    except ImportError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{ENGINE_DRIVER}: {exc} (pip install 'gunicorn-pool[mysqlclient]')") from None
    import MySQLdb

    return MySQLdb


ENGINE_DRIVER = "gunicorn_pool.django.mysql with driver mysqlclient"
