"""The shared part of every gunicorn_pool worker class.

:class:`PoolWorkerMixin` adds two steps to gunicorn's worker life cycle
(gunicorn/workers/base.py), and nothing else:

- ``load_wsgi()``: gunicorn loads the app, then :func:`gunicorn_pool.lifecycle.
  boot` opens every pool service. This runs in the worker, after fork, after
  gevent patching and the user switch, and before the user's
  ``post_worker_init`` and the first request, for every concurrency model.
- ``init_process()``: wrapped in ``try/finally`` so the pools close however
  the worker leaves its loop (SIGTERM, SIGQUIT/SIGINT's SystemExit,
  max_requests, the old workers of a SIGHUP).
- ``check_config()`` (in the master, once): the registered pools' drivers
  are imported there, so workers inherit them.
"""

from __future__ import annotations

from typing import Any

from .. import lifecycle


class PoolWorkerMixin:
    """Mix into a gunicorn worker class before the gunicorn base class."""

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        lifecycle.boot(self)

    def init_process(self) -> None:
        try:
            super().init_process()  # type: ignore[misc]
        finally:
            lifecycle.shutdown()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """gunicorn calls this once in the master, after the config (and a preloaded app) are
        loaded and before the first fork: the pools' drivers are imported here."""
        parent = getattr(super(), "check_config", None)
        if parent is not None:
            parent(cfg, log)
        lifecycle.prepare_master(cls)
