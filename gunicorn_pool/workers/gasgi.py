"""``gunicorn -k gunicorn_pool.AsgiWorker``: gunicorn's own ASGI worker (``-k asgi``) with pools.

FastAPI, Starlette, Quart, Litestar or Django's ASGI handler, one event loop per
worker. Synchronous pools open in ``load_wsgi`` as in every other worker (``def``
endpoints use them from the server's thread pool); asyncio pools
(:class:`gunicorn_pool.AsyncDatabasePool`, :class:`gunicorn_pool.AsyncRedisPool`)
open in the ASGI lifespan startup, in the worker's own loop, before the app's
own startup, and close after its shutdown (no loop runs while gunicorn loads the
app). Every HTTP and WebSocket request runs in a request scope
(:mod:`gunicorn_pool.asgi`). Up to ``worker_connections`` requests run at once:
each pool defaults to ``max_size = 10`` (``min_size = 1``), the rest queue fairly.
A synchronous lease taken on the event loop's own thread is refused. Needs
gunicorn >= 24.
"""

from __future__ import annotations

from gunicorn.workers.gasgi import ASGIWorker as _ASGIWorker

from .base import PoolWorkerMixin


class AsgiWorker(PoolWorkerMixin, _ASGIWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's ASGI worker, opening its pools before the first request."""
