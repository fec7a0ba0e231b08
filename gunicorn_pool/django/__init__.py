"""Django: pooled MySQL/MariaDB and PostgreSQL backends, and every pooled alias opened per worker at boot.

Install ``gunicorn-pool[django]`` (Django only: the project's database driver stays its own
choice); in ``settings.py``::

    DATABASES = {
        "default": {
            "ENGINE": "gunicorn_pool.django.mysql",   # was django.db.backends.mysql
            "NAME": "shop", "USER": "app", "PASSWORD": os.environ["DB_PASSWORD"], "HOST": "10.0.0.5",
            "OPTIONS": {"pool": {"max_size": 8, "timeout": 5}},   # optional: sizes follow the worker type
        },
    }

and run ``gunicorn -k gunicorn_pool.Worker mysite.wsgi`` (or ``GeventWorker``,
``ThreadWorker``, or the hooks of :mod:`gunicorn_pool.hooks` with a stock worker).

- :mod:`gunicorn_pool.django.mysql`: the backend. Django's ``connect()`` is a
  checkout from a per-worker :class:`~gunicorn_pool.ConnectionPool` on PyMySQL,
  ``close()`` (end of request with ``CONN_MAX_AGE=0``) a return; the pool rolls
  back what was left open and resets a changed session. ``CONN_MAX_AGE`` must
  stay 0. Settings: :mod:`gunicorn_pool.django.pools`.
- :mod:`gunicorn_pool.django.postgresql`: the same on PostgreSQL, on the driver
  Django chose (psycopg 3, or psycopg2 where psycopg 3 is not installed).
- :class:`DjangoPools` (:mod:`.service`): found by the worker at boot; opens
  each pooled alias (ours, and Django's own psycopg pool for PostgreSQL aliases
  with ``OPTIONS["pool"]``, sized per worker type) before the first request,
  closes them at exit, reports their stats; drops what a ``--preload`` master
  left behind.
- :class:`PoolErrorMiddleware` (:mod:`.middleware`): optional, 503 instead of
  500 when no connection is free in time.
- Errors: :mod:`.errors` (each pool error is also a ``django.db.OperationalError``).

The full guide is docs/django.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware import PoolErrorMiddleware
    from .service import DjangoPools

__all__ = ["DjangoPools", "PoolErrorMiddleware"]


def __getattr__(name: str) -> Any:
    # Importing this package imports nothing of Django's: gunicorn_pool's discovery imports it
    # only once Django is loaded, and Django imports the backend only from its own settings.
    if name == "DjangoPools":
        from .service import DjangoPools

        return DjangoPools
    if name == "PoolErrorMiddleware":
        from .middleware import PoolErrorMiddleware

        return PoolErrorMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
