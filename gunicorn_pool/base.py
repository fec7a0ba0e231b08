"""The service contract and the worker profile pools size themselves by.

A *pool service* is any object implementing :class:`PoolInterface`. The
worker finds every registered or reachable service once the app is loaded and
calls ``init_pool()`` on each, in the worker process, before the first
request; ``close_pool()`` runs when the worker exits. This is the seed
framework's "walk the container, call initPool() on every PoolInterface".

Writing your own service::

    import redis
    from gunicorn_pool import PoolInterface, register

    class RedisService(PoolInterface):
        def init_pool(self):
            self.client = redis.Redis(socket_connect_timeout=2)
            self.client.ping()
        def close_pool(self):
            self.client.close()

    register(RedisService(), name="redis")
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Optional

__all__ = ["PoolInterface", "WorkerProfile", "current_profile", "set_profile"]


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
        """Figures for monitoring; empty unless the service has some."""
        return {}


@dataclasses.dataclass(frozen=True)
class WorkerProfile:
    """What kind of process the pools run in; sets their default sizes.

    ``kind`` is "sync", "thread" or "gevent". Default sizes (explicit
    ``min_size``/``max_size`` always win):

    ======== ======== ==========
    kind     min_size max_size
    ======== ======== ==========
    sync     1        1
    thread   1        threads
    gevent   1        10
    ======== ======== ==========
    """

    kind: str = "sync"
    threads: int = 1
    first_boot: bool = False
    deadline: Optional[float] = None  # time.monotonic() by which warm-up ends

    def default_sizes(self) -> tuple[int, int]:
        if self.kind == "thread":
            return 1, max(1, self.threads)
        if self.kind == "gevent":
            return 1, 10
        return 1, 1


_profile = [WorkerProfile()]


def current_profile() -> WorkerProfile:
    """The profile of this process (sync, single-threaded until a worker sets one)."""
    return _profile[0]


def set_profile(profile: WorkerProfile) -> None:
    """Set this process's profile (the worker does it before warm-up)."""
    _profile[0] = profile
