"""Database pool configuration: dicts and URLs in, validated objects out.

A pool is configured per *name*, as a dict or as a URL string::

    from gunicorn_pool import DatabasePool

    pool = DatabasePool({
        "default": "mysql://app:secret@127.0.0.1:3306/shop?charset=utf8mb4",
        "orders": "postgresql://app@10.0.0.7/orders?password_env=ORDERS_PW&max_size=4",
        "reports": {
            "adapter": "mysql", "host": "10.0.0.5", "user": "ro",
            "password_env": "REPORTS_DB_PASSWORD", "database": "reports",
            "max_size": 4, "timeout": 2.0,
        },
        "local": "sqlite:///var/app.db",
    })

Adapters, with the spellings other frameworks use: ``mysql`` (also ``mariadb``;
URL schemes ``mysql://``, ``mysql+pymysql://``, ``mariadb://``, ``mysql+mysqldb://``),
``postgresql`` (also ``postgres``, ``pgsql``; ``postgresql://``,
``postgres://``, ``postgresql+psycopg://``, ``postgresql+psycopg2://``),
``sqlite`` (``sqlite:///path``) and ``dbapi`` (any DB-API driver through a
``creator``). A MySQL pool's ``driver`` is ``pymysql`` (the default) or
``mysqlclient`` (``MySQLdb``), a PostgreSQL pool's ``psycopg`` (3) or
``psycopg2`` (unset: psycopg when it is installed, else psycopg2,
:func:`default_pg_driver`): the key, the URL option ``?driver=`` or the
scheme's ``+pymysql``/``+mysqldb``/``+psycopg``/``+psycopg2`` say which.
:data:`KEYS` lists
every key with its default, its rule and the adapters it applies to; a key
that does not apply to the pool's adapter is refused, like a typo.

Every value is checked for type and range when the config is built: a bad one
raises :class:`~gunicorn_pool.errors.ConfigError` naming the pool and the key.
No error text, ``repr()`` or ``dsn`` ever contains the password, nor any part
of a URL's user name and password: a URL whose password holds an unencoded
``/ ? # [ ] @`` is ambiguous and refused with a hint to percent-encode it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import stat
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import parse_qsl, quote, unquote

from .errors import ConfigError
from .options import PoolOptions, Rule, coerce, rule_of

__all__ = [
    "ADAPTERS", "KEYS", "MYSQL_DRIVERS", "PG_DRIVERS", "DatabaseConfig", "default_pg_driver", "mask_dsn",
    "parse_config",
]  # fmt: skip

_MASK = "***"

ConfigValue = Union[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One database family: its URL schemes, its defaults and its driver."""

    name: str
    schemes: tuple[str, ...]
    spellings: tuple[str, ...]  #: values of the ``adapter`` key that mean this adapter
    port: Optional[int] = None
    user: Optional[str] = None
    server: bool = True  #: has host, port, user and password


#: The adapters, by canonical name.
ADAPTERS = {
    "mysql": Adapter(
        "mysql",
        ("mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql", "mysql+mysqldb", "mariadb+mysqldb"),
        ("mysql", "mariadb"),
        port=3306,
        user="root",
    ),  # fmt: skip
    "postgresql": Adapter(
        "postgresql",
        ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgres+psycopg2", "pgsql"),
        ("postgresql", "postgres", "pgsql"),
        port=5432,
    ),  # fmt: skip
    "sqlite": Adapter("sqlite", ("sqlite",), ("sqlite", "sqlite3"), server=False),
    "dbapi": Adapter("dbapi", ("dbapi",), ("dbapi",), server=False),
}
_SCHEMES = {scheme: a.name for a in ADAPTERS.values() for scheme in a.schemes}
_SPELLINGS = {spelling: a.name for a in ADAPTERS.values() for spelling in a.spellings}
_SERVERS = ("mysql", "postgresql")
_ALL = tuple(ADAPTERS)
_ALIASES = {"name": "database", "pass": "password", "db": "database", "passwd": "password", "dbname": "database",
            "hosts": "host"}  # fmt: skip
_SOURCES = ("password_env", "password_file")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TARGETS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_MYSQL_TARGETS = ("any", "read-write", "read-only")
_BALANCE = ("disable", "random")
#: The MySQL/MariaDB drivers, the default first; and the driver a URL scheme's ``+name`` means.
MYSQL_DRIVERS = ("pymysql", "mysqlclient")
_MYSQL_SCHEME_DRIVERS = {"pymysql": "pymysql", "mysqldb": "mysqlclient"}
#: PyMySQL arguments a mysql config may not give, and why.
_REFUSED = {
    "defer_connect": "the pool opens every connection itself, its handshake bounded by connect_timeout",
    "read_default_file": "put the settings in the config, where the pool can check them and mask the password",
    "read_default_group": "put the settings in the config, where the pool can check them and mask the password",
    "sql_mode": "give it as a session statement (session=SET SESSION sql_mode = '...'): it is applied again"
    " after each session reset",
}
#: Keys of PyMySQL's ``ssl`` dict, and the config key each one becomes.
_SSL_DICT = {"ca": "ssl_ca", "cert": "ssl_cert", "key": "ssl_key"}
#: The PostgreSQL drivers, in the order a pool that names none prefers them.
PG_DRIVERS = ("psycopg", "psycopg2")


def _key(default: Any, rule: Rule, adapters: tuple[str, ...] = _ALL, *, hashed: bool = True) -> Any:
    return dataclasses.field(default=default, hash=None if hashed else False,
                             metadata={"rule": rule, "adapters": adapters})  # fmt: skip


def _text(meaning: str, *, optional: bool = True, secret: bool = False, choices: tuple[str, ...] = ()) -> Rule:
    return Rule(str, optional=optional, secret=secret, choices=choices, meaning=meaning)


@dataclasses.dataclass(frozen=True)
class DatabaseConfig(PoolOptions):
    """One named pool's validated settings: the connection keys plus every
    :class:`~gunicorn_pool.options.PoolOptions` key. Build it with :func:`parse_config`."""

    pool_name: str = dataclasses.field(default="", metadata={"internal": True})
    adapter: str = _key("mysql", _text("the database family", optional=False, choices=_ALL))
    host: Optional[str] = _key(None, _text("server host (127.0.0.1); several: a list, or host:port,host:port"),
                               _SERVERS)  # fmt: skip
    #: Every host to try, in the configured order, each with its port (``host`` and ``port`` are the first).
    hosts: tuple[tuple[str, int], ...] = dataclasses.field(default=(), metadata={"internal": True})
    #: The read replicas of a primary (key ``replicas``), each a whole config of its own.
    replicas: tuple[DatabaseConfig, ...] = dataclasses.field(default=(), metadata={"internal": True})
    #: For a replica: the name of its primary's pool.
    primary: str = dataclasses.field(default="", metadata={"internal": True})
    port: Optional[int] = _key(None, Rule(int, optional=True, low=1, high=65535, meaning="server port"), _SERVERS)
    user: Optional[str] = _key(None, _text("login user"), _SERVERS)
    password: str = dataclasses.field(
        default="", repr=False, metadata={"rule": _text("login password", optional=False, secret=True),
                                          "adapters": _SERVERS},
    )  # fmt: skip
    database: Optional[str] = _key(None, _text("database (schema), or the SQLite file"), ("mysql", "postgresql",
                                                                                           "sqlite"))  # fmt: skip
    connect_timeout: float = _key(5.0, Rule(float, low=0, above=True, high=3600.0,
                                            meaning="seconds for the connect and the handshake"))  # fmt: skip
    init_command: Optional[str] = _key(None, _text("SQL run on every new connection"))
    session: tuple[str, ...] = _key((), Rule(tuple, meaning="SQL statements run on every new connection"))
    autocommit: bool = _key(True, Rule(bool, meaning="autocommit mode for lent connections"))
    prefix: str = _key("", _text("table prefix kept for the application", optional=False))
    # MySQL
    charset: str = _key("utf8mb4", _text("connection character set", optional=False), ("mysql",))
    read_timeout: Optional[float] = _key(None, Rule(float, optional=True, low=0, above=True, high=86400.0,
                                                    meaning="seconds a query may wait for the server"),
                                         ("mysql",))  # fmt: skip
    write_timeout: Optional[float] = _key(None, Rule(float, optional=True, low=0, above=True, high=86400.0,
                                                     meaning="seconds a write may block"), ("mysql",))  # fmt: skip
    ssl_ca: Optional[str] = _key(None, _text("CA file: verify the server certificate"), ("mysql",))
    ssl_cert: Optional[str] = _key(None, _text("client certificate file"), ("mysql",))
    ssl_key: Optional[str] = _key(None, _text("client key file"), ("mysql",))
    ssl_verify: Union[bool, str, None] = _key(None, _text("true, false or identity (also the host name)",
                                                          choices=("true", "false", "identity", "1", "0", "yes",
                                                                   "no", "on", "off")), ("mysql",))  # fmt: skip
    ssl_disabled: bool = _key(False, Rule(bool, meaning="no TLS at all"), ("mysql",))
    # PyMySQL's own arguments (a session reset keeps them: they belong to the connection, not the session)
    cursorclass: Any = _key(None, Rule(object, optional=True, meaning="cursor class of conn.cursor() (the driver's):"
                                                                      " a class, or its dotted name"),
                            ("mysql",))  # fmt: skip
    conv: Any = _key(None, Rule(object, optional=True, meaning="PyMySQL conversions (field type -> decoder, Python"
                                                                " type -> encoder): a dict, or its dotted name"),
                     ("mysql",), hashed=False)  # fmt: skip
    client_flag: int = _key(0, Rule(int, low=0, high=2**32 - 1, meaning="PyMySQL client_flag, OR-ed with the"
                                                                        " pool's: a number, or CLIENT names"
                                                                        " joined by |"), ("mysql",))  # fmt: skip
    local_infile: bool = _key(False, Rule(bool, meaning="allow LOAD DATA LOCAL INFILE"), ("mysql",))
    driver: Optional[str] = _key(None, _text("the driver: mysql pymysql (default) or mysqlclient; postgresql psycopg"
                                             " (3) or psycopg2 (default: psycopg if installed, else psycopg2)",
                                             choices=MYSQL_DRIVERS + PG_DRIVERS), _SERVERS)  # fmt: skip
    # PostgreSQL (libpq keywords, passed through)
    sslmode: Optional[str] = _key(None, _text("libpq sslmode", choices=_SSLMODES), ("postgresql",))
    sslrootcert: Optional[str] = _key(None, _text("libpq sslrootcert"), ("postgresql",))
    sslcert: Optional[str] = _key(None, _text("libpq sslcert"), ("postgresql",))
    sslkey: Optional[str] = _key(None, _text("libpq sslkey"), ("postgresql",))
    application_name: Optional[str] = _key(None, _text("libpq application_name"), ("postgresql",))
    options: Optional[str] = _key(None, _text("libpq options (-c name=value ...)"), ("postgresql",))
    target_session_attrs: Optional[str] = _key(None, _text("which server to accept: any, read-write, read-only"
                                                           " (PostgreSQL: libpq's, all of them)", choices=_TARGETS),
                                               _SERVERS)  # fmt: skip
    load_balance_hosts: Optional[str] = _key(None, _text("disable (hosts in order) or random", choices=_BALANCE),
                                             _SERVERS)  # fmt: skip
    prepare_threshold: Optional[int] = _key(5, Rule(int, optional=True, low=0, high=1_000_000,
                                                     meaning="psycopg prepare_threshold; none: never prepare"),
                                            ("postgresql",))  # fmt: skip
    pgbouncer: bool = _key(False, Rule(bool, meaning="behind PgBouncer in transaction pooling mode"),
                           ("postgresql",))  # fmt: skip
    # Any DB-API driver
    creator: Any = _key(None, Rule(object, optional=True, meaning="callable returning a DB-API connection, or"
                                                                   " 'module:callable'"), ("dbapi",))  # fmt: skip
    ping_query: Optional[str] = _key(None, _text("statement of the checkout ping (default: the driver's own ping"
                                                 " where it is safe, else SELECT 1)"), ("dbapi",))  # fmt: skip

    @property
    def address(self) -> str:
        """Where the pool connects: ``host:port``, the SQLite path or the creator's name (no secret)."""
        if self.adapter == "sqlite":
            return str(self.database)
        if self.adapter == "dbapi":
            return _callable_name(self.creator)
        return ",".join(_host_text(host, port) for host, port in self.hosts or ((self.host, self.port),))

    @property
    def dsn(self) -> str:
        """The connection URL with the password masked (safe to log)."""
        if self.adapter == "sqlite":
            return f"sqlite:///{self.database}"
        if self.adapter == "dbapi":
            return f"dbapi:{_callable_name(self.creator)}"
        auth = quote(self.user or "", safe="") + (f":{_MASK}" if self.password else "")
        dsn = f"{self.adapter}://{auth}{'@' if auth else ''}{self.address}/{quote(self.database or '', safe='')}"
        return _masked(dsn, self.password)

    def driver_kwargs(self) -> dict[str, Any]:
        """The PyMySQL keyword arguments this config sets besides the connection keys
        (``cursorclass``, ``conv``, ``local_infile``; ``client_flag`` is OR-ed by the connector)."""
        out: dict[str, Any] = {}
        if self.cursorclass is not None:
            out["cursorclass"] = self.cursorclass
        if self.conv is not None:
            out["conv"] = dict(self.conv)
        if self.local_infile:
            out["local_infile"] = True
        return out

    def __repr__(self) -> str:
        return f"<DatabaseConfig {self.pool_name!r} {self.dsn} min={self.min_size} max={self.max_size}>"


def _host_text(host: Optional[str], port: Optional[int]) -> str:
    return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(DatabaseConfig) if not f.metadata.get("internal")}


_FIELDS = _fields()
#: Every key: ``{name: (default, rule, adapters it applies to)}``.
KEYS = {name: (f.default, rule_of(f), f.metadata.get("adapters", _ALL)) for name, f in _FIELDS.items()}


def _masked(dsn: str, password: Any) -> str:
    # The password can also be the user name, or part of the host or database name (a
    # mistyped URL): then those are masked too, however odd the result reads.
    if isinstance(password, bytes):
        password = password.decode("utf-8", "replace")
    if password and password in dsn.replace(f":{_MASK}@", "@", 1):
        auth, at, rest = dsn.partition("@")
        return auth.replace(password, _MASK) + at + rest.replace(password, _MASK)
    return dsn


def mask_dsn(text: str, password: str = "") -> str:
    """Return *text* with every URL's password, and *password* itself, masked.

    >>> mask_dsn("mysql://app:s3cret@db:3306/x")
    'mysql://app:***@db:3306/x'
    """
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    if password:
        text = text.replace(password, _MASK)
    return text


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")


def parse_config(pool_name: str, value: Union[ConfigValue, DatabaseConfig]) -> DatabaseConfig:
    """Validate one named pool's config (a dict or a URL) into a DatabaseConfig.

    Raises ConfigError naming *pool_name* and the offending key or value.
    """
    if isinstance(value, DatabaseConfig):
        return dataclasses.replace(value, pool_name=pool_name)
    raw = raw_config(pool_name, value, _from_url)
    replicas = raw.pop("replicas", None)
    config = DatabaseConfig(pool_name=pool_name, **_normalise(pool_name, raw))
    config.check(pool_name)
    if replicas is not None:
        config = dataclasses.replace(config, replicas=_replicas(pool_name, config.adapter, raw, replicas))
    return config


def replica_name(pool_name: str, number: int) -> str:
    """The pool name of *pool_name*'s replica *number* (from 1): ``default.replica1``."""
    return f"{pool_name}.replica{number}"


def _replicas(pool_name: str, adapter: str, primary: dict[str, Any], value: Any) -> tuple[DatabaseConfig, ...]:
    """The ``replicas`` of *pool_name*: each a URL or a dict whose keys override the primary's
    (*primary*: its raw keys). A replica that gives a password (or its source) drops the
    primary's; a dict without a port keeps the primary's, a URL without one means the default;
    ``strict`` is not inherited (reads fall back to the primary when a replica is down)."""
    if adapter not in _SERVERS:
        raise ConfigError(f"pool {pool_name!r}: replicas apply to mysql and postgresql, not {adapter!r}")
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"pool {pool_name!r}: replicas must be a non-empty list of URLs or dicts")
    out = []
    for number, item in enumerate(value, 1):
        name = replica_name(pool_name, number)
        own = raw_config(name, item, _from_url)
        if "replicas" in own:
            raise ConfigError(f"pool {name!r}: a replica has no replicas of its own")
        if _adapter(name, {"adapter": own.get("adapter", adapter)}) != adapter:
            raise ConfigError(f"pool {name!r}: a replica uses its primary's adapter ({adapter!r})")
        secrets = ("password", "pass", "passwd", *_SOURCES)
        base = {k: v for k, v in primary.items() if not (k in secrets and any(s in own for s in secrets))}
        base.pop("strict", None)  # a replica down at boot is served around: strict only if it says so
        if isinstance(item, str) and "port" not in own:
            base.pop("port", None)  # a URL without a port means the default port
        config = DatabaseConfig(pool_name=name, primary=pool_name, **_normalise(name, {**base, **own}))
        config.check(name)
        out.append(config)
    return tuple(out)


def raw_config(pool_name: str, value: Any, from_url: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
    """A config given as a URL (read by *from_url*) or as a dict, as a plain dict of its keys."""
    if isinstance(value, str):
        return from_url(pool_name, value)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"pool {pool_name!r}: config keys must be strings")
        return dict(value)
    raise ConfigError(f"pool {pool_name!r}: config must be a dict or a URL string, not {type(value).__name__}")


# -- URLs ------------------------------------------------------------------------------------

#: The hint of every "ambiguous URL" error: what to percent-encode, and how.
ENCODE_HINT = (
    "percent-encode these characters in the user name and password: / as %2F, ? as %3F, # as %23,"
    " [ as %5B, ] as %5D, @ as %40, : as %3A (in the user name)"
)


def _from_url(pool_name: str, url: str) -> dict[str, Any]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"pool {pool_name!r}: a URL needs a scheme such as mysql:// or postgresql://")
    adapter = _SCHEMES.get(scheme.lower())
    if adapter is None:
        raise ConfigError(
            f"pool {pool_name!r}: unsupported URL scheme {scheme[:20]!r} (use one of: {', '.join(sorted(_SCHEMES))})"
        )
    if adapter == "sqlite":
        return _sqlite_url(pool_name, rest)
    if adapter == "dbapi":
        return _dbapi_url(pool_name, rest)
    user, password, hostport, tail = split_url(pool_name, rest)
    raw: dict[str, Any] = {"adapter": adapter}
    named = scheme.lower().partition("+")[2]
    if adapter == "mysql" and named:
        raw["driver"] = _MYSQL_SCHEME_DRIVERS[named]  # mysql+mysqldb://
    elif adapter == "postgresql" and named:
        raw["driver"] = named  # postgresql+psycopg2://
    if user:
        raw["user"] = user
    if password is not None:
        raw["password"] = password
    if "," in hostport:  # several hosts: each host[:port] is read in _hosts()
        raw["host"] = hostport
        host, port = "", None
    else:
        host, port = host_port(pool_name, hostport)
    if host:
        raw["host"] = host
    if port is not None:
        raw["port"] = port
    path, _, query = tail.partition("?")
    database = unquote(path.strip("/"))
    if database:
        raw["database"] = database
    for key, val in parse_qsl(query, keep_blank_values=True):
        if key == "session":
            raw.setdefault("session", []).append(val)
        elif key in raw and key not in ("adapter",):
            raise ConfigError(f"pool {pool_name!r}: option {key!r} given twice in the URL")
        else:
            raw[key] = val
    return raw


def split_url(pool_name: str, rest: str, *, authority_ends: str = "/?#") -> tuple[str, Optional[str], str, str]:
    """Split what follows ``scheme://`` into (user, password or None, host[:port], path?query),
    unquoted. A URL that could be read two ways (an unencoded ``@ # [ ]`` in the userinfo, or an
    ``@`` after the host) is refused, with no part of the userinfo in the message."""
    end = next((i for i, c in enumerate(rest) if c in authority_ends), -1)
    authority, tail = (rest[:end], rest[end:]) if end >= 0 else (rest, "")
    if "@" in tail or authority.count("@") > 1 or "#" in tail:
        raise ConfigError(f"pool {pool_name!r}: ambiguous URL: {ENCODE_HINT}")
    userinfo, at, hostport = authority.rpartition("@")
    if any(c in userinfo for c in "[]"):
        raise ConfigError(f"pool {pool_name!r}: ambiguous URL: {ENCODE_HINT}")
    user, colon, password = userinfo.partition(":") if at else ("", "", "")
    return unquote(user), (unquote(password) if colon else None), hostport, tail


def host_port(pool_name: str, hostport: str) -> tuple[str, Optional[int]]:
    """``host[:port]`` or ``[ipv6][:port]`` of a URL, checked (ConfigError names only the pool)."""
    if hostport.startswith("["):  # [IPv6]:port
        host, close, after = hostport[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise ConfigError(f"pool {pool_name!r}: bad host in the URL ({ENCODE_HINT})")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    host = unquote(host)
    if any(c.isspace() or ord(c) < 32 for c in host):
        raise ConfigError(f"pool {pool_name!r}: bad host in the URL (spaces or control characters)")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"pool {pool_name!r}: bad port in the URL (a number from 1 to 65535; {ENCODE_HINT})")
    return host, int(port_text)


def _sqlite_url(pool_name: str, rest: str) -> dict[str, Any]:
    # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:, sqlite:// (memory)
    path, _, query = rest.partition("?")
    if path and not path.startswith("/"):
        raise ConfigError(
            f"pool {pool_name!r}: a sqlite URL names a file, not a server or a login:"
            " sqlite:///relative.db, sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if re.search(r":.*@", path):  # the shape of user:password@: refused like any ambiguous URL, not echoed
        raise ConfigError(
            f"pool {pool_name!r}: ambiguous sqlite URL (a ':...@' in it reads as a login);"
            " a file with such a name goes in a dict config's 'database' key"
        )
    raw: dict[str, Any] = {"adapter": "sqlite", "database": path[1:] if path.startswith("/") else (path or ":memory:")}
    for key, val in parse_qsl(query, keep_blank_values=True):
        raw.setdefault("session", []).append(val) if key == "session" else raw.__setitem__(key, val)
    return raw


def _dbapi_url(pool_name: str, rest: str) -> dict[str, Any]:
    # dbapi://?creator=module:callable&max_size=4
    path, _, query = rest.partition("?")
    raw: dict[str, Any] = {"adapter": "dbapi"}
    if path.strip("/"):
        raw["creator"] = unquote(path.strip("/"))
    for key, val in parse_qsl(query, keep_blank_values=True):
        raw[key] = val
    return raw


# -- keys ------------------------------------------------------------------------------------


def _normalise(pool_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    adapter = _adapter(pool_name, raw)
    out: dict[str, Any] = {"adapter": adapter}
    if adapter == "mysql" and "ssl" in raw:
        given = raw["ssl"]
        raw = {k: v for k, v in raw.items() if k != "ssl"}
        if any(k.startswith("ssl_") for k in raw):
            raise ConfigError(f"pool {pool_name!r}: give ssl (PyMySQL's dict) or the ssl_* keys, not both")
        raw.update(_ssl_dict(pool_name, given))
    for key, val in raw.items():
        name = _ALIASES.get(key, key)
        if name in _SOURCES or name == "adapter":
            continue
        field = _FIELDS.get(name)
        if field is None:
            if adapter == "mysql" and name in _REFUSED:
                raise ConfigError(f"pool {pool_name!r}: option {name!r} is not supported: {_REFUSED[name]}")
            known = [n for n, (_, _, ads) in KEYS.items() if adapter in ads] + (["ssl"] if adapter == "mysql" else [])
            known = sorted(known) + list(_SOURCES)
            raise ConfigError(f"pool {pool_name!r}: unknown option {_shown(key)} (known: {', '.join(known)})")
        if adapter not in KEYS[name][2]:
            raise ConfigError(
                f"pool {pool_name!r}: option {name!r} does not apply to adapter {adapter!r}"
                f" (it is for: {', '.join(KEYS[name][2])})"
            )
        if name in out:
            raise ConfigError(f"pool {pool_name!r}: option {name!r} given twice (as {key!r} and an alias)")
        if name == "host" and isinstance(val, (list, tuple)):
            val = _host_list(pool_name, val)
        out[name] = _coerce(pool_name, name, val)
    password = password_from_source(pool_name, raw)
    if password is not None:
        if "password" in out:
            raise ConfigError(f"pool {pool_name!r}: give the password once (password, password_env or password_file)")
        if adapter not in _SERVERS:
            raise ConfigError(f"pool {pool_name!r}: adapter {adapter!r} takes no password")
        out["password"] = password
    spec = ADAPTERS[adapter]
    if spec.server:
        out["host"] = out.get("host") or "127.0.0.1"
        out.setdefault("port", None)
        out["port"] = out["port"] or spec.port
        if out.get("user") is None and spec.user is not None:
            out["user"] = spec.user
        out["hosts"] = _hosts(pool_name, out["host"], out["port"])
        out["host"], out["port"] = out["hosts"][0]
        if adapter == "mysql" and out.get("target_session_attrs") not in (None, *_MYSQL_TARGETS):
            raise ConfigError(f"pool {pool_name!r}: target_session_attrs must be one of"
                              f" {', '.join(_MYSQL_TARGETS)} for MySQL/MariaDB")  # fmt: skip
    if adapter == "mysql":
        out["driver"] = out.get("driver") or MYSQL_DRIVERS[0]
        _check_driver(pool_name, adapter, out["driver"], MYSQL_DRIVERS)
        _check_cursorclass(pool_name, out["driver"], out.get("cursorclass"))
    if adapter == "postgresql":
        out["driver"] = out.get("driver") or default_pg_driver()
        _check_driver(pool_name, adapter, out["driver"], PG_DRIVERS)
        if out["driver"] == "psycopg2" and "prepare_threshold" in out:
            raise ConfigError(f"pool {pool_name!r}: prepare_threshold is psycopg 3's; psycopg2 never prepares"
                              " a statement (leave it out, or use driver=psycopg)")  # fmt: skip
    if adapter == "sqlite" and not out.get("database"):
        raise ConfigError(f"pool {pool_name!r}: sqlite needs a database path (or ':memory:')")
    if adapter == "dbapi":
        out["creator"] = _creator(pool_name, out.get("creator"))
    return out


def _check_driver(pool_name: str, adapter: str, driver: str, drivers: tuple[str, ...]) -> None:
    if driver not in drivers:
        raise ConfigError(f"pool {pool_name!r}: driver {driver!r} is not one of {adapter}'s ({', '.join(drivers)})")


def default_pg_driver() -> str:
    """The driver of a PostgreSQL pool that names none: ``psycopg`` (3) when it can be imported,
    else ``psycopg2`` when that can, else ``psycopg`` (whose import then says what is missing).
    Nothing is imported here."""
    for name in PG_DRIVERS:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):  # a broken or hidden module: not installed, as far as we go
            continue
    return PG_DRIVERS[0]


def _host_list(pool_name: str, value: Any) -> str:
    """``host: [..]`` of a dict as the comma-separated text _hosts() reads."""
    if not value or not all(isinstance(v, str) and v and "," not in v for v in value):
        raise ConfigError(f"pool {pool_name!r}: host must be a string or a non-empty list of 'host[:port]' strings")
    return ",".join(value)


def _hosts(pool_name: str, host: str, port: int) -> tuple[tuple[str, int], ...]:
    """Every host of *host* with its port: one host as given (a path, an IPv6 address), or several
    separated by commas, each ``host[:port]`` or ``[ipv6][:port]`` (*port* where none is given)."""
    if "," not in host:
        return ((host, port),)
    hosts = []
    for entry in host.split(","):
        name, own = host_port(pool_name, entry.strip())
        if not name:
            raise ConfigError(f"pool {pool_name!r}: an empty host in the host list")
        hosts.append((name, own or port))
    return tuple(hosts)


def _adapter(pool_name: str, raw: Mapping[str, Any]) -> str:
    value = raw.get("adapter", "mysql")
    name = _SPELLINGS.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        shown = _shown(value) if isinstance(value, str) else f"a {type(value).__name__}"
        raise ConfigError(f"pool {pool_name!r}: unknown adapter {shown} (use one of: {', '.join(sorted(_SPELLINGS))})")
    return name


def _shown(name: str) -> str:
    """*name* quoted for an error if it looks like a name; else a description that does not
    echo it (a mistyped URL can put a password where an option or adapter name goes)."""
    if _NAME_LIKE.fullmatch(name):
        return repr(name)
    return f"(not shown: {len(name)} characters that are not a name; a mistyped URL? {ENCODE_HINT})"


_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def _coerce(pool_name: str, name: str, val: Any) -> Any:
    rule = KEYS[name][1]
    if name == "ssl_verify" and val is not None:
        if isinstance(val, bool):
            return val
        text = coerce(pool_name, name, val, rule)
        return "identity" if text == "identity" else text in ("true", "1", "yes", "on")
    if name == "creator":
        return val
    if name == "cursorclass" and val is not None:
        return _cursorclass(pool_name, val)
    if name == "conv" and val is not None:
        return _conv(pool_name, val)
    if name == "client_flag" and isinstance(val, str) and not val.strip().isdigit():
        val = _client_flag_names(pool_name, val)
    return coerce(pool_name, name, val, rule)


def _imported(pool_name: str, key: str, value: str) -> Any:
    """The object a dotted name (``package.module.Name`` or ``package.module:Name``) of *key*
    names, imported; ConfigError naming the pool and the key otherwise. The name is shown only if
    it has the shape of one (a password put in the wrong key is not)."""
    shown = (
        repr(value) if _DOTTED.fullmatch(value) else f"(not shown: {len(value)} characters that are not a dotted name)"
    )
    module, colon, attr = value.partition(":") if ":" in value else value.rpartition(".")
    if not module or not attr or shown.startswith("(not"):
        raise ConfigError(f"pool {pool_name!r}: {key} must be a dotted name such as package.module.Name, got {shown}")
    try:
        return _resolve(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"pool {pool_name!r}: cannot import {key} {shown}: {type(exc).__name__}") from None


def _resolve(module: str, attr: str) -> Any:
    """*module* imported, then *attr* (dotted) looked up in it: ImportError or AttributeError."""
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z_][A-Za-z0-9_]*)+")


def _cursorclass(pool_name: str, value: Any) -> Any:
    if isinstance(value, str):
        value = _imported(pool_name, "cursorclass", value.strip())
    return value


def _check_cursorclass(pool_name: str, driver: str, value: Any) -> None:
    """A ``cursorclass`` must be a cursor class of the pool's driver."""
    if value is None:
        return
    if driver == "mysqlclient":
        from MySQLdb.cursors import BaseCursor as Cursor

        name = "a mysqlclient cursor class (a subclass of MySQLdb.cursors.BaseCursor)"
    else:
        from pymysql.cursors import Cursor

        name = "a PyMySQL cursor class (a subclass of pymysql.cursors.Cursor)"
    if not (isinstance(value, type) and issubclass(value, Cursor)):
        raise ConfigError(f"pool {pool_name!r}: cursorclass must be {name}, got a {type(value).__name__}")


def _conv(pool_name: str, value: Any) -> Any:
    if isinstance(value, str):
        value = _imported(pool_name, "conv", value.strip())
    if not isinstance(value, Mapping) or not all(
        (isinstance(k, type) or (isinstance(k, int) and not isinstance(k, bool))) and callable(v)
        for k, v in value.items()
    ):
        raise ConfigError(f"pool {pool_name!r}: conv must be a dict of field type numbers and Python types to"
                          f" converter functions, got a {type(value).__name__}")  # fmt: skip
    return dict(value)


def _client_flag_names(pool_name: str, value: str) -> int:
    """``FOUND_ROWS|MULTI_STATEMENTS`` (names of pymysql.constants.CLIENT, or numbers) as a number."""
    from pymysql.constants import CLIENT

    flag = 0
    for part in re.split(r"[|,+]", value):
        part = part.strip()
        number = getattr(CLIENT, part.upper(), None) if _NAME_LIKE.fullmatch(part) else None
        if part.isdigit():
            number = int(part)
        if not isinstance(number, int):
            raise ConfigError(f"pool {pool_name!r}: client_flag must be a number or pymysql.constants.CLIENT names"
                              " joined by | (FOUND_ROWS|MULTI_STATEMENTS)")  # fmt: skip
        flag |= number
    return flag


def _ssl_dict(pool_name: str, value: Any) -> dict[str, Any]:
    """PyMySQL's ``ssl`` dict as the pool's ssl_* keys: ``ca``, ``cert``, ``key``, and
    ``check_hostname`` / ``verify_mode`` with PyMySQL's meaning (with a CA the certificate and
    the host name are checked unless they say otherwise)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"pool {pool_name!r}: ssl must be a dict (PyMySQL's: ca, cert, key, check_hostname,"
                          " verify_mode); in a URL give ssl_ca, ssl_cert, ssl_key, ssl_verify")  # fmt: skip
    out: dict[str, Any] = {}
    for key, val in value.items():
        if key in _SSL_DICT:
            out[_SSL_DICT[key]] = val
        elif key not in ("check_hostname", "verify_mode"):
            raise ConfigError(
                f"pool {pool_name!r}: ssl key {_shown(key) if isinstance(key, str) else 'not a string'} is not"
                " supported (use ca, cert, key, check_hostname, verify_mode; capath, cipher and a key password"
                " are not)"
            )
    verify = value.get("verify_mode")
    if isinstance(verify, str):
        verify = verify.strip().lower() not in ("none", "0", "false", "no", "")
    elif verify is not None:
        verify = bool(verify)
    if verify is None:
        verify = "ca" in value
    if verify and "ca" in value and value.get("check_hostname", True):
        verify = "identity"
    out["ssl_verify"] = verify
    return out


def _creator(pool_name: str, value: Any) -> Callable[[], Any]:
    if value is None:
        raise ConfigError(f"pool {pool_name!r}: adapter 'dbapi' needs a creator (a callable or 'module:callable')")
    if isinstance(value, str):
        module, colon, attr = value.partition(":")
        if not colon or not module or not attr:
            raise ConfigError(f"pool {pool_name!r}: creator must be 'module:callable', got {value[:60]!r}")
        try:
            value = _resolve(module, attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"pool {pool_name!r}: cannot import creator {value[:60]!r}: {exc}") from None
    if not callable(value):
        raise ConfigError(f"pool {pool_name!r}: creator must be callable, got a {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def _callable_name(value: Any) -> str:
    module = getattr(value, "__module__", None) or "?"
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or type(value).__name__
    return f"{module}:{name}"


def password_from_source(pool_name: str, raw: Mapping[str, Any]) -> Optional[str]:
    """The password named by ``password_env`` or ``password_file`` in *raw*, if either is given."""
    env, path = raw.get("password_env"), raw.get("password_file")
    for key, val in (("password_env", env), ("password_file", path)):
        if val is not None and (not isinstance(val, (str, os.PathLike)) or "\x00" in str(val)):
            raise ConfigError(f"pool {pool_name!r}: {key} must be a string (got a {type(val).__name__})")
    if env and path:
        raise ConfigError(f"pool {pool_name!r}: give password_env or password_file, not both")
    if env:
        if str(env) not in os.environ:
            raise ConfigError(f"pool {pool_name!r}: password_env names {str(env)[:60]!r}, which is not set")
        return os.environ[str(env)]
    if path:
        try:
            return _read_password_file(os.fspath(path)).decode("utf-8").rstrip("\r\n")
        except OSError as exc:
            why = exc.strerror
        except UnicodeDecodeError:
            why = "not UTF-8 text"
        except ValueError as exc:  # what _read_password_file() refused
            why = str(exc)
        raise ConfigError(f"pool {pool_name!r}: cannot read password_file {str(path)[:200]!r}: {why}")
    return None


#: The most a password_file may hold (a password, a trailing newline; a key file would fit too).
PASSWORD_FILE_MAX = 64 * 1024
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def _read_password_file(path: str) -> bytes:
    """The bytes of the regular file *path*, at most :data:`PASSWORD_FILE_MAX`. Opened non-blocking
    and checked before any read: a FIFO with no writer would block the config build forever,
    ``/dev/zero`` would be read until MemoryError. ValueError says why (never the content)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
            raise ValueError(f"it is {kind}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= PASSWORD_FILE_MAX:  # fstat's size is a hint: the file may grow while read
            chunk = os.read(fd, PASSWORD_FILE_MAX + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise ValueError(f"it holds more than {PASSWORD_FILE_MAX // 1024} KiB, the limit for a password file")
    finally:
        os.close(fd)
