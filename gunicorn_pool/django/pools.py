"""One gunicorn_pool ``ConnectionPool`` per Django alias, per process: built from ``DATABASES``.

The backend (:mod:`gunicorn_pool.django.mysql.base`) asks :func:`target` on
every Django ``connect()``; the first call for an alias builds its
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
:meth:`gunicorn_pool.django.mysql.base.DatabaseWrapper.close_if_unusable_or_obsolete`.

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
from typing import Any, Mapping, Optional

from django.core.exceptions import ImproperlyConfigured
from pymysql.constants import CLIENT
from pymysql.converters import escape_string

from .. import base
from ..config import DatabaseConfig, _shown, parse_config
from ..connectors import Connector, connector_class
from ..errors import ConfigError, PoolClosed
from ..pool import ConnectionPool
from ..service import fit
from ._driver import django_conversions, driver_module

__all__ = ["ENGINE", "PoolTarget", "close_all", "config_for", "driver_of", "managed", "sticky", "targets", "target"]

logger = logging.getLogger("gunicorn_pool")

#: The ENGINE value of the pooled MySQL backend.
ENGINE = "gunicorn_pool.django.mysql"
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
    on ``close()``."""

    __slots__ = ("alias", "key", "options", "config", "connector", "pool", "isolation_level", "server_data")

    def __init__(self, alias: str, key: tuple[Any, ...], options: Any, config: DatabaseConfig,
                 connector: Connector, pool: Optional[ConnectionPool],
                 isolation_level: Optional[str]) -> None:  # fmt: skip
        self.alias = alias
        self.key = key
        self.options = options  # a deep copy of OPTIONS, compared on every connect
        self.config = config
        self.connector = connector
        self.pool = pool
        self.isolation_level = isolation_level
        self.server_data: Optional[dict[str, Any]] = None  # Django's mysql_server_data, read once per pool

    def __repr__(self) -> str:
        return f"<PoolTarget {self.alias!r} {self.config.dsn} {'pool' if self.pool is not None else 'direct'}>"


_lock = threading.Lock()  # builds only; never held across I/O
_targets: dict[str, PoolTarget] = {}
_state: dict[str, Optional[int]] = {"managed": None, "closed": None}  # pids: booted in, closed in


def _key(settings_dict: Mapping[str, Any]) -> tuple[Any, ...]:
    sd = settings_dict
    return (sd["NAME"], sd["USER"], sd["PASSWORD"], sd["HOST"], sd["PORT"], sd["AUTOCOMMIT"], sd["CONN_MAX_AGE"],
            sd["CONN_HEALTH_CHECKS"])  # fmt: skip


def target(alias: str, settings_dict: Mapping[str, Any]) -> PoolTarget:
    """The pool of *alias* for these settings (built on first use); the hot path of every connect."""
    found = _targets.get(alias)
    if (
        found is not None
        and found.key == _key(settings_dict)
        and settings_dict["OPTIONS"] == found.options
        and not found.pool.closed  # type: ignore[union-attr]  # pooled targets only in _targets
    ):
        return found
    return _build(alias, settings_dict)


def direct(alias: str, settings_dict: Mapping[str, Any]) -> PoolTarget:
    """A target without a pool, for Django's connections to no database (``NAME=None``)."""
    config, driver_args, isolation = config_for(alias, settings_dict)
    connector = _connector(config, driver_args)
    connector.query_bound = base.current_profile().query_bound()
    return PoolTarget(alias, _key(settings_dict), settings_dict["OPTIONS"], config, connector, None, isolation)


def _build(alias: str, settings_dict: Mapping[str, Any]) -> PoolTarget:
    if _state["closed"] == os.getpid():
        raise PoolClosed(f"the Django pools of this process are closed: no connection for {alias!r}")
    config, driver_args, isolation = config_for(alias, settings_dict)
    key, options = _key(settings_dict), copy.deepcopy(settings_dict["OPTIONS"])
    old: Optional[PoolTarget] = None
    with _lock:
        found = _targets.get(alias)
        if found is not None and found.key == key and found.options == options and not found.pool.closed:  # type: ignore[union-attr]
            return found  # built by another thread meanwhile
        connector = _connector(config, driver_args)
        pool = ConnectionPool(connector, name=alias, options=config)
        fit(pool, config, base.current_profile() if managed() else UNMANAGED)
        built = PoolTarget(alias, key, options, config, connector, pool, isolation)
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


def config_for(alias: str, settings_dict: Mapping[str, Any]) -> tuple[DatabaseConfig, dict[str, Any], Optional[str]]:
    """``(config, driver arguments, isolation level)`` for *alias*; ImproperlyConfigured names the key."""
    sd = settings_dict
    where = f"DATABASES[{alias!r}]"
    max_age = sd.get("CONN_MAX_AGE", 0)
    if max_age != 0:
        raise ImproperlyConfigured(
            f"{where}: Pooling doesn't support persistent connections: {ENGINE} gives each connection back to"
            f" its pool when Django closes it (at the end of each request); set CONN_MAX_AGE to 0, not {max_age!r}"
        )
    options = dict(sd.get("OPTIONS") or {})
    pool_options = options.pop("pool", True)
    driver = driver_of(sd)
    driver_module(driver)  # ImproperlyConfigured if it cannot be used here
    raw: dict[str, Any] = {"adapter": "mysql", "autocommit": bool(sd.get("AUTOCOMMIT", True)), "owner_check": False}
    driver_args: dict[str, Any] = {"conv": django_conversions(driver), "client_flag": CLIENT.FOUND_ROWS}
    host = sd.get("HOST") or ""
    if host.startswith("/"):
        driver_args["unix_socket"] = host
        raw["host"] = "localhost"
    elif host:
        raw["host"] = host
    if sd.get("PORT"):
        raw["port"] = sd["PORT"]
    if sd.get("USER"):
        raw["user"] = sd["USER"]
    if sd.get("PASSWORD"):
        raw["password"] = sd["PASSWORD"]
    if sd.get("NAME"):
        raw["database"] = sd["NAME"]
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
        elif key in _REFUSED:
            raise ImproperlyConfigured(f"{where}['OPTIONS']: {key!r} is not supported by {ENGINE}: {_REFUSED[key]}")
        else:
            known = sorted({"pool", "isolation_level", "sql_mode", "ssl", *_AS_CONFIG, *_PASS_THROUGH[driver]})
            raise ImproperlyConfigured(
                f"{where}['OPTIONS']: unknown option {_option_shown(key)} (known: {', '.join(known)})"
            )
    raw.update(_pool_keys(where, pool_options, session))
    if sd.get("CONN_HEALTH_CHECKS") and "check_interval" not in raw:
        raw["check_interval"] = 0.0  # Django's health check: every reuse is checked
    try:
        config = parse_config(alias, raw)
    except ConfigError as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None
    return config, driver_args, isolation or None


def _option_shown(key: Any) -> str:
    """An OPTIONS key for an error, masked as DatabasePool masks one: a key that is not a name (a
    secret pasted one line too high, a mistyped URL) is described, never echoed."""
    return _shown(key) if isinstance(key, str) else f"(a {type(key).__name__}, not a name)"


def _pool_keys(where: str, value: Any, session: list[str]) -> dict[str, Any]:
    if value is True or value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{where}['OPTIONS']['pool'] must be True or a dict, not {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, val in value.items():
        if not isinstance(key, str):
            raise ImproperlyConfigured(f"{where}['OPTIONS']['pool']: keys must be strings")
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
