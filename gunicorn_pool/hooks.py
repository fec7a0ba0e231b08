"""Hooks for teams that keep a stock gunicorn worker class.

In gunicorn.conf.py::

    from gunicorn_pool import hooks
    post_worker_init = hooks.post_worker_init
    worker_exit = hooks.worker_exit

gunicorn takes one callable per hook, so to keep your own hooks, call ours
from them::

    from gunicorn_pool import hooks

    def post_worker_init(worker):
        hooks.post_worker_init(worker)   # pools first: your code may use them
        warm_my_caches(worker)

    def worker_exit(server, worker):
        flush_my_buffers(worker)
        hooks.worker_exit(server, worker)

``post_worker_init`` runs after gevent patching and after the app is loaded,
as the worker classes' ``load_wsgi`` does. ``worker_exit`` acts only in the
worker's own process: gunicorn may call it in the master (Arbiter.kill_worker
on ESRCH), where closing would touch nothing of ours.
"""

from __future__ import annotations

import os
from typing import Any

from . import lifecycle

__all__ = ["post_worker_init", "worker_exit"]


def post_worker_init(worker: Any) -> None:
    """Open every pool service in this worker (gunicorn ``post_worker_init``)."""
    lifecycle.boot(worker)


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's pools (gunicorn ``worker_exit``), in its own pid only."""
    if getattr(worker, "pid", None) == os.getpid():
        lifecycle.shutdown()
