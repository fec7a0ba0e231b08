"""AsyncDatabasePool: named database pools for asyncio apps (FastAPI, Starlette...) in one worker.

Register it in gunicorn.conf.py (or in app code) and use it in ``async def`` views::

    # gunicorn.conf.py
    import gunicorn_pool
    gunicorn_pool.register(gunicorn_pool.AsyncDatabasePool({
        "default": "postgresql://app@127.0.0.1:5432/shop",
    }), name="db")
    worker_class = "gunicorn_pool.AsgiWorker"      # or gunicorn_pool.UvicornWorker

    # app.py
    import gunicorn_pool
    @app.get("/products")
    async def products():
        async with gunicorn_pool.get("db").connection() as conn:   # a psycopg AsyncConnection
            cur = await conn.execute("SELECT name FROM products LIMIT 10")
            return await cur.fetchall()

Drivers: PostgreSQL through psycopg 3's ``AsyncConnection``, SQLite through
aiosqlite (one thread per connection, the driver's own). The configs are
:class:`DatabasePool`'s (same keys, URLs, validation and defaults:
:func:`~gunicorn_pool.database.parse_databases`), and so is every rule of
the pool (:class:`~gunicorn_pool.core.PoolCore`) and of each database
(the connector modules share them with the synchronous connectors).

The connections open in the worker's event loop, in the ASGI lifespan
startup, before the app's own (``ainit_pool()``; with the lifespan off, on
the first request), and close in the lifespan shutdown (``aclose_pool()``).
When the loop is gone before that (gunicorn's quick shutdown), ``close_pool()``
drops them without a round trip.

``async with db.connection(name) as conn:`` commits what the block left open
when it exits cleanly, rolls back and resets the session when it raises, and
drops the connection when the task is cancelled (a client gone,
``asyncio.timeout``): the connection may be mid-protocol, so it is never lent
again, and its capacity comes back at once. ``await db.getconn(name)`` /
``await db.putconn(conn)`` are the same without the block; a lease still out
when its request ends is reclaimed.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

from .base import WorkerProfile
from .config import ConfigValue, DatabaseConfig
from .connectors import async_connector_class, make_async_connector
from .database import before_open, parse_databases
from .errors import ConfigError, LeaseError
from .pool_async import AsyncConnectionPool, AsyncLease
from .service_async import AsyncNamedPools

__all__ = ["ASYNC_ADAPTERS", "AsyncDatabasePool"]

logger = logging.getLogger("gunicorn_pool")

#: Adapters with an asyncio driver, and the driver.
ASYNC_ADAPTERS = {"mysql": "aiomysql", "postgresql": "psycopg (AsyncConnection)", "sqlite": "aiosqlite"}
#: Drivers of the synchronous pools that have no asyncio API, and what to do instead.
_SYNC_ONLY_DRIVERS = {
    "psycopg2": "install psycopg[binary] and drop the driver key",
    "mysqlclient": "drop the driver key: aiomysql is built on PyMySQL",
}


class AsyncDatabasePool(AsyncNamedPools[DatabaseConfig]):
    """Database pools keyed by name, one :class:`~gunicorn_pool.pool_async.AsyncConnectionPool`
    each, for asyncio code.

    *configs* maps names to dicts or URLs, exactly as :class:`~gunicorn_pool.DatabasePool`'s;
    a single dict or URL means ``{"default": value}``. Every config is validated here. Not
    served yet: ``replicas``, and adapters without an asyncio driver (``dbapi``).
    """

    _what = "database"

    def __init__(self, configs: Union[Mapping[str, ConfigValue], str], *, name: str = "database") -> None:
        parsed = parse_databases(configs, name=name, service="AsyncDatabasePool")
        for key, cfg in parsed.items():
            if cfg.adapter not in ASYNC_ADAPTERS:
                raise ConfigError(
                    f"pool {key!r}: AsyncDatabasePool has no asyncio driver for adapter {cfg.adapter!r}"
                    f" (it serves {', '.join(sorted(ASYNC_ADAPTERS))}); use DatabasePool from def endpoints"
                )
            if cfg.driver in _SYNC_ONLY_DRIVERS:
                raise ConfigError(
                    f"pool {key!r} ({cfg.address}): driver {cfg.driver!r} has no asyncio API; AsyncDatabasePool runs"
                    f" {cfg.adapter} on {ASYNC_ADAPTERS[cfg.adapter]} ({_SYNC_ONLY_DRIVERS[cfg.driver]}), or use"
                    " DatabasePool from def endpoints"
                )
            if cfg.replicas:
                raise ConfigError(f"pool {key!r}: AsyncDatabasePool does not serve replicas yet (DatabasePool does)")
        super().__init__(parsed, name=name)

    def import_drivers(self, *, gevent: bool) -> None:
        """Import the asyncio connectors and drivers these pools need, in this process (the
        master: workers inherit them). Asyncio workers are never gevent workers."""
        if gevent:
            return
        for adapter in {cfg.adapter for cfg in self.configs.values()}:
            async_connector_class(adapter)

    def _build(self, name: str, config: DatabaseConfig) -> AsyncConnectionPool:
        return AsyncConnectionPool(make_async_connector(config), name=name, options=config)

    def _before_open(self, name: str, config: DatabaseConfig, profile: WorkerProfile) -> None:
        before_open(name, config, profile)

    # -- use ---------------------------------------------------------------------------------

    def connection(self, name: str = "default", *, timeout: Optional[float] = None) -> AsyncLease:
        """``async with db.connection("default") as conn:`` lends a driver connection (see the
        module docstring); waits at most *timeout* seconds (the pool's ``timeout`` by default)."""
        pool = self._pools.get(name)  # pool()'s first test, here too: every request passes here
        return AsyncLease(pool if pool is not None and not pool.closed else self.pool(name), timeout)

    async def getconn(self, name: str = "default", *, timeout: Optional[float] = None) -> Any:
        """Take a connection of pool *name*; give it back with :meth:`putconn`."""
        return await self.pool(name).getconn(timeout)

    async def putconn(self, conn: Any, *, commit: bool = False, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn`, to the pool that lent it (see
        :meth:`AsyncConnectionPool.putconn`)."""
        for pool in list(self._pools.values()):
            if pool.has_lent(conn):
                await pool.putconn(conn, commit=commit, discard=discard)
                return
        raise LeaseError(f"AsyncDatabasePool {self.name!r}: putconn() of a connection none of its pools has lent out")

    def prefix(self, name: str = "default") -> str:
        """The table prefix configured for *name*, kept for the application."""
        return self._config(name).prefix
