"""The named-pools service over asyncio pools: :class:`AsyncNamedPools`, the service of
:class:`~gunicorn_pool.service.NamedPools` for asyncio drivers, opened in the worker's event loop
(the ASGI lifespan). Apart from :mod:`.service` so that a WSGI worker, whose pools are all sync,
never imports asyncio (31 modules, ~1.5 MiB of private memory per worker)."""

from __future__ import annotations

import logging
import os
import time

from ._concurrency import arun_all
from .base import AsyncPoolInterface, WorkerProfile, current_profile
from .errors import ConnectError
from .pool_async import AsyncConnectionPool
from .service import C, NamedConfig, _Named, _opened, _warm_up_failed, settle_boot

__all__ = ["AsyncNamedPools", "aopen_at_boot"]

logger = logging.getLogger("gunicorn_pool")


async def aopen_at_boot(pool: AsyncConnectionPool, name: str, config: NamedConfig, profile: WorkerProfile) -> None:
    """:func:`open_at_boot` for an asyncio pool, in the running event loop: the same deadline,
    policy and log lines."""
    start = time.monotonic()
    try:
        opened = await pool.open(deadline=profile.deadline)
    except ConnectError as exc:
        _warm_up_failed(exc, name, config, profile)
        return
    _opened(pool, name, config, start, opened)


class AsyncNamedPools(_Named[C, AsyncConnectionPool], AsyncPoolInterface):
    """Named pools, one :class:`~gunicorn_pool.pool_async.AsyncConnectionPool` each: the service
    of :class:`NamedPools` for asyncio drivers, opened in the worker's event loop (the ASGI
    lifespan: :meth:`ainit_pool`) and closed there (:meth:`aclose_pool`)."""

    async def ainit_pool(self) -> None:
        """Open ``min_size`` connections of every named pool, at once, in the running event loop,
        within the worker's warm-up deadline, under the boot policy of :meth:`NamedPools.init_pool`."""
        self._closed_in = None
        profile = current_profile()
        results = await arun_all({key: self._aopen(key, cfg, profile) for key, cfg in self.configs.items()},
                                 deadline=profile.deadline)  # fmt: skip
        settle_boot(results, self._label)

    async def _aopen(self, key: str, cfg: C, profile: WorkerProfile) -> None:
        await aopen_at_boot(self._prepared(key, cfg, profile), key, cfg, profile)

    async def awarm_pool(self) -> int:
        """Give each open connection its first use now (see AsyncConnectionPool.warm)."""
        used = 0
        for pool in list(self._pools.values()):
            used += await pool.warm()
        return used

    async def aclose_pool(self) -> None:
        """Close every named pool opened in this process, politely; later use raises PoolClosed
        (until :meth:`ainit_pool` opens them again)."""
        self._closed_in = os.getpid()
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()

    def close_pool(self) -> None:
        """Drop what is still open, without a round trip: the event loop is gone (gunicorn's quick
        shutdown skips the lifespan shutdown), so nothing can be awaited. The servers end the
        sessions when the process exits and its sockets close."""
        self._closed_in = os.getpid()
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            dropped = pool.drop_all()
            if dropped:
                logger.info("pool %s (%s): dropped %d connection(s) at exit (no event loop to close them)",
                            pool.name, pool.dsn, dropped)  # fmt: skip
