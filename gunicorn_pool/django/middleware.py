"""Optional middleware: answer 503 (with ``Retry-After``) when a view's database connection
cannot be had in time, instead of Django's 500.

::

    MIDDLEWARE = ["gunicorn_pool.django.middleware.PoolErrorMiddleware", ...]

It maps :class:`~gunicorn_pool.errors.PoolTimeout` (no connection free within
the pool's ``timeout``) and :class:`~gunicorn_pool.errors.TooManyRequests`
(``max_waiting`` callers already queued) raised by a view, also inside
``ATOMIC_REQUESTS``, to ``503 Service Unavailable``; every other exception is
left to Django. Like every ``process_exception`` hook, it sees exceptions of
views, not of other middleware.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import PoolTimeout, TooManyRequests

__all__ = ["PoolErrorMiddleware"]


class PoolErrorMiddleware:
    """``503`` with ``Retry-After: 1`` for a view that could not get a pooled connection in time."""

    retry_after = 1  #: seconds, sent in the Retry-After header

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_exception(self, request: Any, exception: Exception) -> Optional[Any]:
        if not isinstance(exception, (PoolTimeout, TooManyRequests)):
            return None
        from django.http import HttpResponse

        response = HttpResponse(
            f"503 Service Unavailable: {type(exception).__name__}\n", status=503, content_type="text/plain"
        )
        response["Retry-After"] = str(self.retry_after)
        return response
