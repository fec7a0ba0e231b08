"""The asyncio engine services: ``EnginePool(..., asyncio=True)`` and ``adopt(async_engine)``.

They are :class:`~gunicorn_pool.sqlalchemy.EnginePool` and
:class:`~gunicorn_pool.sqlalchemy.AdoptedEngines` (the same configs,
validation, engine handling and figures) on the asyncio service life cycle
(:class:`~gunicorn_pool.service.AsyncNamedPools`): each engine's pool becomes
an :class:`~gunicorn_pool.sqlalchemy.AsyncGunicornPool`, opened in the
worker's event loop in the ASGI lifespan startup (``min_size`` sessions before
the first request, within the warm-up deadline), sized for the asyncio worker,
and closed in the lifespan shutdown (dropped without a round trip if the loop
is gone first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..service_async import AsyncNamedPools
from .pool import GunicornPool
from .pool_async import AsyncGunicornPool
from .service import AdoptedEngines, EngineConfig, EnginePool

__all__ = ["AsyncAdoptedEngines", "AsyncEnginePool"]

#: Drivers used for a URL that names none: the asyncio ones gunicorn_pool serves.
ASYNC_DRIVERS = {"mysql": "mysql+aiomysql", "mariadb": "mariadb+aiomysql", "postgresql": "postgresql+psycopg",
                 "postgres": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}  # fmt: skip


class _AsyncEngines(AsyncNamedPools[EngineConfig]):
    """What the two asyncio engine services add to the synchronous ones: the life cycle of
    :class:`AsyncNamedPools` (nothing opens outside the event loop) and ``AsyncEngine``s."""

    _pool_class: type[GunicornPool] = AsyncGunicornPool

    if TYPE_CHECKING:  # _EngineService's, beside this class in the services below
        _made: dict[int, tuple[Engine, AsyncGunicornPool]]

        def _current(self) -> dict[str, AsyncGunicornPool]: ...

    def init_pool(self) -> None:
        """Nothing: the engines' pools open in the ASGI lifespan (:meth:`ainit_pool`)."""

    def warm_pool(self) -> int:
        """Nothing outside the event loop (see :meth:`awarm_pool`)."""
        return 0

    def engine(self, name: str = "default") -> AsyncEngine:
        """The ``AsyncEngine`` *name*, on this worker's pool."""
        sync_engine = self._made[id(self.pool(name))][0]
        return AsyncEngine._retrieve_proxy_for_target(sync_engine)

    def engines(self) -> dict[str, AsyncEngine]:
        """Every ``AsyncEngine``, by name (built now where not yet)."""
        return {key: self.engine(key) for key in self.configs}

    async def aclose_pool(self) -> None:
        """Close every engine's pool in this process, in the running loop (also a pool a later
        ``await engine.dispose()`` put in place); later use raises PoolClosed."""
        current = self._current()
        await super().aclose_pool()
        for pool in current.values():
            await pool.core.close()
        self._forget_closed()

    def close_pool(self) -> None:
        """Drop what is still open without a round trip (the event loop is gone)."""
        current = self._current()
        super().close_pool()
        for pool in current.values():
            pool.core.drop_all()
        self._forget_closed()

    def _forget_closed(self) -> None:
        self._made = {key: m for key, m in self._made.items() if not m[1].core.closed}


class AsyncEnginePool(_AsyncEngines, EnginePool):  # type: ignore[misc]  # engine(): an AsyncEngine
    """``EnginePool(configs, asyncio=True)``: named ``create_async_engine()`` engines built in
    each worker, each on an :class:`AsyncGunicornPool` opened in the worker's event loop::

        # gunicorn.conf.py
        gunicorn_pool.register(EnginePool({"default": "postgresql://app@10.0.0.5/shop"},
                                          asyncio=True), name="orm")
        worker_class = "gunicorn_pool.AsgiWorker"       # or gunicorn_pool.UvicornWorker

        # app.py
        engine = gunicorn_pool.get("orm").engine()      # an AsyncEngine
    """

    _drivers: Mapping[str, str] = ASYNC_DRIVERS

    def _engine_for(self, name: str, config: EngineConfig) -> Engine:
        assert config.url is not None
        return create_async_engine(config.url, **config.engine_kwargs).sync_engine


class AsyncAdoptedEngines(_AsyncEngines, AdoptedEngines):  # type: ignore[misc]  # engine(): an AsyncEngine
    """The service :func:`~gunicorn_pool.sqlalchemy.adopt` registers for ``AsyncEngine``s: the
    app's own engines, on pools opened in each worker's event loop."""

    async def ainit_pool(self) -> None:
        """Find the engines, then open their pools in the running loop (see AdoptedEngines.init_pool)."""
        if self._found():
            await super().ainit_pool()
