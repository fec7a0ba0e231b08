"""gunicorn-pool: per-worker database connection pools for gunicorn.

``gunicorn -k gunicorn_pool.Worker app:app`` boots workers that, once the app
is loaded and before the first request, open the connections of every
registered pool service: one independent pool set per worker process.

Public API:

- :class:`DatabasePool`: named database pools (MySQL/MariaDB, PostgreSQL,
  SQLite, any DB-API driver); :class:`RedisPool`: named Redis pools used
  through redis-py's own client (needs the ``redis`` extra, imported only
  when asked for); :class:`PoolInterface`, the contract of any pool service.
- :class:`AsyncDatabasePool` (PostgreSQL through psycopg's ``AsyncConnection``,
  SQLite through aiosqlite) and :class:`AsyncRedisPool` (``redis.asyncio``):
  the same pools for asyncio apps under :class:`AsgiWorker` or
  :class:`UvicornWorker`, opened in the ASGI lifespan (imported only when
  asked for); :class:`AsyncPoolInterface`, the contract of such a service.
- :mod:`gunicorn_pool.sqlalchemy` (``[sqlalchemy]``/``[flask]`` extras, imported only when
  asked for): SQLAlchemy engines and Flask-SQLAlchemy apps on per-worker pools
  (``adopt(db)``, ``EnginePool``, the ``GunicornPool`` pool class).
- :class:`ConnectionPool`, the pool core, and :class:`PoolOptions`, its knobs.
- :func:`register`, :func:`get`, :func:`configure`: the registry.
- :func:`request_connection`, :func:`request_scope`: a connection for the rest
  of the current request; a request boundary outside gunicorn.
- Worker classes :class:`Worker` (sync), :class:`ThreadWorker` (gthread),
  :class:`GeventWorker` (gevent); :mod:`gunicorn_pool.hooks` for stock workers.
- Errors: :class:`PoolError` and its subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import request as _request
from .base import AsyncPoolInterface, PoolInterface
from .config import DatabaseConfig, mask_dsn, parse_config
from .database import DatabasePool
from .errors import (
    ConfigError,
    ConnectError,
    LeaseError,
    PoolClosed,
    PoolError,
    PoolStartupError,
    PoolTimeout,
    TooManyRequests,
)
from .options import PoolOptions
from .pool import ConnectionPool
from .registry import configure, get, register, registered, unregister
from .request import request_scope

if TYPE_CHECKING:
    from .database_async import AsyncDatabasePool
    from .redis import RedisPool
    from .redis_async import AsyncRedisPool

__version__ = "0.1.0"

__all__ = [
    "AsgiWorker", "AsyncDatabasePool", "AsyncPoolInterface", "AsyncRedisPool", "ConfigError", "ConnectError",
    "ConnectionPool", "DatabaseConfig", "DatabasePool", "GeventWorker", "LeaseError", "PoolClosed", "PoolError",
    "PoolInterface", "PoolOptions", "PoolStartupError", "PoolTimeout", "RedisPool", "ThreadWorker",
    "TooManyRequests", "UvicornWorker", "Worker", "configure", "get", "mask_dsn", "parse_config", "register",
    "registered", "request_connection", "request_scope", "unregister",
]  # fmt: skip


def request_connection(service: Any, name: str = "default") -> Any:
    """The connection of *service*'s pool *name* for the rest of the current request, given back
    when it ends: the request is one transaction, committed if it succeeded, rolled back if it
    raised or answered 5xx (see :func:`gunicorn_pool.request.request_connection`).

    *service* is a registered name (``gunicorn_pool.request_connection("db")``) or a service
    object such as a :class:`DatabasePool`."""
    return _request.request_connection(get(service) if isinstance(service, str) else service, name)


def __getattr__(name: str) -> Any:
    # Worker classes import gunicorn (and gevent): load them only when asked.
    if name in ("Worker", "ThreadWorker", "GeventWorker", "AsgiWorker", "UvicornWorker"):
        from . import workers

        return getattr(workers, name)
    if name == "RedisPool":  # imports redis-py
        from .redis import RedisPool

        return RedisPool
    if name == "AsyncDatabasePool":  # imports asyncio's machinery; its drivers load per adapter
        from .database_async import AsyncDatabasePool

        return AsyncDatabasePool
    if name == "AsyncRedisPool":  # imports redis.asyncio
        from .redis_async import AsyncRedisPool

        return AsyncRedisPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
