"""One gunicorn_pool ``ConnectionPool`` per Django alias, per process: built from ``DATABASES``.

The backends (:mod:`gunicorn_pool.django.mysql.base`,
:mod:`gunicorn_pool.django.postgresql.base`) ask :func:`target` on every
Django ``connect()``; the first call for an alias builds its
:class:`PoolTarget` from the alias's settings, later calls return it (a tuple
compare and a dict compare). Settings changed since (Django's test runner
renames ``NAME`` to the test database) build a new pool and close the old
one; connections the old one lent go back to it and are closed there.

How ``DATABASES[alias]`` becomes a :class:`~gunicorn_pool.config.DatabaseConfig`
(the same validation as :class:`~gunicorn_pool.DatabasePool`):

- ``HOST`` (a path starting with ``/`` is a unix socket), ``PORT``, ``USER``,
  ``PASSWORD``, ``NAME``, ``AUTOCOMMIT``: the connection keys;
- ``OPTIONS["pool"]`` (``True`` or a dict): the pool keys (``min_size``,
  ``max_size``, ``timeout``, ``max_waiting``, ``max_lifetime``, ``max_idle``,
  ``check_interval``, ``leak_timeout``, ``reset_session``, ``strict``, ...)
  and the connection-tuning keys (``connect_timeout``, ``read_timeout``,
  ``session``, ``ssl_*``...); the keys ``DATABASES`` already has are refused;
- the other ``OPTIONS`` Django's MySQL backend passes to the driver:
  ``isolation_level`` (default ``read committed``, as Django), ``init_command``,
  ``charset``, ``sql_mode``, ``ssl`` (``ca``, ``cert``, ``key``,
  ``check_hostname``), the timeouts, ``unix_socket`` and a few PyMySQL
  arguments that change no session state; anything else is refused by name;
- ``CONN_HEALTH_CHECKS=True``: ``check_interval=0`` (a ping before every
  checkout) unless ``OPTIONS["pool"]`` sets it;
- ``CONN_MAX_AGE`` other than 0: refused, as Django's PostgreSQL pool does;
- ``OPTIONS["pool"]["driver"]``: ``pymysql`` (the default) or ``mysqlclient``
  (Django's own driver; refused by gevent workers, whose hub it would block).

The isolation level is one of the pool's ``session`` statements: it is set
when a connection opens and again after a session reset, never per request.

In a booted sync worker (:func:`sticky`) Django keeps the connection across
requests, as ``CONN_MAX_AGE=None`` would, while it is clean: see
:meth:`PooledWrapper.close_if_unusable_or_obsolete`.

A PostgreSQL alias (``ENGINE: "gunicorn_pool.django.postgresql"``, on the
driver Django chose: psycopg 3, or psycopg2 where psycopg 3 is not installed)
follows the same rules with Django's PostgreSQL OPTIONS (:func:`pg_config_for`):
the isolation level, ``assume_role`` and the connection's time zone are
session statements; ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
``application_name``, ``options``, ``target_session_attrs``,
``connect_timeout`` become config keys; a few more libpq keywords
(``keepalives*``, ``tcp_user_timeout``, ``gssencmode``...) pass through;
``server_side_binding`` and ``prepare_threshold`` apply on psycopg 3.

:class:`PooledWrapper` is what both backends' ``DatabaseWrapper`` share: close is a return, a
connection taken before a fork is forgotten in the child, and a sync worker's connection is kept
across requests while it is clean.

Sizes: explicit ``min_size``/``max_size`` win. Otherwise the worker's profile
sets them once :class:`~gunicorn_pool.django.service.DjangoPools` has booted
in this process (1/1 sync, 1/threads gthread, 1/10 gevent); anywhere else
(``manage.py``, ``runserver``, the test runner, a stock worker without the
hooks) the pool opens on demand up to 10 connections.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from pymysql.constants import CLIENT
from pymysql.converters import escape_string

from .. import base
from .._concurrency import fork_generation
from ..config import DatabaseConfig, _shown, parse_config
from ..connectors import Connector, connector_class
from ..core import LEASE_SINK
from ..errors import ConfigError, LeaseError, PoolClosed, PoolError
from ..pool import ConnectionPool
from ..service import fit
from ._driver import django_conversions, driver_module
from .errors import as_django

__all__ = [
    "ENGINE", "PG_ENGINE", "PoolTarget", "PooledWrapper", "close_all", "config_for", "driver_of", "managed",
    "pg_config_for", "pg_driver", "sticky", "targets", "target",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

#: The ENGINE value of the pooled MySQL backend.
ENGINE = "gunicorn_pool.django.mysql"
#: The ENGINE value of the pooled PostgreSQL backend.
PG_ENGINE = "gunicorn_pool.django.postgresql"
#: Sizes of a pool built outside a booted worker (no worker profile to size it by).
UNMANAGED = base.WorkerProfile(kind="gevent")

#: OPTIONS["pool"] keys that DATABASES already sets, with where to set them.
_FROM_DATABASES = {
    "adapter": "ENGINE", "host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD",
    "password_env": "PASSWORD", "password_file": "PASSWORD", "pass": "PASSWORD", "passwd": "PASSWORD",
    "database": "NAME", "db": "NAME", "name": "NAME", "dbname": "NAME", "autocommit": "AUTOCOMMIT",
    "charset": "OPTIONS']['charset", "init_command": "OPTIONS']['init_command",
}  # fmt: skip
#: Django OPTIONS that become config keys.
_AS_CONFIG = {"init_command": "init_command", "charset": "charset", "connect_timeout": "connect_timeout",
              "read_timeout": "read_timeout", "write_timeout": "write_timeout"}  # fmt: skip
#: Django OPTIONS passed to the driver as they are, by driver: connection-level, no session state a
#: reset would undo.
_PASS_THROUGH = {
    "pymysql": ("unix_socket", "local_infile", "max_allowed_packet", "bind_address", "program_name",
                "server_public_key", "auth_plugin_map", "binary_prefix", "client_flag"),
    "mysqlclient": ("unix_socket", "local_infile", "local_infile_dir", "binary_prefix", "client_flag", "compress",
                    "auth_plugin", "server_public_key_path"),
}  # fmt: skip
#: Django OPTIONS refused, and why.
_REFUSED = {
    "autocommit": "set DATABASES[...]['AUTOCOMMIT'] instead",
    "read_default_file": "put the settings in DATABASES, where the pool can check them and mask the password",
    "read_default_group": "put the settings in DATABASES, where the pool can check them and mask the password",
    "conv": "the backend sets Django's converters",
    "cursorclass": "Django needs the driver's default cursor",
    "use_unicode": "Django needs text as str",
    "user": "set DATABASES[...]['USER']", "passwd": "set DATABASES[...]['PASSWORD']",
    "password": "set DATABASES[...]['PASSWORD']", "db": "set DATABASES[...]['NAME']",
    "database": "set DATABASES[...]['NAME']", "host": "set DATABASES[...]['HOST']",
    "port": "set DATABASES[...]['PORT']",
}  # fmt: skip
_SSL_KEYS = {"ca": "ssl_ca", "cert": "ssl_cert", "key": "ssl_key"}
_ISOLATION_LEVELS = ("read uncommitted", "read committed", "repeatable read", "serializable")


class PoolTarget:
    """Where one alias's connections come from in this process: its pool, or (for Django's
    no-database connections, ``NAME=None``) a plain connector whose connections are closed
    on ``close()``. *family*: ``mysql`` or ``postgresql``."""

    __slots__ = ("alias", "key", "options", "config", "connector", "pool", "isolation_level", "server_data", "family")

    def __init__(self, alias: str, key: tuple[Any, ...], options: Any, config: DatabaseConfig,
                 connector: Connector, pool: Optional[ConnectionPool], isolation_level: Any,
                 family: str = "mysql") -> None:  # fmt: skip
        self.alias = alias
        self.key = key
        self.options = options  # a deep copy of OPTIONS, compared on every connect
        self.config = config
        self.connector = connector
        self.pool = pool
        self.isolation_level = isolation_level
        self.server_data: Optional[dict[str, Any]] = None  # Django's mysql_server_data, read once per pool
        self.family = family

    def __repr__(self) -> str:
        return f"<PoolTarget {self.alias!r} {self.config.dsn} {'pool' if self.pool is not None else 'direct'}>"


_lock = threading.Lock()  # builds only; never held across I/O
_targets: dict[str, PoolTarget] = {}
_state: dict[str, Optional[int]] = {"managed": None, "closed": None}  # pids: booted in, closed in


def _key(settings_dict: Mapping[str, Any]) -> tuple[Any, ...]:
    sd = settings_dict
    return (sd["NAME"], sd["USER"], sd["PASSWORD"], sd["HOST"], sd["PORT"], sd["AUTOCOMMIT"], sd["CONN_MAX_AGE"],
            sd["CONN_HEALTH_CHECKS"])  # fmt: skip


def target(alias: str, settings_dict: Mapping[str, Any], extra: tuple[Any, ...] = (),
           family: str = "mysql") -> PoolTarget:  # fmt: skip
    """The pool of *alias* for these settings (built on first use); the hot path of every connect.
    *extra*: what else the backend's connections depend on (PostgreSQL: the time zone, see
    :func:`pg_config_for`); *family*: ``mysql`` or ``postgresql``."""
    found = _targets.get(alias)
    if (
        found is not None
        and found.key == _key(settings_dict) + extra
        and settings_dict["OPTIONS"] == found.options
        and not found.pool.closed  # type: ignore[union-attr]  # pooled targets only in _targets
    ):
        return found
    return _build(alias, settings_dict, extra, family)


def direct(alias: str, settings_dict: Mapping[str, Any], extra: tuple[Any, ...] = (),
           family: str = "mysql") -> PoolTarget:  # fmt: skip
    """A target without a pool, for Django's connections to no database (``NAME=None``)."""
    config, connector, isolation = _prepare(alias, settings_dict, extra, family)
    connector.query_bound = base.current_profile().query_bound()
    return PoolTarget(alias, _key(settings_dict) + extra, settings_dict["OPTIONS"], config, connector, None,
                      isolation, family)  # fmt: skip


def _prepare(alias: str, settings_dict: Mapping[str, Any], extra: tuple[Any, ...],
             family: str) -> tuple[DatabaseConfig, Connector, Any]:  # fmt: skip
    """``(config, connector, isolation level)`` of *alias* (ImproperlyConfigured names the key)."""
    if family == "postgresql":
        return _pg_prepare(alias, settings_dict, extra)
    config, driver_args, isolation = config_for(alias, settings_dict)
    return config, _connector(config, driver_args), isolation


def _build(alias: str, settings_dict: Mapping[str, Any], extra: tuple[Any, ...], family: str) -> PoolTarget:
    if _state["closed"] == os.getpid():
        raise PoolClosed(f"the Django pools of this process are closed: no connection for {alias!r}")
    config, connector, isolation = _prepare(alias, settings_dict, extra, family)
    key, options = _key(settings_dict) + extra, copy.deepcopy(settings_dict["OPTIONS"])
    old: Optional[PoolTarget] = None
    with _lock:
        found = _targets.get(alias)
        if found is not None and found.key == key and found.options == options and not found.pool.closed:  # type: ignore[union-attr]
            return found  # built by another thread meanwhile
        pool = ConnectionPool(connector, name=alias, options=config)
        fit(pool, config, base.current_profile() if managed() else UNMANAGED)
        built = PoolTarget(alias, key, options, config, connector, pool, isolation, family)
        old, _targets[alias] = found, built
    if old is not None and old.pool is not None:
        old.pool.close()  # its lent connections are closed when they come back
        logger.info("pool %s (%s): DATABASES changed, new pool %s", alias, old.config.dsn, config.dsn)
    return built


def _connector(config: DatabaseConfig, driver_args: dict[str, Any]) -> Connector:
    """The connector of *config*'s driver, with Django's driver arguments."""
    connector: Connector = connector_class(config.adapter, config.driver)(config, driver_args=driver_args)
    return connector


def driver_of(settings_dict: Mapping[str, Any]) -> str:
    """The driver an alias's settings name (``OPTIONS["pool"]["driver"]``; default ``pymysql``),
    read without validating the rest (:func:`config_for` does)."""
    pool = (settings_dict.get("OPTIONS") or {}).get("pool")
    driver = pool.get("driver") if isinstance(pool, Mapping) else None
    return "mysqlclient" if driver == "mysqlclient" else "pymysql"


def sticky() -> bool:
    """True in a booted sync worker: one request at a time on one thread, so Django keeps its
    connection across requests while it is clean, as with ``CONN_MAX_AGE=None``. gthread and
    gevent workers keep one lease per request (their connections are shared by more requests
    than threads)."""
    return managed() and base.current_profile().kind == "sync"


def targets() -> dict[str, PoolTarget]:
    """The pooled targets built in this process, by alias (a snapshot)."""
    return dict(_targets)


def managed() -> bool:
    """True once the worker booted the Django pools in this process (sizes follow its profile)."""
    return _state["managed"] == os.getpid()


def set_managed(on: bool) -> None:
    """Called by the service: its init_pool() (on) or close_pool() (off: later use raises PoolClosed)."""
    pid = os.getpid()
    _state.update(managed=pid, closed=None) if on else _state.update(managed=None, closed=pid)


def close_all() -> None:
    """Close every pool of this process and forget it."""
    with _lock:
        built = list(_targets.values())
        _targets.clear()
    for found in built:
        if found.pool is not None:
            found.pool.close()


def _common(alias: str, sd: Mapping[str, Any], engine: str, adapter: str) -> tuple[str, dict[str, Any], Any,
                                                                                    dict[str, Any]]:  # fmt: skip
    """What both backends read the same way: ``(where, OPTIONS without "pool", OPTIONS["pool"],
    the config's connection keys)``; CONN_MAX_AGE must be 0."""
    where = f"DATABASES[{alias!r}]"
    max_age = sd.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"{where}: Pooling doesn't support persistent connections: {engine} gives each connection back to"
            f" its pool when Django closes it (at the end of each request); set CONN_MAX_AGE to 0, not {max_age!r}"
        )
    options = dict(sd.get("OPTIONS") or {})
    pool_options = options.pop("pool", True)
    raw: dict[str, Any] = {"adapter": adapter, "autocommit": bool(sd.get("AUTOCOMMIT", True)), "owner_check": False}
    for key, name in (("HOST", "host"), ("PORT", "port"), ("USER", "user"), ("PASSWORD", "password"),
                      ("NAME", "database")):  # fmt: skip
        if sd.get(key):
            raw[name] = sd[key]
    return where, options, pool_options, raw


def _finish(alias: str, where: str, sd: Mapping[str, Any], raw: dict[str, Any], pool_options: Any,
            session: list[str], driver_key: bool = True) -> DatabaseConfig:  # fmt: skip
    """The config of *raw* plus OPTIONS["pool"] and *session*, checked as DatabasePool checks one."""
    raw.update(_pool_keys(where, pool_options, session, driver_key))
    if sd.get("CONN_HEALTH_CHECKS") and "check_interval" not in raw:
        raw["check_interval"] = 0.0  # Django's health check: every reuse is checked
    try:
        config = parse_config(alias, raw)
    except ConfigError as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None
    return config


def config_for(alias: str, settings_dict: Mapping[str, Any]) -> tuple[DatabaseConfig, dict[str, Any], Optional[str]]:
    """``(config, driver arguments, isolation level)`` for *alias*; ImproperlyConfigured names the key."""
    sd = settings_dict
    where, options, pool_options, raw = _common(alias, sd, ENGINE, "mysql")
    driver = driver_of(sd)
    driver_module(driver)  # ImproperlyConfigured if it cannot be used here
    driver_args: dict[str, Any] = {"conv": django_conversions(driver), "client_flag": CLIENT.FOUND_ROWS}
    host = sd.get("HOST") or ""
    if host.startswith("/"):
        driver_args["unix_socket"] = host
        raw["host"] = "localhost"
    isolation = options.pop("isolation_level", "read committed")
    session: list[str] = []
    if isolation:
        isolation = str(isolation).lower()
        if isolation not in _ISOLATION_LEVELS:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level '{isolation}' specified.\n"
                f"Use one of {', '.join(repr(s) for s in sorted(_ISOLATION_LEVELS))}, or None."
            )
        session.append(f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation.upper()}")
    for key, value in options.items():
        if key in _AS_CONFIG:
            raw[_AS_CONFIG[key]] = value
        elif key == "sql_mode":
            mode = ",".join(value) if isinstance(value, (list, tuple, set)) else str(value)
            session.append(f"SET SESSION sql_mode = '{escape_string(mode)}'")
        elif key == "ssl":
            raw.update(_ssl(where, value))
        elif key == "client_flag":
            driver_args["client_flag"] |= int(value)
        elif key in _PASS_THROUGH[driver]:
            driver_args[key] = value
        else:
            _refuse_option(where, key, ENGINE, _REFUSED, {"pool", "isolation_level", "sql_mode", "ssl", *_AS_CONFIG,
                                                          *_PASS_THROUGH[driver]})  # fmt: skip
    return _finish(alias, where, sd, raw, pool_options, session), driver_args, isolation or None


# -- PostgreSQL -----------------------------------------------------------------------------------

#: Django's PostgreSQL OPTIONS that become config keys.
_PG_AS_CONFIG = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "options",
                 "target_session_attrs", "connect_timeout")  # fmt: skip
#: libpq keywords passed to every connection as they are: connection-level, no session state.
_PG_PASS_THROUGH = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                    "gssencmode", "channel_binding", "krbsrvname", "requirepeer", "sslcrl", "sslcrldir",
                    "sslcompression", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version",
                    "require_auth", "sslcertmode", "sslnegotiation")  # fmt: skip
#: Django PostgreSQL OPTIONS refused, and why.
_PG_REFUSED = {
    "service": "put the settings in DATABASES, where the pool can check them and mask the password",
    "passfile": "set DATABASES[...]['PASSWORD'], where the pool can mask it",
    "sslpassword": "the pool cannot mask it in its messages; use a key file without a passphrase",
    "cursor_factory": "the backend sets Django's", "context": "the backend sets Django's adapters",
    "client_encoding": "Django needs UTF8", "autocommit": "set DATABASES[...]['AUTOCOMMIT'] instead",
    "user": "set DATABASES[...]['USER']", "password": "set DATABASES[...]['PASSWORD']",
    "dbname": "set DATABASES[...]['NAME']", "host": "set DATABASES[...]['HOST']",
    "port": "set DATABASES[...]['PORT']", "hostaddr": "set DATABASES[...]['HOST']",
}  # fmt: skip


def pg_driver() -> str:
    """The driver Django's PostgreSQL backend uses in this process: psycopg 3 when it can be
    imported, else psycopg2 (Django's own rule)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return "psycopg" if is_psycopg3 else "psycopg2"


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def pg_config_for(alias: str, settings_dict: Mapping[str, Any],
                  timezone_name: Optional[str]) -> tuple[DatabaseConfig, dict[str, str], Any, bool]:  # fmt: skip
    """``(config, more libpq keywords, isolation level, server_side_binding)`` of a PostgreSQL
    alias whose connections run in *timezone_name* (Django's ``timezone_name``); ImproperlyConfigured
    names the key. Django's per-connect statements (time zone, ``SET ROLE``, the isolation level)
    are the pool's session statements: run when a connection opens and after a reset."""
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    sd = settings_dict
    driver = pg_driver()
    where, options, pool_options, raw = _common(alias, sd, PG_ENGINE, "postgresql")
    raw["driver"] = driver
    if not sd.get("NAME"):
        raw["database"] = "postgres"  # as Django: connect to the default database
    session: list[str] = []
    libpq: dict[str, str] = {"client_encoding": "UTF8"}
    isolation = None
    if "isolation_level" in options:
        value = options.pop("isolation_level")
        try:
            isolation = IsolationLevel(value)
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {value} specified. Use one of the psycopg.IsolationLevel values."
            ) from None
        session.append(f"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {isolation.name.replace('_', ' ')}")
    role = options.pop("assume_role", None)
    if role:
        session.append('SET ROLE "' + str(role).replace('"', '""') + '"')
    if timezone_name:
        session.append(f"SET TIME ZONE {_literal(timezone_name)}")
    binding = bool(options.pop("server_side_binding", False))
    if driver == "psycopg":
        raw["prepare_threshold"] = options.pop("prepare_threshold", None)  # Django's default: never prepare
    for key, value in options.items():
        if key in _PG_AS_CONFIG:
            raw[key] = value
        elif key in _PG_PASS_THROUGH:
            libpq[key] = str(value)
        else:
            _refuse_option(where, key, PG_ENGINE, _PG_REFUSED, {"pool", "isolation_level", "assume_role",
                           "server_side_binding", "prepare_threshold", *_PG_AS_CONFIG, *_PG_PASS_THROUGH})  # fmt: skip
    return _finish(alias, where, sd, raw, pool_options, session, driver_key=False), libpq, isolation, binding


def _pg_prepare(alias: str, sd: Mapping[str, Any], extra: tuple[Any, ...]) -> tuple[DatabaseConfig, Connector, Any]:
    """A PostgreSQL alias's config and connector on Django's driver; *extra* is ``(timezone_name,
    USE_TZ, timezone)`` of the alias's DatabaseWrapper."""
    timezone_name, use_tz, timezone = extra
    config, libpq, isolation, binding = pg_config_for(alias, sd, timezone_name)
    connector: Connector
    if config.driver == "psycopg2":
        from ..connectors.psycopg2 import Psycopg2Connector

        connector = Psycopg2Connector(config, libpq=libpq)  # Django's cursor on psycopg2 is psycopg2's own
    else:
        from django.db.backends.postgresql.base import Cursor, ServerBindingCursor
        from django.db.backends.postgresql.psycopg_any import get_adapters_template

        from ..connectors.postgresql import PostgreSQLConnector

        connector = PostgreSQLConnector(config, libpq=libpq, cursor_base=ServerBindingCursor if binding else Cursor,
                                        adapters=get_adapters_template(use_tz, timezone))  # fmt: skip
    return config, connector, isolation


# -- what both backends' DatabaseWrapper share ------------------------------------------------------


class PooledWrapper:
    """Mixed into a backend's ``DatabaseWrapper``: ``get_new_connection()`` is a checkout
    (:meth:`_gp_checkout`), ``_close()`` a return; a connection taken before a fork is forgotten
    in the child (a fork hook: no check per query). In a booted sync worker (:func:`sticky`) the
    connection stays lent across requests while it is clean, as with ``CONN_MAX_AGE=None``
    (:meth:`close_if_unusable_or_obsolete`): taken outside any request's scope, checked before
    its first use in a request as a checkout would check it (:meth:`ensure_connection`), given
    back through ``close()`` when a request leaves it unclean."""

    alias: str
    settings_dict: Any
    connection: Any  # the lent connection, or None
    _gp_target: Optional[PoolTarget] = None  # where self.connection came from
    _gp_generation = 0  # fork generation the connection was taken in
    _gp_sticky = False  # kept across requests (a booted sync worker): see close_if_unusable_or_obsolete()
    _gp_parked_at: Optional[float] = None  # a connection kept across requests: clean and unused since then
    if TYPE_CHECKING:  # Django's, and the backend's own
        errors_occurred: bool
        in_atomic_block: bool
        autocommit: bool
        health_check_done: bool

        def get_connection_params(self) -> PoolTarget: ...

        def close(self) -> None: ...

    def _gp_checkout(self, found: PoolTarget) -> Any:
        """A connection of *found*'s pool (a new one for a target without a pool). In a booted
        sync worker the lease is taken outside any request's scope: Django, not the request,
        gives it back."""
        keep = found.pool is not None and sticky()
        try:
            if found.pool is None:
                raw = found.connector.connect()
            elif keep:
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
        self._gp_sticky = keep
        self._gp_parked_at = None
        return raw

    # -- a sync worker's connection, kept across requests ----------------------------------

    def close_if_unusable_or_obsolete(self) -> None:
        """At the start and end of each request (Django's ``close_old_connections``). With one
        connection per request (gthread, gevent, outside a worker): Django's rule, which gives
        it back at the end (``CONN_MAX_AGE=0``). In a booted sync worker it stays lent while it
        is clean: no Django error since, not in an atomic block, autocommit as configured, and
        the connector's check-in test passing (``is_clean()``: no transaction may be open, no
        session change); anything else goes back through ``close()`` (the pool then rolls back,
        resets or drops it) and the next query takes a connection again. A connection kept
        clean is parked: its next use in a request checks it first (:meth:`ensure_connection`)."""
        if not self._gp_sticky:
            super().close_if_unusable_or_obsolete()  # type: ignore[misc]  # Django's
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
        super().ensure_connection()  # type: ignore[misc]  # Django's

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

    def _close(self) -> None:
        raw, found = self.connection, self._gp_target
        if raw is None:
            return
        # Forgotten first: nothing in this wrapper may touch it once it is back in the pool
        # (Django's close() inside an atomic block then refuses a new connection, as for its
        # own PostgreSQL pool, instead of using one lent to someone else).
        self.connection = None
        self._gp_target = None
        self._gp_parked_at = None
        if found is None or found.pool is None:
            with self.wrap_database_errors:  # type: ignore[attr-defined]  # Django's
                found.connector.close(raw) if found is not None else raw.close()
            return
        try:
            # Rolls back an open transaction and resets a changed session; with commit=False a
            # driver error there drops the connection and is not raised, so no error wrapping.
            found.pool.putconn(raw)
        except LeaseError:
            pass  # reclaimed at the end of its request already (the pool logged it)

    def _gp_forget(self) -> None:
        """Drop the reference to a connection of another process: its pool drops the connection
        itself without a word to the server (ConnectionPool's fork adoption)."""
        self.connection = None
        self._gp_target = None
        self._gp_parked_at = None

    def close_pool(self) -> None:
        """Close this alias's pool in this process (as Django's PostgreSQL backend's ``close_pool``)."""
        self.close()
        found = targets().get(self.alias)
        if found is not None and found.pool is not None:
            found.pool.close()

    @property
    def pool(self) -> Any:
        """The alias's :class:`~gunicorn_pool.ConnectionPool` in this process (built on first use)."""
        if self.alias == NO_DB_ALIAS:
            return None
        return self.get_connection_params().pool


def _forget_inherited() -> None:
    """In a forked child: the forking thread's wrappers forget connections taken before the fork
    (the other threads' wrappers do not exist here). Nothing to check per query."""
    from django.db import connections

    try:
        wrappers = connections.all(initialized_only=True)
    except Exception:  # noqa: BLE001 - settings not loaded: no wrapper either
        return
    for wrapper in wrappers:
        if isinstance(wrapper, PooledWrapper) and wrapper.connection is not None:
            wrapper._gp_forget()


os.register_at_fork(after_in_child=_forget_inherited)


def _refuse_option(where: str, key: Any, engine: str, refused: Mapping[str, str], known: set[str]) -> None:
    """Raise ImproperlyConfigured for an OPTIONS key *engine* does not take: why, if it is one of
    *refused*, else the *known* keys."""
    if key in refused:
        raise ImproperlyConfigured(f"{where}['OPTIONS']: {key!r} is not supported by {engine}: {refused[key]}")
    raise ImproperlyConfigured(
        f"{where}['OPTIONS']: unknown option {_option_shown(key)} (known: {', '.join(sorted(known))})"
    )


def _option_shown(key: Any) -> str:
    """An OPTIONS key for an error, masked as DatabasePool masks one: a key that is not a name (a
    secret pasted one line too high, a mistyped URL) is described, never echoed."""
    return _shown(key) if isinstance(key, str) else f"(a {type(key).__name__}, not a name)"


def _pool_keys(where: str, value: Any, session: list[str], driver_key: bool = True) -> dict[str, Any]:
    """OPTIONS["pool"] as config keys, *session* first in its session statements; *driver_key*:
    may it name the driver (MySQL's OPTIONS["pool"]["driver"]; PostgreSQL's is Django's choice)."""
    if value is True or value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}['OPTIONS']['pool'] must be True or a dict, not {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, val in value.items():
        if not isinstance(key, str):
            raise ImproperlyConfigured(f"{where}['OPTIONS']['pool']: keys must be strings")
        if key == "driver" and not driver_key:
            raise ImproperlyConfigured(f"{where}['OPTIONS']['pool']: 'driver' is Django's choice (psycopg 3 when"
                                       " it can be imported, else psycopg2), not the pool's")  # fmt: skip
        if key in _FROM_DATABASES:
            raise ImproperlyConfigured(
                f"{where}['OPTIONS']['pool']: {key!r} comes from the Django settings:"
                f" set {where}['{_FROM_DATABASES[key]}'] instead"
            )
        out[key] = val
    extra = out.pop("session", ())
    out["session"] = session + ([extra] if isinstance(extra, str) else list(extra))
    return out


def _ssl(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}['OPTIONS']['ssl'] must be a dict")
    out: dict[str, Any] = {}
    for key, val in value.items():
        if key in _SSL_KEYS:
            out[_SSL_KEYS[key]] = val
        elif key == "check_hostname":
            out["ssl_verify"] = "identity" if val else out.get("ssl_verify")
        else:
            raise ImproperlyConfigured(
                f"{where}['OPTIONS']['ssl']: unsupported key {_option_shown(key)} (use ca, cert, key, check_hostname,"
                " or the ssl_* keys of OPTIONS['pool'])"
            )
    if out.get("ssl_ca") and out.get("ssl_verify") is None:
        out["ssl_verify"] = True
    return out
