"""``gunicorn -k gunicorn_pool.Worker``: the sync worker with per-worker pools.

One request at a time, so each named pool defaults to one connection per
worker (``min_size = max_size = 1``). With ``--threads N`` (N > 1) a sync
worker would serve one request at a time and ignore the threads; gunicorn
itself swaps ``-k sync`` for gthread then, so this class does the same and
runs :class:`gunicorn_pool.ThreadWorker`, logging that it did.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.sync import SyncWorker

from .base import PoolWorkerMixin


class Worker(PoolWorkerMixin, SyncWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's SyncWorker, opening its pools before the first request."""

    def __new__(cls, age: int, ppid: int, sockets: Any, app: Any, timeout: int, cfg: Any, log: Any) -> Any:
        if cls is Worker and int(cfg.threads or 1) > 1:
            from .gthread import ThreadWorker

            return ThreadWorker(age, ppid, sockets, app, timeout, cfg, log)
        return super().__new__(cls)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if int(cfg.threads or 1) > 1:
            log.info("gunicorn_pool.Worker with threads=%s: running gunicorn_pool.ThreadWorker", cfg.threads)
        super().check_config(cfg, log)
