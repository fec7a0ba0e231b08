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
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

from . import request

__all__ = ["RequestScopeMiddleware", "wrap"]

StartResponse = Callable[..., Any]


class RequestScopeMiddleware:
    """Runs each request of *app* in its own request scope."""

    __slots__ = ("app", "__weakref__")

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope, token = request.begin(environ.get("PATH_INFO", ""))
        status: list[str] = []

        def recording_start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info) if exc_info is not None else start_response(code, headers)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            request.end(scope, token, failed=True)
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):
            request.end(scope, token, failed=_failed(status))
            return body
        return _ScopedBody(body, scope, token, status)


class _ScopedBody:
    """The app's response iterable; closing it ends the request."""

    __slots__ = ("_body", "_scope", "_token", "_status", "_failed")

    def __init__(self, body: Iterable[bytes], scope: request.RequestScope, token: Any, status: list[str]) -> None:
        self._body = body
        self._scope: Optional[request.RequestScope] = scope
        self._token = token
        self._status = status
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        scope, self._scope = self._scope, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except BaseException:
            self._failed = True
            raise
        finally:
            if scope is not None:
                request.end(scope, self._token, failed=self._failed or _failed(self._status))


def _failed(status: list[str]) -> bool:
    return bool(status) and status[-1][:1] == "5"


def wrap(worker: Any) -> None:
    """Wrap *worker*'s loaded app (``worker.wsgi``) once."""
    app = getattr(worker, "wsgi", None)
    if app is not None and not isinstance(app, RequestScopeMiddleware):
        worker.wsgi = RequestScopeMiddleware(app)
