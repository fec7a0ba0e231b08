"""``ENGINE: "gunicorn_pool.django.mysql"``: Django's MySQL backend on a gunicorn_pool pool.

Everything is Django's MySQL backend (SQL, introspection, schema editor,
features) except where a connection comes from and where it goes:

- ``connect()`` (Django calls it on the first query after the connection was
  closed) takes a connection from the alias's pool (:mod:`..pools`): no TCP
  connect, no handshake, no session setup; :func:`get_new_connection` is a
  checkout.
- ``close()`` (at the end of each request with ``CONN_MAX_AGE=0``, when the
  connection is unusable, or when code calls it) gives it back: the pool rolls
  back a transaction left open and resets a session the request changed
  (``SET``, temporary tables, locks, isolation level, autocommit) before the
  next user gets it.
- In a booted sync worker the connection stays lent across requests while it
  is clean, as with ``CONN_MAX_AGE=None`` (:meth:`..pools.PooledWrapper.close_if_unusable_or_obsolete`):
  taken outside any request's scope, checked before its first use in a request
  as a checkout would check it, given back through ``close()`` when a request
  leaves it unclean.
- The driver is PyMySQL, or mysqlclient with ``OPTIONS["pool"]["driver"]``:
  ``Database`` (whose errors Django maps), the cursor wrapper's error mapping,
  ``_rollback`` and ``is_usable`` follow the alias's driver.
- The isolation level is one of the pool's session statements, so it costs
  nothing per request; ``SQL_AUTO_IS_NULL`` is switched off per connect only
  where the server has it on (as Django does).
- ``mysql_server_data`` (version, sql_mode, ...) is read once per pool, not
  once per ``DatabaseWrapper`` (under gevent Django builds one per greenlet).
- ``is_usable()`` pings without the driver's silent reconnect (a reconnected
  session would lose the pool's session settings and its bookkeeping), bounded by
  the pool's ``check_timeout``.
- A connection taken before a fork (``--preload``) is never used after it: a fork hook makes
  the forking thread's wrappers forget it (no check per query).

Transactions, ``ATOMIC_REQUESTS``, ``autocommit`` and savepoints are Django's
own code on the lent connection. Thread sharing is Django's check
(``validate_thread_sharing``); the pool's own owner check is off.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import pymysql
from django.db import DEFAULT_DB_ALIAS, IntegrityError
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.utils.functional import cached_property

from .. import pools
from .._driver import django_mysql_base, driver_module

__all__ = ["CursorWrapper", "DatabaseWrapper"]

logger = logging.getLogger("gunicorn_pool")
_base: Any = django_mysql_base()


class CursorWrapper(_base.CursorWrapper):  # type: ignore[misc]  # Django is untyped (an Any base)
    """Django's MySQL cursor wrapper, mapping the errors of the alias's driver (PyMySQL's here;
    :func:`cursor_wrapper` makes one for mysqlclient's)."""

    operational_error: Any = pymysql.err.OperationalError

    def execute(self, query: Any, args: Any = None) -> Any:
        try:
            return self.cursor.execute(query, args)
        except self.operational_error as e:
            if e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*tuple(e.args)) from e
            raise

    def executemany(self, query: Any, args: Any) -> Any:
        try:
            return self.cursor.executemany(query, args)
        except self.operational_error as e:
            if e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*tuple(e.args)) from e
            raise


_WRAPPERS: dict[str, type[CursorWrapper]] = {"pymysql": CursorWrapper}


def cursor_wrapper(driver: str) -> type[CursorWrapper]:
    """The :class:`CursorWrapper` mapping *driver*'s errors."""
    found = _WRAPPERS.get(driver)
    if found is None:
        found = _WRAPPERS[driver] = type(
            "CursorWrapper", (CursorWrapper,), {"operational_error": driver_module(driver).OperationalError}
        )
    return found


class DatabaseWrapper(pools.PooledWrapper, _base.DatabaseWrapper):  # type: ignore[misc]
    """Django's MySQL ``DatabaseWrapper`` whose connections are leases of a gunicorn_pool pool
    (``_close`` a return, ``pool``, ``close_pool``, the fork hook: :class:`..pools.PooledWrapper`)."""

    Database: Any = pymysql  # driver errors are mapped from the alias's driver's classes (set per alias)

    def __init__(self, settings_dict: Any, alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        self._gp_driver = pools.driver_of(settings_dict)
        if self._gp_driver != "pymysql":
            try:
                self.Database = driver_module(self._gp_driver)
            except Exception:  # noqa: BLE001 - config_for() raises it again, at connect, with the alias
                pass

    # -- where connections come from and go -------------------------------------------------

    def get_connection_params(self) -> pools.PoolTarget:
        if self.alias == NO_DB_ALIAS or not self.settings_dict["NAME"]:
            found = pools.direct(self.alias, self.settings_dict)
        else:
            found = pools.target(self.alias, self.settings_dict)
        self.isolation_level = found.isolation_level
        return found

    def get_new_connection(self, conn_params: pools.PoolTarget) -> Any:
        return self._gp_checkout(conn_params)

    def init_connection_state(self) -> None:
        BaseDatabaseWrapper.init_connection_state(self)  # the server version check, once per alias
        # The isolation level is a session statement of the pool: already set.
        if self.features.is_sql_auto_is_null_enabled:
            with self.cursor() as cursor:
                cursor.execute("SET SQL_AUTO_IS_NULL = 0")

    # -- the alias's driver -------------------------------------------------------------------

    def create_cursor(self, name: Optional[str] = None) -> CursorWrapper:
        return cursor_wrapper(self._gp_driver)(self.connection.cursor())

    def _rollback(self) -> None:
        try:
            BaseDatabaseWrapper._rollback(self)
        except self.Database.NotSupportedError:
            pass

    def is_usable(self) -> bool:
        raw, found = self.connection, self._gp_target
        if raw is None or found is None:  # given back already (Django's tests call _close() directly)
            return False
        try:
            found.connector.ping(raw, found.config.check_timeout)  # never reconnects
        except self.Database.Error:
            return False
        return True

    @cached_property  # type: ignore[untyped-decorator]  # Django's: no lock held across the query
    def mysql_server_data(self) -> dict[str, Any]:
        if self.alias == NO_DB_ALIAS or not self.settings_dict["NAME"]:
            return _base.DatabaseWrapper.mysql_server_data.func(self)  # type: ignore[no-any-return]
        found = pools.target(self.alias, self.settings_dict)
        if found.server_data is None:
            found.server_data = _base.DatabaseWrapper.mysql_server_data.func(self)
        return found.server_data
