"""Pool errors as Django sees them: each is also a ``django.db.OperationalError``.

Django's own PostgreSQL pool raises psycopg_pool's ``PoolTimeout``, a
``psycopg.OperationalError``, which Django wraps into
``django.db.OperationalError``; code written for Django catches that. The
backend raises these classes instead of the plain gunicorn_pool errors, so
both ``except django.db.OperationalError`` and ``except
gunicorn_pool.PoolTimeout`` (or ``PoolError``) catch them.
"""

from __future__ import annotations

from django.db import OperationalError

from .. import errors as gp

__all__ = ["ConnectError", "PoolClosed", "PoolTimeout", "TooManyRequests", "as_django"]


class PoolTimeout(OperationalError, gp.PoolTimeout):  # type: ignore[misc]  # Django is untyped
    """No pooled connection became free within the pool's ``timeout``."""


class TooManyRequests(OperationalError, gp.TooManyRequests):  # type: ignore[misc]
    """``max_waiting`` callers already wait for a connection."""


class ConnectError(OperationalError, gp.ConnectError):  # type: ignore[misc]
    """The pool could not open a connection (or is backing off after failures)."""


class PoolClosed(OperationalError, gp.PoolClosed):  # type: ignore[misc]
    """The pool was closed (the worker is exiting)."""


_BY_CLASS: dict[type[gp.PoolError], type[gp.PoolError]] = {
    gp.PoolTimeout: PoolTimeout,
    gp.TooManyRequests: TooManyRequests,
    gp.ConnectError: ConnectError,
    gp.PoolClosed: PoolClosed,
}


def as_django(exc: gp.PoolError) -> gp.PoolError:
    """*exc* as the matching class above (same message), or *exc* itself."""
    cls = _BY_CLASS.get(type(exc))
    return cls(*exc.args) if cls is not None else exc
