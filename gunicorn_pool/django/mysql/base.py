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
- The isolation level is one of the pool's session statements, so it costs
  nothing per request; ``SQL_AUTO_IS_NULL`` is switched off per connect only
  where the server has it on (as Django does).
- ``mysql_server_data`` (version, sql_mode, ...) is read once per pool, not
  once per ``DatabaseWrapper`` (under gevent Django builds one per greenlet).
- ``is_usable()`` pings without PyMySQL's silent reconnect (a reconnected
  session would lose the pool's session settings and its bookkeeping).
- A connection taken before a fork (``--preload``) is never used after it: a fork hook makes
  the forking thread's wrappers forget it (no check per query).

Transactions, ``ATOMIC_REQUESTS``, ``autocommit`` and savepoints are Django's
own code on the lent connection. Thread sharing is Django's check
(``validate_thread_sharing``); the pool's own owner check is off.
"""

from __future__ import annotations

from typing import Any, Optional

import pymysql
from django.db import IntegrityError
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.utils.functional import cached_property

from .. import pools
from .._driver import django_mysql_base

__all__ = ["CursorWrapper", "DatabaseWrapper"]

_base: Any = django_mysql_base()


class CursorWrapper(_base.CursorWrapper):  # type: ignore[misc]  # Django is untyped (an Any base)
    """Django's MySQL cursor wrapper, mapping PyMySQL's errors (not mysqlclient's)."""

    def execute(self, query: Any, args: Any = None) -> Any:
        try:
            return self.cursor.execute(query, args)
        except pymysql.err.OperationalError as e:
            if e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*tuple(e.args)) from e
            raise

    def executemany(self, query: Any, args: Any) -> Any:
        try:
            return self.cursor.executemany(query, args)
        except pymysql.err.OperationalError as e:
            if e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*tuple(e.args)) from e
            raise


class DatabaseWrapper(pools.PooledWrapper, _base.DatabaseWrapper):  # type: ignore[misc]
    """Django's MySQL ``DatabaseWrapper`` whose connections are leases of a gunicorn_pool pool
    (``connect`` a checkout, ``_close`` a return, ``pool``, ``close_pool``: :class:`..pools.PooledWrapper`)."""

    Database = pymysql  # driver errors are mapped from PyMySQL's classes

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

    # -- PyMySQL, not mysqlclient -----------------------------------------------------------

    def create_cursor(self, name: Optional[str] = None) -> CursorWrapper:
        return CursorWrapper(self.connection.cursor())

    def _rollback(self) -> None:
        try:
            BaseDatabaseWrapper._rollback(self)
        except pymysql.err.NotSupportedError:
            pass

    def is_usable(self) -> bool:
        if self.connection is None:  # given back already (Django's tests call _close() directly)
            return False
        try:
            self.connection.ping(reconnect=False)
        except pymysql.Error:
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
