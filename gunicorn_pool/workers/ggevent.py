"""``gunicorn -k gunicorn_pool.GeventWorker``: gevent with bounded pools.

Up to ``worker_connections`` greenlets (1000 by default) may want a
connection at once; each named pool defaults to ``max_size = 10`` with
``min_size = 1`` opened at boot, and extra greenlets queue in arrival order,
each for at most the pool's ``timeout``. The pools are initialised after
gunicorn's ``monkey.patch_all()``, so their waiters park on gevent's hub and PyMySQL's
socket I/O yields to the hub. Needs the ``gevent`` extra
(``pip install gunicorn-pool[gevent]``: gevent and packaging).
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

from .base import PoolWorkerMixin


class GeventWorker(PoolWorkerMixin, _GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's gevent worker, opening its pools before the first request."""
