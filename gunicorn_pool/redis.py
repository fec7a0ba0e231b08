"""RedisPool: named Redis pools for one worker, used through redis-py's own client.

Register it in gunicorn.conf.py (or in app code) and use ``client()`` in views::

    # gunicorn.conf.py
    import gunicorn_pool
    gunicorn_pool.register(gunicorn_pool.RedisPool({
        "default": "redis://:secret@127.0.0.1:6379/0",
        "cache": {"host": "10.0.0.8", "db": 2, "password_env": "CACHE_PW", "max_size": 4},
    }), name="redis")
    worker_class = "gunicorn_pool.Worker"

    # app.py
    import gunicorn_pool
    def app(environ, start_response):
        r = gunicorn_pool.get("redis").client()      # a redis.Redis, shared by every thread
        hits = r.incr("hits")
        ...

Every worker opens its own connections in ``init_pool()`` (after fork, before
the first request) and closes them when it exits.

How redis-py uses the pool
--------------------------
``client(name)`` is a ``redis.Redis`` (:class:`PooledRedis`, which refuses
the commands whose effect would outlast the command: ``SELECT``, ``MULTI``,
``SUBSCRIBE``...) whose ``connection_pool`` is a
:class:`RedisConnectionPool`: a ``redis.ConnectionPool`` whose
``get_connection()`` and ``release()`` check connections out of, and back
into, gunicorn_pool's :class:`~gunicorn_pool.pool.ConnectionPool` (bounded,
FIFO waits, ``timeout`` -> :class:`~gunicorn_pool.errors.PoolTimeout`,
lifetime and idle limits, fork adoption, ``stats()``). redis-py takes a
connection per command and gives it back at once (``Redis.execute_command``),
for a whole ``pipeline().execute()``, from ``watch()`` until ``reset()``
for a transaction, and for the life of a ``PubSub`` or of a
``client.client()`` (single-connection) object. A connection is lent only
between those two calls, so it is never shared.

Connections come back clean or not at all: redis-py disconnects a connection
whose command failed or was interrupted, and ``PubSub.close()`` disconnects
its connection before giving it back; such a connection is dropped and its
capacity freed. A connection whose session a command changed (MULTI left
open, SELECT, CLIENT SETNAME... through a single-connection client, a
pipeline or the connection itself) is reset with ``RESET`` and the handshake,
or closed (:mod:`gunicorn_pool.connectors.redis`). redis-py's own retry
is off (no command is re-sent after a connection error: it may have run);
the pool's checkout check replaces a connection the server closed before any
command is sent.

Boot policy
-----------
As :class:`~gunicorn_pool.database.DatabasePool`: ``init_pool()`` never raises
for a server that cannot be reached (it logs the pool, ``host:port`` and the
error, never the password, and connects on demand later, backing off), unless
the pool has ``strict=True`` and this is the server's first start.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import parse_qsl, quote, unquote

import redis
from redis.maint_notifications import MaintNotificationsConfig

from .config import host_port, password_from_source, raw_config, split_url
from .connectors.redis import COMMAND_KINDS, RedisConnector, connection_class, handshake, refuse_on_shared_client
from .errors import ConfigError, LeaseError, PoolClosed
from .options import PoolOptions, Rule, coerce, rule_of
from .pool import ConnectionPool
from .service import NamedPools, single_config
from .slot import IDLE, LENT

__all__ = [
    "KEYS", "PooledRedis", "RedisConfig", "RedisConnectionPool", "RedisPool", "parse_redis_config",
    "parse_redis_configs",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

_MASK = "***"
_exc_info = sys.exc_info
_TCP = ("tcp", "ssl")
_ALL = ("tcp", "ssl", "unix")
_SCHEMES = {"redis": "tcp", "rediss": "ssl", "unix": "unix"}
_ALIASES = {"connect_timeout": "socket_connect_timeout", "user": "username", "unix_socket_path": "path"}
_SOURCES = ("password_env", "password_file")
#: Pool options that do not apply to Redis: there is no session to reset, and redis-py
#: objects give connections back from whichever thread closes them (PubSub.run_in_thread).
_NOT_FOR_REDIS = ("reset_session", "owner_check")


def _key(default: Any, rule: Rule, transports: tuple[str, ...] = _ALL) -> Any:
    return dataclasses.field(default=default, metadata={"rule": rule, "transports": transports})


def _text(meaning: str, *, optional: bool = True, secret: bool = False, choices: tuple[str, ...] = ()) -> Rule:
    return Rule(str, optional=optional, secret=secret, choices=choices, meaning=meaning)


def _seconds(meaning: str, *, optional: bool = False, high: float = 86400.0) -> Rule:
    return Rule(float, optional=optional, low=0, above=True, high=high, meaning=meaning)


@dataclasses.dataclass(frozen=True)
class RedisConfig(PoolOptions):
    """One named Redis pool's validated settings: the connection keys plus the
    :class:`~gunicorn_pool.options.PoolOptions` keys. Build it with :func:`parse_redis_config`."""

    pool_name: str = dataclasses.field(default="", metadata={"internal": True})
    host: str = _key("127.0.0.1", _text("server host", optional=False), _TCP)
    port: int = _key(6379, Rule(int, low=1, high=65535, meaning="server port"), _TCP)
    path: Optional[str] = _key(None, _text("unix socket path (unix://)"), ("unix",))
    db: int = _key(0, Rule(int, low=0, high=2**31 - 1, meaning="database number (SELECT)"))
    username: Optional[str] = _key(None, _text("ACL user name"))
    password: str = dataclasses.field(
        default="", repr=False, metadata={"rule": _text("password", optional=False, secret=True), "transports": _ALL}
    )
    ssl: bool = _key(False, Rule(bool, meaning="TLS (rediss://)"), _TCP)
    socket_timeout: Optional[float] = _key(
        None, _seconds("seconds a command may wait for the server; unset: gunicorn's timeout in gthread and"
                       " gevent workers, none in sync workers", optional=True))  # fmt: skip
    socket_connect_timeout: float = _key(5.0, _seconds("seconds for the connect and each reply of the handshake",
                                                       high=3600.0))  # fmt: skip
    socket_keepalive: bool = _key(True, Rule(bool, meaning="TCP keepalive"), _TCP)
    client_name: Optional[str] = _key(None, _text("CLIENT SETNAME of every connection"))
    protocol: int = _key(2, Rule(int, low=2, high=3, meaning="RESP version"))
    decode_responses: bool = _key(False, Rule(bool, meaning="decode replies to str"))
    encoding: str = _key("utf-8", _text("encoding of str arguments and decoded replies", optional=False))
    encoding_errors: str = _key("strict", _text("codec error handler", optional=False, choices=(
        "strict", "ignore", "replace", "backslashreplace", "surrogateescape")))  # fmt: skip
    ssl_ca_certs: Optional[str] = _key(None, _text("CA file: verify the server certificate"), ("ssl",))
    ssl_ca_path: Optional[str] = _key(None, _text("CA directory"), ("ssl",))
    ssl_certfile: Optional[str] = _key(None, _text("client certificate file"), ("ssl",))
    ssl_keyfile: Optional[str] = _key(None, _text("client key file"), ("ssl",))
    ssl_password: Optional[str] = dataclasses.field(
        default=None, repr=False,
        metadata={"rule": _text("password of the client key", secret=True), "transports": ("ssl",)},
    )  # fmt: skip
    ssl_cert_reqs: str = _key("required", _text("server certificate check", optional=False,
                                                choices=("none", "optional", "required")), ("ssl",))  # fmt: skip
    ssl_check_hostname: bool = _key(True, Rule(bool, meaning="the certificate must name the host"), ("ssl",))

    @property
    def scheme(self) -> str:
        """``redis``, ``rediss`` or ``unix``."""
        return "unix" if self.path is not None else "rediss" if self.ssl else "redis"

    @property
    def address(self) -> str:
        """Where the pool connects: ``host:port`` or the socket path (no secret)."""
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def dsn(self) -> str:
        """The connection URL with the password masked (safe to log)."""
        auth = quote(self.username or "", safe="") + (f":{_MASK}" if self.password else "")
        at = "@" if auth else ""
        if self.path is not None:
            return f"unix://{auth}{at}{quote(self.path)}?db={self.db}"
        return f"{self.scheme}://{auth}{at}{self.address}/{self.db}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of redis-py's connection class (``socket_timeout`` is added per
        connection: its default depends on the worker)."""
        kwargs: dict[str, Any] = dict(
            db=self.db,
            username=self.username,
            password=self.password or None,
            socket_connect_timeout=self.socket_connect_timeout,
            client_name=self.client_name,
            protocol=self.protocol,
            decode_responses=self.decode_responses,
            encoding=self.encoding,
            encoding_errors=self.encoding_errors,
            redis_connect_func=functools.partial(handshake, timeout=self.socket_connect_timeout),
        )
        if self.path is not None:
            kwargs["path"] = self.path
            return kwargs
        kwargs.update(host=self.host, port=self.port, socket_keepalive=self.socket_keepalive)
        if self.ssl:
            kwargs.update(
                ssl_ca_certs=self.ssl_ca_certs, ssl_ca_path=self.ssl_ca_path, ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile, ssl_password=self.ssl_password, ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname,
            )  # fmt: skip
        return kwargs

    def __repr__(self) -> str:
        return f"<RedisConfig {self.pool_name!r} {self.dsn} min={self.min_size} max={self.max_size}>"


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(RedisConfig) if not f.metadata.get("internal")}


_FIELDS = _fields()
#: Every key: ``{name: (default, rule, transports it applies to)}`` (transports: tcp, ssl, unix).
KEYS = {
    name: (f.default, rule_of(f), () if name in _NOT_FOR_REDIS else f.metadata.get("transports", _ALL))
    for name, f in _FIELDS.items()
}


def parse_redis_config(pool_name: str, value: Union[str, Mapping[str, Any], RedisConfig]) -> RedisConfig:
    """Validate one named Redis pool's config (a ``redis://``, ``rediss://`` or ``unix://``
    URL, or a dict) into a :class:`RedisConfig`.

    Raises :class:`~gunicorn_pool.errors.ConfigError` naming *pool_name* and the offending
    key; no error text contains the password or any part of a URL's user name and password.
    """
    if isinstance(value, RedisConfig):
        return dataclasses.replace(value, pool_name=pool_name)
    raw = raw_config(pool_name, value, _from_url)
    config = RedisConfig(pool_name=pool_name, owner_check=False, **_normalise(pool_name, raw))
    config.check(pool_name)
    return config


def _from_url(pool_name: str, url: str) -> dict[str, Any]:
    scheme, sep, rest = url.partition("://")
    transport = _SCHEMES.get(scheme.lower()) if sep else None
    if transport is None:
        raise ConfigError(f"pool {pool_name!r}: a Redis URL starts with redis://, rediss:// or unix://")
    user, password, hostport, tail = split_url(pool_name, rest, authority_ends="/" if transport == "unix" else "/?#")
    raw: dict[str, Any] = {}
    if transport == "ssl":
        raw["ssl"] = True
    if user:
        raw["username"] = user
    if password is not None:
        raw["password"] = password
    path, _, query = tail.partition("?")
    if transport == "unix":
        if hostport:
            raise ConfigError(f"pool {pool_name!r}: a unix:// URL names no host (unix:///path/to/redis.sock)")
        if not path.strip("/"):
            raise ConfigError(f"pool {pool_name!r}: a unix:// URL needs the socket path (unix:///path/to/redis.sock)")
        raw["path"] = unquote(path)
    else:
        host, port = host_port(pool_name, hostport)
        if host:
            raw["host"] = host
        if port is not None:
            raw["port"] = port
        db = unquote(path.strip("/"))
        if db:
            if not db.isdigit():
                raise ConfigError(f"pool {pool_name!r}: the URL's path is the database number (redis://host:6379/0)")
            raw["db"] = db
    for key, val in parse_qsl(query, keep_blank_values=True):
        if key in raw:
            raise ConfigError(f"pool {pool_name!r}: option {key!r} given twice in the URL")
        raw[key] = val
    return raw


def _normalise(pool_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in raw.items():
        name = _ALIASES.get(key, key)
        if name in _SOURCES:
            continue
        if name not in _FIELDS:
            known = sorted(n for n, (_, _, transports) in KEYS.items() if transports) + list(_SOURCES)
            raise ConfigError(f"pool {pool_name!r}: unknown option {key!r} (known: {', '.join(known)})")
        if name in _NOT_FOR_REDIS:
            raise ConfigError(f"pool {pool_name!r}: option {name!r} does not apply to Redis")
        if name in out:
            raise ConfigError(f"pool {pool_name!r}: option {name!r} given twice (as {key!r} and an alias)")
        out[name] = coerce(pool_name, name, val, KEYS[name][1])
    transport = "unix" if out.get("path") is not None else "ssl" if out.get("ssl") else "tcp"
    for name in out:
        if transport not in KEYS[name][2]:
            where = {"unix": "a unix socket", "tcp": "redis:// without TLS (use rediss:// or ssl=true)",
                     "ssl": "TLS"}[transport]  # fmt: skip
            raise ConfigError(f"pool {pool_name!r}: option {name!r} does not apply to {where}")
    password = password_from_source(pool_name, raw)
    if password is not None:
        if "password" in out:
            raise ConfigError(f"pool {pool_name!r}: give the password once (password, password_env or password_file)")
        out["password"] = password
    if out.get("password") is None:
        out.pop("password", None)
    return out


class _CoreConnections:
    """What redis-py's pool interface asks of both adapters (this one and
    :class:`~gunicorn_pool.redis_async.AsyncRedisConnectionPool`) about connections: the pool
    core's, read from its slots."""

    _core: Any
    config: RedisConfig

    def _get_free_connections(self) -> list[Any]:
        core = self._core
        return core.connections(IDLE) if core is not None else []

    def _get_in_use_connections(self) -> set[Any]:
        core = self._core
        return set(core.connections(LENT)) if core is not None else set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.pool_name!r} {self.config.dsn}>"


class RedisConnectionPool(_CoreConnections, redis.ConnectionPool):
    """The ``connection_pool`` of the clients :meth:`RedisPool.client` builds: redis-py's
    pool interface over gunicorn_pool's :class:`~gunicorn_pool.pool.ConnectionPool`.

    redis-py calls ``get_connection()`` before a command (or a pipeline, a
    WATCH, a PubSub, a single-connection client) and ``release()`` after it:
    :meth:`ConnectionPool.getconn` and :meth:`~ConnectionPool.putconn`.
    The rest of the interface is what redis-py reads off its pool:
    ``connection_kwargs`` (protocol, decoding), ``get_encoder()``,
    ``get_protocol()``. The connections' life is the service's business:
    :meth:`disconnect` and :meth:`close` leave them to
    :meth:`RedisPool.close_pool`, and a fork is handled by the pool core.
    """

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(
            connection_class=connection_class(config),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            **config.connection_kwargs(),
        )
        self.config = config
        self._core: Optional[ConnectionPool] = None
        # The core's getconn/putconn, bound once: redis-py calls get_connection() and
        # release() around every command (bench/overhead.py --part redis).
        self._getconn: Callable[[], Any] = self._not_open
        self._putconn: Callable[..., None] = self._not_open

    def bind(self, core: ConnectionPool) -> None:
        """Lend connections of *core* from now on."""
        self._core = core
        self._getconn, self._putconn = core.getconn, core.putconn

    def _not_open(self, *args: Any, **kwargs: Any) -> Any:
        raise PoolClosed(f"pool {self.config.pool_name!r} is not open")

    @property
    def core(self) -> ConnectionPool:
        """The gunicorn_pool :class:`ConnectionPool` this adapter lends from."""
        if self._core is None:
            self._not_open()
        assert self._core is not None
        return self._core

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Check a connection out (waits at most the pool's ``timeout``: PoolTimeout)."""
        return self._getconn()

    def release(self, connection: Any) -> None:
        """Give *connection* back (the steps of :meth:`ConnectionPool.putconn`).

        One interrupted by a BaseException in flight (gevent.Timeout,
        KeyboardInterrupt, SystemExit) is dropped: a reply may still be on its
        way. A connection this pool has not lent (given back already, or
        reclaimed at the end of its request) is ignored, as redis-py's own
        pool does.
        """
        exc = _exc_info()[1]
        try:
            self._putconn(connection, discard=exc is not None and not isinstance(exc, Exception))
        except LeaseError:
            return

    def make_connection(self) -> Any:
        raise redis.RedisError("connections of a gunicorn_pool RedisPool are opened by the pool itself")

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Nothing: the connections belong to the worker's pool (:meth:`RedisPool.close_pool`)."""

    def close(self) -> None:
        """Nothing: see :meth:`disconnect`."""

    def reset(self) -> None:
        super().reset()  # redis-py's own (empty) bookkeeping; the connections are in the core


class PooledRedis(redis.Redis):
    """The ``redis.Redis`` of :meth:`RedisPool.client`: redis-py's client, minus the commands
    whose effect would outlast the command.

    Each command of this client takes a connection and gives it back right
    after, to other requests. A command that changes the session of its
    connection (``SELECT``, ``MULTI``, ``WATCH``, ``SUBSCRIBE``, ``CLIENT
    SETNAME``, ``AUTH``, ``HELLO``, ``CLIENT TRACKING``... : the hinted entries
    of :data:`~gunicorn_pool.connectors.redis.SESSION_COMMANDS`) can do nothing
    its caller wants there: the pool would reset the session at return, so the
    caller's next command would run outside the transaction, in database 0, or
    unsubscribed. They raise ``redis.RedisError`` naming what to use instead
    (``db`` key for SELECT, ``pipeline()`` for MULTI/WATCH, ``pubsub()``...),
    before anything is sent. A single-connection client (``with r.client() as
    c:``) keeps its connection for the block: it may send them, and its
    connection is reset (or closed) when it goes back.
    """

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """redis-py's, after refusing a session command on a per-command connection (see above)."""
        if self.connection is None and COMMAND_KINDS.get(args[0]) != 0:
            refuse_on_shared_client(self.connection_pool.config.pool_name, args)  # type: ignore[attr-defined]
        return self._execute_command(*args, **options)  # type: ignore[no-untyped-call]


class RedisPool(NamedPools["RedisConfig"]):
    """Redis pools keyed by name, one :class:`~gunicorn_pool.pool.ConnectionPool` each,
    used through :meth:`client`.

    *configs* maps names to URLs (``redis://``, ``rediss://``, ``unix://``) or
    dicts; a single URL or dict means ``{"default": value}``. Every config is
    validated here, so a typo fails at import of gunicorn.conf.py. The life
    cycle (open at boot, each connect ending with a PING, all at once; close at
    exit; figures) is :class:`~gunicorn_pool.service.NamedPools`'.
    """

    def __init__(self, configs: Union[Mapping[str, Any], str], *, name: str = "redis") -> None:
        super().__init__(parse_redis_configs(configs, name=name, service="RedisPool"), name=name)
        self._adapters: dict[str, RedisConnectionPool] = {}
        self._clients: dict[str, redis.Redis] = {}

    def _build(self, name: str, config: RedisConfig) -> ConnectionPool:
        adapter = self._adapters.get(name)
        if adapter is None:
            adapter = self._adapters.setdefault(name, RedisConnectionPool(config))
        return ConnectionPool(RedisConnector(config, kwargs=adapter.connection_kwargs), name=name, options=config)

    def pool(self, name: str = "default") -> ConnectionPool:
        """The :class:`~gunicorn_pool.pool.ConnectionPool` behind *name*, built on first use."""
        pool = super().pool(name)
        self._adapters[name].bind(pool)
        return pool

    def client(self, name: str = "default") -> redis.Redis:
        """A ``redis.Redis`` whose commands use this worker's pool *name* (one client per name,
        shared by every thread and greenlet: each command takes a connection and gives it back)."""
        adapter = self.connection_pool(name)
        client = self._clients.get(name)
        if client is None:
            client = self._clients.setdefault(name, PooledRedis(connection_pool=adapter))
        return client

    def connection_pool(self, name: str = "default") -> RedisConnectionPool:
        """The redis-py ``ConnectionPool`` of *name* (``redis.Redis(connection_pool=...)``)."""
        self.pool(name)
        return self._adapters[name]


_ONE_CONFIG_KEYS = {"host", "port", "path", "db", "password", "username", "ssl"}


def parse_redis_configs(configs: Union[Mapping[str, Any], str], *, name: str, service: str) -> dict[str, RedisConfig]:
    """Every named config of a Redis service (:class:`RedisPool`, and
    :class:`~gunicorn_pool.redis_async.AsyncRedisPool`), validated; a single URL or dict means
    ``{"default": value}``."""
    if isinstance(configs, str) or single_config(configs, _ONE_CONFIG_KEYS):
        configs = {"default": configs}
    if not configs:
        raise ConfigError(f"{service} {name!r}: no Redis server configured")
    return {key: parse_redis_config(key, val) for key, val in configs.items()}
