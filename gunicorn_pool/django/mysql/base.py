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
  is clean, as with ``CONN_MAX_AGE=None`` (:meth:`DatabaseWrapper.close_if_unusable_or_obsolete`):
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
import time
from typing import Any, Optional

import pymysql
from django.db import DEFAULT_DB_ALIAS, IntegrityError
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.utils.functional import cached_property

from ..._concurrency import fork_generation
from ...core import LEASE_SINK
from ...errors import PoolError
from .. import pools
from .._driver import django_mysql_base, driver_module
from ..errors import as_django

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
    _gp_sticky = False  # kept across requests (a booted sync worker): see close_if_unusable_or_obsolete()

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
        found = conn_params
        sticky = found.pool is not None and pools.sticky()
        try:
            if found.pool is None:
                raw = found.connector.connect()
            elif sticky:
                # Outside any request's scope: Django, not the request, gives this lease back.
                token = LEASE_SINK.set(None)
                try:
                    raw = found.pool.getconn()
                finally:
                    LEASE_SINK.reset(token)
            else:
                raw = found.pool.getconn()
        except PoolError as exc:
            raise as_django(exc) from None
        self._gp_target = found
        self._gp_generation = fork_generation()
        self._gp_sticky = sticky
        self._gp_parked_at = None
        return raw

    # -- a sync worker's connection, kept across requests ----------------------------------

    def close_if_unusable_or_obsolete(self) -> None:
        """At the start and end of each request (Django's ``close_old_connections``). With one
        connection per request (gthread, gevent, outside a worker): Django's rule, which gives
        it back at the end (``CONN_MAX_AGE=0``). In a booted sync worker it stays lent while it
        is clean: no Django error since, not in an atomic block, autocommit as configured, and
        the connector's check-in test passing (:meth:`is_clean` of the MySQL connectors: no
        transaction may be open, no session change); anything else goes back through
        ``close()`` (the pool then rolls back, resets or drops it) and the next query takes a
        connection again. A connection kept clean is parked: its next use in a request checks
        it first (:meth:`ensure_connection`)."""
        if not self._gp_sticky:
            super().close_if_unusable_or_obsolete()
            return
        raw, found = self.connection, self._gp_target
        if raw is None or found is None or found.pool is None:
            return
        self.health_check_done = False
        if self._gp_parked_at is not None:
            return  # unused since it was parked: clean still
        if (
            self.errors_occurred
            or self.in_atomic_block
            or self.autocommit != self.settings_dict["AUTOCOMMIT"]
            or not found.connector.is_clean(raw)
        ):
            self.close()
            return
        now = time.monotonic()
        slot = found.pool.lent_slot(raw)
        if slot is not None:  # the lease's usage counts the time in requests, not the idle time
            slot.usage += now - slot.lent_at
            slot.lent_at = now
        self._gp_parked_at = now

    def ensure_connection(self) -> None:
        """Django's, after checking a parked connection as a checkout would (see
        :meth:`close_if_unusable_or_obsolete`): past its ``max_lifetime`` it is given back (and
        closed); idle ``probe_after`` or more, its socket is polled (no round trip); idle longer
        than ``check_interval``, or if the poll says the server may have closed it, it is pinged
        within ``check_timeout``; a dead one is dropped. Django then takes another."""
        if self._gp_parked_at is not None:
            self._gp_unpark()
        super().ensure_connection()

    def _gp_unpark(self) -> None:
        raw, found, parked = self.connection, self._gp_target, self._gp_parked_at
        self._gp_parked_at = None
        if raw is None or found is None or found.pool is None or parked is None:
            return
        pool = found.pool
        slot = pool.lent_slot(raw)
        now = time.monotonic()
        if slot is None or now >= slot.expires:
            self.close()  # past its lifetime: the pool closes it on return
            return
        slot.lent_at = now
        idle = now - parked
        options = pool.options
        probe_after = options.probe_after
        if idle > options.check_interval or (
            probe_after is not None and idle >= probe_after and slot.probe is not None and slot.probe()
        ):
            try:
                found.connector.ping(raw, options.check_timeout)
            except Exception as exc:  # noqa: BLE001 - dead: dropped, Django connects again
                logger.warning("pool %s (%s): dropping dead connection: %s", pool.name, pool.dsn,
                               found.connector.describe_error(exc))  # fmt: skip
                self.connection = self._gp_target = None
                pool.putconn(raw, discard=True)

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
