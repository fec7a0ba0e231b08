"""AsyncRedisPool: named Redis pools for asyncio apps, used through ``redis.asyncio``'s own client.

Register it in gunicorn.conf.py (or in app code) and use ``client()`` in ``async def`` views::

    # gunicorn.conf.py
    import gunicorn_pool
    gunicorn_pool.register(gunicorn_pool.AsyncRedisPool({"default": "redis://127.0.0.1:6379/0"}),
                           name="redis")
    worker_class = "gunicorn_pool.AsgiWorker"

    # app.py
    @app.get("/hits")
    async def hits():
        return {"hits": await gunicorn_pool.get("redis").client().incr("hits")}

The twin of :class:`~gunicorn_pool.redis.RedisPool`: the same configs
(:class:`~gunicorn_pool.redis.RedisConfig`: URLs, keys, validation, defaults),
the same refusal of session commands on the shared client, the same tracking
and reset of what a lease leaves (:mod:`gunicorn_pool.connectors.redis_async`),
over :class:`~gunicorn_pool.pool_async.AsyncConnectionPool`. ``client(name)``
is a ``redis.asyncio.Redis`` whose ``connection_pool`` checks a connection
out of the pool before each command (or pipeline, PubSub, single-connection
client) and back in after it. The connections open in the ASGI lifespan
startup and close in its shutdown; a task cancelled mid-command leaves its
connection disconnected by redis-py, and it is dropped, never lent again.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Mapping, Optional, Union

import redis
import redis.asyncio

from .connectors.redis import COMMAND_KINDS, refuse_on_shared_client
from .connectors.redis_async import _NO_MAINT, AsyncRedisConnector, async_connection_class, connection_kwargs
from .errors import LeaseError, PoolClosed
from .pool_async import AsyncConnectionPool
from .redis import RedisConfig, _CoreConnections, parse_redis_configs
from .service_async import AsyncNamedPools

__all__ = ["AsyncRedisConnectionPool", "AsyncRedisPool", "PooledAsyncRedis"]

logger = logging.getLogger("gunicorn_pool")

_exc_info = sys.exc_info


class AsyncRedisConnectionPool(_CoreConnections, redis.asyncio.ConnectionPool):
    """The ``connection_pool`` of the clients :meth:`AsyncRedisPool.client` builds: redis-py's
    asyncio pool interface over gunicorn_pool's
    :class:`~gunicorn_pool.pool_async.AsyncConnectionPool` (``get_connection()`` and ``release()``
    are its ``getconn()`` and ``putconn()``); what redis-py reads off its pool (encoder, protocol,
    ``connection_kwargs``) is redis-py's own."""

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(connection_class=async_connection_class(config), maint_notifications_config=_NO_MAINT,
                         **connection_kwargs(config))  # fmt: skip
        self.config = config
        self._core: Optional[AsyncConnectionPool] = None
        self._getconn: Callable[..., Any] = self._not_open
        self._putconn: Callable[..., Any] = self._not_open

    def bind(self, core: AsyncConnectionPool) -> None:
        """Lend connections of *core* from now on."""
        self._core = core
        self._getconn, self._putconn = core.getconn, core.putconn

    async def _not_open(self, *args: Any, **kwargs: Any) -> Any:
        raise PoolClosed(f"pool {self.config.pool_name!r} is not open")

    @property
    def core(self) -> Optional[AsyncConnectionPool]:
        """The gunicorn_pool pool this adapter lends from (None before the service built it)."""
        return self._core

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        """Check a connection out (waits at most the pool's ``timeout``: PoolTimeout)."""
        return await self._getconn()

    async def release(self, connection: Any) -> None:
        """Give *connection* back; one this pool has not lent (given back already, or reclaimed at
        the end of its request) is ignored, as redis-py's own pool does."""
        exc = _exc_info()[1]
        try:
            await self._putconn(connection, discard=exc is not None and not isinstance(exc, Exception))
        except LeaseError:
            return

    def make_connection(self) -> Any:
        raise redis.RedisError("connections of a gunicorn_pool AsyncRedisPool are opened by the pool itself")

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Nothing: the connections belong to the worker's pool (:meth:`AsyncRedisPool.aclose_pool`)."""

    async def aclose(self) -> None:
        """Nothing: see :meth:`disconnect`."""


class PooledAsyncRedis(redis.asyncio.Redis):
    """The ``redis.asyncio.Redis`` of :meth:`AsyncRedisPool.client`: redis-py's asyncio client,
    minus the commands whose effect would outlast the command (as
    :class:`~gunicorn_pool.redis.PooledRedis`: ``SELECT``, ``MULTI``, ``SUBSCRIBE``... raise
    ``redis.RedisError`` naming what to use instead, before anything is sent)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """redis-py's, after refusing a session command on a per-command connection."""
        if self.connection is None and COMMAND_KINDS.get(args[0]) != 0:
            refuse_on_shared_client(self.connection_pool.config.pool_name, args)  # type: ignore[attr-defined]
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class AsyncRedisPool(AsyncNamedPools[RedisConfig]):
    """Redis pools keyed by name, one :class:`~gunicorn_pool.pool_async.AsyncConnectionPool`
    each, used through :meth:`client` (see the module docstring).

    *configs* maps names to URLs (``redis://``, ``rediss://``, ``unix://``) or dicts, exactly as
    :class:`~gunicorn_pool.redis.RedisPool`'s; a single URL or dict means ``{"default": value}``.
    """

    def __init__(self, configs: Union[Mapping[str, Any], str], *, name: str = "redis") -> None:
        super().__init__(parse_redis_configs(configs, name=name, service="AsyncRedisPool"), name=name)
        self._adapters: dict[str, AsyncRedisConnectionPool] = {}
        self._clients: dict[str, PooledAsyncRedis] = {}

    def _build(self, name: str, config: RedisConfig) -> AsyncConnectionPool:
        adapter = self._adapters.get(name)
        if adapter is None:
            adapter = self._adapters.setdefault(name, AsyncRedisConnectionPool(config))
        connector = AsyncRedisConnector(config, kwargs=adapter.connection_kwargs)
        return AsyncConnectionPool(connector, name=name, options=config)

    def pool(self, name: str = "default") -> AsyncConnectionPool:
        """The :class:`~gunicorn_pool.pool_async.AsyncConnectionPool` behind *name*, built on first use."""
        pool = super().pool(name)
        self._adapters[name].bind(pool)
        return pool

    def client(self, name: str = "default") -> PooledAsyncRedis:
        """A ``redis.asyncio.Redis`` whose commands use this worker's pool *name* (one client per
        name, shared by every task: each command takes a connection and gives it back)."""
        adapter = self.connection_pool(name)
        client = self._clients.get(name)
        if client is None:
            client = self._clients.setdefault(name, PooledAsyncRedis(connection_pool=adapter))
        return client

    def connection_pool(self, name: str = "default") -> AsyncRedisConnectionPool:
        """The ``redis.asyncio`` ``ConnectionPool`` of *name* (``redis.asyncio.Redis(connection_pool=...)``)."""
        self.pool(name)
        return self._adapters[name]
