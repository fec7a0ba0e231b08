"""``gunicorn -k gunicorn_pool.UvicornWorker``: uvicorn-worker's ``UvicornWorker`` with pools.

The same life cycle as :class:`gunicorn_pool.AsgiWorker` on uvicorn's server
(``pip install 'gunicorn-pool[uvicorn]'``): synchronous pools open in
``load_wsgi``, asyncio pools in the ASGI lifespan startup in the worker's own
loop, every request in a request scope, pools closed at exit.
"""

from __future__ import annotations

from uvicorn_worker import UvicornWorker as _UvicornWorker

from .base import PoolWorkerMixin


class UvicornWorker(PoolWorkerMixin, _UvicornWorker):  # type: ignore[misc]  # uvicorn-worker is untyped
    """uvicorn-worker's worker, opening its pools before the first request."""
