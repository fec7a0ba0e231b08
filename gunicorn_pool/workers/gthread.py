"""``gunicorn -k gunicorn_pool.ThreadWorker --threads N``: gthread with pools.

Up to N requests run at once in the worker's thread pool, so each named pool
defaults to ``max_size = N`` (``min_size = 1`` opened at boot): no request
thread ever waits for a connection unless you size it smaller.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker

from .base import PoolWorkerMixin


class ThreadWorker(PoolWorkerMixin, _GThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gthread worker, opening its pools before the first request."""
