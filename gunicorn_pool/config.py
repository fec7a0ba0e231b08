"""Database pool configuration: dicts and URLs in, validated objects out.

A pool is configured per *name*, as a dict or as a URL string::

    from gunicorn_pool import DatabasePool

    pool = DatabasePool({
        "default": "mysql://app:secret@127.0.0.1:3306/shop?charset=utf8mb4",
        "reports": {
            "adapter": "mysql", "host": "10.0.0.5", "user": "ro",
            "password_env": "REPORTS_DB_PASSWORD", "database": "reports",
            "max_size": 4, "timeout": 2.0,
        },
        "local": "sqlite:///var/app.db",
    })

Accepted keys (a URL's query string takes the same keys)::

    adapter          "mysql" (default) or "sqlite"
    host, port       server address (127.0.0.1, 3306)
    user             login user
    password         also spelled "pass" (the seed's spelling)
    password_env     read the password from this environment variable
    password_file    read the password from this file (trailing newline cut)
    database         also spelled "name" (the seed's spelling); for sqlite the
                     file path or ":memory:"
    charset          utf8mb4
    prefix           table prefix, kept for the application (pool.prefix)
    connect_timeout  seconds for TCP connect *and* the MySQL handshake (5)
    read_timeout     seconds a query may wait for the server (None: no limit)
    write_timeout    seconds a write may block (None: no limit)
    init_command     SQL run on every new connection
    session          list of SQL statements run on every new connection
    autocommit       True (default): see "Transactions" in DatabasePool
    ssl_ca, ssl_cert, ssl_key, ssl_verify, ssl_disabled   TLS (see below)
    min_size         connections opened by init_pool() (worker default)
    max_size         connections the pool may hold at once (worker default)
    timeout          seconds to wait for a free connection (10)
    max_waiting      callers allowed to wait at once; 0 = no limit (0)
    max_lifetime     seconds before a connection is replaced, -10% jitter (3600)
    max_idle         seconds an idle connection above min_size is kept (600)
    check_interval   skip the checkout ping if used within this many s (0.5)
    check_timeout    seconds the checkout ping may take (2)
    probe_after      poll the socket (no round trip) on checkout if idle this
                     many s (0.0001); none: no poll, only the check_interval ping
    reconnect_backoff_max   cap of the reconnect backoff, seconds (2)
    strict           fail the server's *first* start if warm-up fails (False)

Unknown keys raise :class:`~gunicorn_pool.errors.ConfigError` naming the key
and the pool. Passwords never appear in ``repr()``, ``dsn`` or any message:
see :func:`mask_dsn`.

TLS: with no ``ssl_*`` key, MySQL connections use TLS when the server offers
it (PyMySQL's "preferred" mode) without verifying the certificate; with
``ssl_ca`` the certificate is verified, with ``ssl_verify="identity"`` the
host name too; ``ssl_disabled=True`` turns TLS off. The TLS context is built
once per pool, not on every connect.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = ["DatabaseConfig", "mask_dsn", "parse_config"]

ADAPTERS = ("mysql", "sqlite")
_ALIASES = {"name": "database", "pass": "password", "db": "database", "passwd": "password"}
_SCHEMES = {"mysql": "mysql", "mysql+pymysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
_MASK = "***"

ConfigValue = Union[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """One named pool's validated settings. Build it with :func:`parse_config`."""

    pool_name: str
    adapter: str = "mysql"
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = dataclasses.field(default="", repr=False)
    database: Optional[str] = None
    charset: str = "utf8mb4"
    prefix: str = ""
    connect_timeout: float = 5.0
    read_timeout: Optional[float] = None
    write_timeout: Optional[float] = None
    init_command: Optional[str] = None
    session: tuple[str, ...] = ()
    autocommit: bool = True
    ssl_ca: Optional[str] = None
    ssl_cert: Optional[str] = None
    ssl_key: Optional[str] = None
    ssl_verify: Union[bool, str, None] = None
    ssl_disabled: bool = False
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    timeout: float = 10.0
    max_waiting: int = 0
    max_lifetime: float = 3600.0
    max_idle: float = 600.0
    check_interval: float = 0.5
    check_timeout: float = 2.0
    probe_after: Optional[float] = 0.0001
    reconnect_backoff_max: float = 2.0
    strict: bool = False

    @property
    def address(self) -> str:
        """Where the pool connects: ``host:port`` or the SQLite path."""
        if self.adapter == "sqlite":
            return str(self.database)
        return f"{self.host}:{self.port}"

    @property
    def dsn(self) -> str:
        """The connection URL with the password masked (safe to log)."""
        if self.adapter == "sqlite":
            return f"sqlite:///{self.database}"
        auth = self.user + (f":{_MASK}" if self.password else "")
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database or ''}"

    def __repr__(self) -> str:
        return f"<DatabaseConfig {self.pool_name!r} {self.dsn} min={self.min_size} max={self.max_size}>"


_FIELDS = {f.name: f for f in dataclasses.fields(DatabaseConfig) if f.name != "pool_name"}
_SOURCES = ("password_env", "password_file")
_FLOATS = {n for n, f in _FIELDS.items() if "float" in str(f.type)}
_INTS = {"port", "min_size", "max_size", "max_waiting"}
_BOOLS = {"autocommit", "ssl_disabled", "strict"}


def mask_dsn(text: str, password: str = "") -> str:
    """Return *text* with a URL's password, and *password* itself, masked.

    >>> mask_dsn("mysql://app:s3cret@db:3306/x")
    'mysql://app:***@db:3306/x'
    """
    parts = urlsplit(text) if "://" in text else None
    if parts is not None and parts.password:
        # host[:port] as written: parts.port would raise on a bad port, the error being reported
        netloc = f"{parts.username or ''}:{_MASK}@{parts.netloc.rpartition('@')[2]}"
        text = parts._replace(netloc=netloc).geturl()
    if password:
        text = text.replace(password, _MASK)
    return text


def parse_config(pool_name: str, value: ConfigValue) -> DatabaseConfig:
    """Validate one named pool's config (a dict or a URL) into a DatabaseConfig.

    Raises ConfigError naming *pool_name* and the offending key or value.
    """
    if isinstance(value, DatabaseConfig):
        return dataclasses.replace(value, pool_name=pool_name)
    if isinstance(value, str):
        raw = _from_url(pool_name, value)
    elif isinstance(value, Mapping):
        raw = dict(value)
    else:
        raise ConfigError(f"pool {pool_name!r}: config must be a dict or a URL string, not {type(value).__name__}")
    return DatabaseConfig(pool_name=pool_name, **_normalise(pool_name, raw))


def _from_url(pool_name: str, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    adapter = _SCHEMES.get(parts.scheme.lower())
    if adapter is None:
        raise ConfigError(
            f"pool {pool_name!r}: unsupported URL scheme {parts.scheme!r} in {mask_dsn(url)!r}"
            f" (use one of: {', '.join(sorted(_SCHEMES))})"
        )
    raw: dict[str, Any] = {"adapter": adapter}
    if adapter == "sqlite":
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:
        path = url.split("://", 1)[1]
        path = path.split("?", 1)[0]
        raw["database"] = path[1:] if path.startswith("/") else (path or ":memory:")
    else:
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"pool {pool_name!r}: bad port in {mask_dsn(url)!r}") from exc
        if parts.hostname:
            raw["host"] = parts.hostname
        if port:
            raw["port"] = port
        if parts.username:
            raw["user"] = unquote(parts.username)
        if parts.password:
            raw["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            raw["database"] = unquote(parts.path.strip("/"))
    for key, val in parse_qsl(parts.query, keep_blank_values=True):
        if key == "session":
            raw.setdefault("session", []).append(val)
        else:
            raw[key] = val
    return raw


def _normalise(pool_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in raw.items():
        name = _ALIASES.get(key, key)
        if name in _SOURCES:
            continue
        if name not in _FIELDS:
            raise ConfigError(
                f"pool {pool_name!r}: unknown option {key!r}"
                f" (known: {', '.join(sorted([*_FIELDS, *_SOURCES, *_ALIASES]))})"
            )
        if name in out:
            raise ConfigError(f"pool {pool_name!r}: option {name!r} given twice (as {key!r} and an alias)")
        out[name] = _coerce(pool_name, name, val)
    password = _password_from_source(pool_name, raw)
    if password is not None:
        if "password" in out:
            raise ConfigError(f"pool {pool_name!r}: give the password once (password, password_env or password_file)")
        out["password"] = password
    adapter = out.get("adapter", "mysql")
    if adapter not in ADAPTERS:
        raise ConfigError(f"pool {pool_name!r}: unknown adapter {adapter!r} (use one of: {', '.join(ADAPTERS)})")
    if adapter == "sqlite" and not out.get("database"):
        raise ConfigError(f"pool {pool_name!r}: sqlite needs a database path (or ':memory:')")
    _check_sizes(pool_name, out)
    return out


def _coerce(pool_name: str, name: str, val: Any) -> Any:
    try:
        if val is None:
            return None
        if name in _BOOLS:
            return val if isinstance(val, bool) else str(val).lower() in ("1", "true", "yes", "on")
        if name == "ssl_verify" and isinstance(val, str) and val.lower() != "identity":
            return val.lower() in ("1", "true", "yes", "on")
        if name in _INTS:
            return int(val)
        if name in _FLOATS:
            return None if val in ("", "none", "None") else float(val)
        if name == "session":
            return tuple([val] if isinstance(val, str) else val)
        if name in ("adapter",):
            return str(val).lower()
        return val
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pool {pool_name!r}: bad value for {name!r}: {exc}") from None


def _password_from_source(pool_name: str, raw: Mapping[str, Any]) -> Optional[str]:
    env, path = raw.get("password_env"), raw.get("password_file")
    if env and path:
        raise ConfigError(f"pool {pool_name!r}: give password_env or password_file, not both")
    if env:
        if env not in os.environ:
            raise ConfigError(f"pool {pool_name!r}: password_env names {env!r}, which is not set")
        return os.environ[env]
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"pool {pool_name!r}: cannot read password_file {path!r}: {exc.strerror}") from None
    return None


def _check_sizes(pool_name: str, out: Mapping[str, Any]) -> None:
    lo, hi = out.get("min_size"), out.get("max_size")
    if lo is not None and lo < 0:
        raise ConfigError(f"pool {pool_name!r}: min_size must be >= 0, got {lo}")
    if hi is not None and hi < 1:
        raise ConfigError(f"pool {pool_name!r}: max_size must be >= 1, got {hi}")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"pool {pool_name!r}: min_size ({lo}) is larger than max_size ({hi})")
    probe = out.get("probe_after")
    if probe is not None and probe < 0:
        raise ConfigError(f"pool {pool_name!r}: probe_after must be >= 0 or none, got {probe}")
    for key in ("timeout", "connect_timeout", "check_timeout"):
        val = out.get(key)
        if val is not None and val <= 0:
            raise ConfigError(f"pool {pool_name!r}: {key} must be > 0, got {val}")
