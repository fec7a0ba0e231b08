"""The service contract and the worker profile pools size themselves by.

A *pool service* is any object implementing :class:`PoolInterface`. The
worker finds every registered or reachable service once the app is loaded and
calls ``init_pool()`` on each, in the worker process, before the first
request; ``close_pool()`` runs when the worker exits.

Writing your own service::

    import socket
    from gunicorn_pool import PoolInterface, register

    class StatsdSocket(PoolInterface):
        def init_pool(self):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        def close_pool(self):
            self.sock.close()

    register(StatsdSocket(), name="statsd")

(:class:`~gunicorn_pool.redis.RedisPool` is the ready-made service for Redis.)
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Optional

__all__ = ["AsyncPoolInterface", "PoolInterface", "WorkerProfile", "current_profile", "set_profile", "worker_kind"]


class PoolInterface(abc.ABC):
    """A service holding per-process connections."""

    @abc.abstractmethod
    def init_pool(self) -> None:
        """Open the connections now, in the calling process.

        Called once per worker, after the app is loaded and before the first
        request. It should not raise for an unreachable server (the worker
        would fail to boot and gunicorn would halt the whole server); raise
        :class:`~gunicorn_pool.errors.PoolStartupError` only to stop the
        server's first start on purpose.
        """

    @abc.abstractmethod
    def close_pool(self) -> None:
        """Close the connections opened in this process."""

    def warm_pool(self) -> int:
        """Optional: give the connections opened by :meth:`init_pool` their first
        use now, before traffic; return how many were used."""
        return 0

    def stats(self) -> dict[str, Any]:
        """Figures for monitoring: ``{pool name: {stat: number}}``, or a flat
        ``{stat: number}``; empty unless the service has some."""
        return {}

    def connection_pools(self) -> dict[str, Any]:
        """Optional: the :class:`~gunicorn_pool.pool.ConnectionPool` objects this service
        opened in this process, by pool name (for observers such as OpenTelemetry)."""
        return {}


class AsyncPoolInterface(PoolInterface):
    """A service whose connections are asyncio ones: opened and closed in the worker's event loop.

    An ASGI worker (``gunicorn_pool.AsgiWorker``, ``gunicorn_pool.UvicornWorker``, or the hooks
    on gunicorn's ``asgi`` worker or uvicorn's) calls :meth:`ainit_pool` in the ASGI lifespan
    startup, before the app's own, and :meth:`aclose_pool` after the app's lifespan shutdown.
    No event loop runs while gunicorn loads the app, so :meth:`init_pool` opens nothing.
    """

    def init_pool(self) -> None:
        """Nothing: asyncio connections open in the ASGI lifespan (:meth:`ainit_pool`)."""

    def close_pool(self) -> None:
        """Drop what is still open without a round trip (the event loop may be gone: gunicorn's
        quick shutdown skips the lifespan shutdown)."""

    @abc.abstractmethod
    async def ainit_pool(self) -> None:
        """Open the connections now, in the running event loop (see :meth:`PoolInterface.init_pool`)."""

    @abc.abstractmethod
    async def aclose_pool(self) -> None:
        """Close the connections opened in this process, politely."""


@dataclasses.dataclass(frozen=True)
class WorkerProfile:
    """What kind of process the pools run in; sets their default sizes.

    ``kind`` is "sync", "thread", "gevent" or "asyncio" (an ASGI worker). Default sizes
    (explicit ``min_size``/``max_size`` always win):

    ======== ======== ==========
    kind     min_size max_size
    ======== ======== ==========
    sync     1        1
    thread   1        threads
    gevent   1        10
    asyncio  1        10
    ======== ======== ==========

    In an asyncio worker, up to ``worker_connections`` requests run at once (tasks), and
    synchronous pools serve ``def`` endpoints from the server's thread pool (Starlette: 40
    threads): both are capped at 10 per pool, the rest queue fairly, as under gevent.
    """

    kind: str = "sync"
    threads: int = 1
    first_boot: bool = False
    deadline: Optional[float] = None  # time.monotonic() by which warm-up ends
    timeout: Optional[float] = None  # gunicorn's --timeout, when known

    def query_bound(self) -> Optional[float]:
        """Seconds a query may wait for the server when the user set no bound: gunicorn's
        ``timeout`` in gthread and gevent workers (gunicorn kills a hung sync worker at
        ``timeout`` itself, but not those); None in sync workers."""
        return self.timeout if self.kind in ("thread", "gevent", "asyncio") else None

    def default_sizes(self) -> tuple[int, int]:
        """``(min_size, max_size)`` for a pool that does not set them."""
        if self.kind == "thread":
            return 1, max(1, self.threads)
        if self.kind in ("gevent", "asyncio"):
            return 1, 10
        return 1, 1


#: Modules of worker classes that run an asyncio event loop and serve ASGI apps.
ASGI_WORKER_MODULES = frozenset({"gunicorn.workers.gasgi", "uvicorn_worker._workers", "uvicorn.workers"})


def worker_kind(cls: type) -> str:
    """ "asyncio", "gevent", "thread" or "sync": the concurrency model of a gunicorn worker class.

    Read off the class's bases by module name, so nothing is imported.
    """
    modules = {c.__module__ for c in getattr(cls, "__mro__", ())}
    if modules & ASGI_WORKER_MODULES:
        return "asyncio"
    if "gunicorn.workers.ggevent" in modules:
        return "gevent"
    if "gunicorn.workers.gthread" in modules:
        return "thread"
    return "sync"


_profile = [WorkerProfile()]


def current_profile() -> WorkerProfile:
    """The profile of this process (sync, single-threaded until a worker sets one)."""
    return _profile[0]


def set_profile(profile: WorkerProfile) -> None:
    """Set this process's profile (the worker does it before its pools open)."""
    _profile[0] = profile
