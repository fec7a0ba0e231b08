"""Hooks for teams that keep a stock gunicorn worker class.

In gunicorn.conf.py::

    from gunicorn_pool import hooks
    when_ready = hooks.when_ready              # optional: drivers imported once, in the master
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

ASGI apps are told apart (gunicorn's ``asgi`` worker, uvicorn's, or an app
whose ``__call__`` is a coroutine): they get the ASGI request scope and their
asyncio pools open in the lifespan, never the WSGI middleware.

gunicorn's dirty workers (gunicorn >= 25, ``dirty_apps``) get their own pools
with one more hook, sized for ``dirty_threads``::

    dirty_worker_init = hooks.dirty_worker_init
"""

from __future__ import annotations

import os
from typing import Any

from . import lifecycle

__all__ = ["dirty_worker_exit", "dirty_worker_init", "post_worker_init", "when_ready", "worker_exit"]


def when_ready(server: Any) -> None:
    """Import the registered pools' drivers in the master, before the first fork (gunicorn
    ``when_ready``), as the gunicorn_pool worker classes do: each worker then inherits them
    (psycopg: ~150-250 ms per boot and respawn). psycopg is left to gevent workers."""
    lifecycle.prepare_master(server.worker_class)


def post_worker_init(worker: Any) -> None:
    """Open every pool service in this worker (gunicorn ``post_worker_init``)."""
    lifecycle.boot(worker)


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's pools (gunicorn ``worker_exit``), in its own pid only."""
    if getattr(worker, "pid", None) == os.getpid():
        lifecycle.shutdown()


def dirty_worker_init(worker: Any) -> None:
    """Open the pool services in a dirty worker (gunicorn ``dirty_worker_init``, >= 25), after its
    apps loaded; they close when the worker closes its apps at exit."""
    lifecycle.boot_dirty(worker)


def dirty_worker_exit(arbiter: Any, worker: Any) -> None:
    """Nothing to do: gunicorn calls this in the dirty arbiter once the worker is gone; the worker
    closed its own pools when it closed its apps (``dirty_worker_init`` arranged it)."""
