"""The request boundary for WSGI apps: every request runs in a :class:`~gunicorn_pool.request.RequestScope`.

The worker classes and :func:`gunicorn_pool.hooks.post_worker_init` wrap the
loaded app in :class:`RequestScopeMiddleware` after the pools open, so this
holds in every worker model (the scope is per thread under gthread, per
greenlet under gevent). The request ends when the server closes the response
iterable (PEP 3333), so a streamed body still runs inside its request; then
``request_connection()`` leases are given back and leaked ones reclaimed.

A request *failed* when the app raised, the body raised while it was sent, or
the status is 5xx: its ``request_connection()`` leases are rolled back.
A ``wsgi.file_wrapper`` response is passed through untouched (so the server
can still use ``sendfile``); its request ends when the app returns it.

Cost: one object per request. The scope is also the ``start_response`` the
app calls (a bound method, no closure) and the response iterable the server
iterates and closes; a list body is iterated as the list itself (no
generator).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from .core import LEASE_SINK
from .request import RequestScope

__all__ = ["RequestScopeMiddleware", "wrap"]

StartResponse = Callable[..., Any]
_list = list


class RequestScopeMiddleware:
    """Runs each request of *app* in its own request scope."""

    __slots__ = ("app", "__weakref__")

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope = _Request(environ.get("PATH_INFO", ""))
        scope._respond = start_response
        scope._token = LEASE_SINK.set(scope)
        try:
            body = self.app(environ, scope.start_response)
        except BaseException:
            scope.end(failed=True)
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(wrapper, type) and isinstance(body, wrapper):
            scope.end(failed=scope._failed)
            return body
        scope._body = body
        return scope


def _no_server(*args: Any) -> Any:
    raise RuntimeError("start_response called outside a request")


class _Request(RequestScope):
    """One WSGI request: its scope, the ``start_response`` the app calls, and the response
    iterable the server iterates and closes (closing it ends the request)."""

    __slots__ = ("_respond", "_body", "_failed")

    def __init__(self, label: str) -> None:
        RequestScope.__init__(self, label)
        self._respond: StartResponse = _no_server
        self._body: Iterable[bytes] = ()
        self._failed = False  # a 5xx status, or the body raised

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self._failed = status[:1] == "5"  # the last status the app gave wins
        if exc_info is None:
            return self._respond(status, headers)
        return self._respond(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        body = self._body
        if type(body) is _list:
            return iter(body)  # nothing to see while a list is sent
        return self._stream(body)

    def _stream(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from body
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        body, self._body = self._body, ()
        try:
            close = getattr(body, "close", None) if type(body) is not _list else None
            if close is not None:
                close()
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._token is not None or self.leases or self.finalizers:
                self.end(failed=self._failed)


def wrap(worker: Any) -> None:
    """Wrap *worker*'s loaded app (``worker.wsgi``) once."""
    app = getattr(worker, "wsgi", None)
    if app is not None and not isinstance(app, RequestScopeMiddleware):
        worker.wsgi = RequestScopeMiddleware(app)
