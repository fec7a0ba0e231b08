"""The request boundary for WSGI apps: every request runs in a :class:`~gunicorn_pool.request.RequestScope`.

The worker classes and :func:`gunicorn_pool.hooks.post_worker_init` wrap the
loaded app in :class:`RequestScopeMiddleware` after the pools open, so this
holds in every worker model (the scope is per thread under gthread, per
greenlet under gevent). A request ends when its response is complete: for a
list body (nearly every framework's) as soon as the app returns, since no
code of the app runs while a list is sent; for any other body when the server
closes it (PEP 3333), so a streamed body still runs inside its request. Then
``request_connection()`` leases are given back and leaked ones reclaimed.

A request *failed* when the app raised, the body raised while it was sent, or
the status is 5xx: its ``request_connection()`` leases are rolled back.
A ``wsgi.file_wrapper`` response is passed through untouched (so the server
can still use ``sendfile``); its request ends when the app returns it.

Cost: one object per request (the scope, a list) and no wrapper around what
the server sees, in the common case. The status is read off the server's own
response object (gunicorn's ``Response.status``, through the bound
``start_response``) when the request ends, and only if a
``request_connection()`` must be committed or rolled back; a server whose
``start_response`` is not such a method gets one wrapped, as does a streamed
body (the scope then is the iterable the server closes).
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable, Iterable, Iterator, Optional

from . import _concurrency as cc
from .core import LEASE_SINK
from .request import RequestScope
from .slot import LENT as _LENT

__all__ = ["RequestScopeMiddleware", "wrap"]

StartResponse = Callable[..., Any]
_list = list
_list_iter = list.__iter__
_method = types.MethodType
_set = LEASE_SINK.set
_reset = LEASE_SINK.reset
_NO_FINALIZERS: Optional[dict[Any, Callable[[bool], None]]] = None
_generation = cc._generation


class RequestScopeMiddleware:
    """Runs each request of *app* in its own request scope."""

    __slots__ = ("app", "_readable", "__weakref__")

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        #: The class of the server's response objects whose bound start_response records the status
        #: (gunicorn's Response): learnt on the first request.
        self._readable: Optional[type] = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope = _Request.__new__(_Request)
        scope.finalizers = _NO_FINALIZERS
        scope.generation = _generation[0]
        if type(start_response) is _method and type(start_response.__self__) is self._readable:
            respond: StartResponse = start_response
            scope._respond = respond
        else:
            respond = self._learn(scope, start_response)
        token = _set(scope)
        try:
            body = self.app(environ, respond)
        except BaseException:
            scope._label, scope._token = environ, token
            scope.end(failed=True)
            raise
        if type(body) is _list:
            if scope.finalizers is None and (not scope or _all_returned(scope)):  # nothing to give back or reclaim
                _reset(token)
            else:
                scope._label, scope._token = environ, token  # the label (PATH_INFO) for log lines
                scope.end(failed=scope.finalizers is not None and scope.failed())
            return body
        scope._label, scope._token = environ, token
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(wrapper, type) and isinstance(body, wrapper):
            scope.end(failed=scope.failed())
            return body
        scope._body = body
        return scope

    def _learn(self, scope: _Request, start_response: StartResponse) -> StartResponse:
        """A server whose start_response this middleware has not seen (or that records no status):
        if it is a bound method of an object keeping the ``status`` it was given (gunicorn's
        Response), remember that class; else wrap start_response to record the status."""
        owner = getattr(start_response, "__self__", None)
        if type(start_response) is _method and owner is not None and hasattr(owner, "status"):
            self._readable = type(owner)
            scope._respond = start_response
            return start_response
        scope._respond = start_response
        scope._status = None
        return scope.start_response


def _all_returned(leases: list[tuple[Any, Any, int]]) -> bool:
    """Every lease of the request was given back (RequestScope.settle's first test, inline: the
    common end of a request calls nothing more)."""
    for _, slot, number in _list_iter(leases):  # the list's own: _Request.__iter__ is the body's
        if slot.uses == number and slot.state is _LENT:
            return False
    return True


class _Request(RequestScope):
    """One WSGI request: its scope, and (for a streamed body) the iterable the server closes."""

    __slots__ = ("_respond", "_body", "_status", "_broken", "_watched")
    _respond: StartResponse
    _body: Iterable[bytes]
    _status: Optional[str]
    _broken: bool
    _watched: bool  # the body's iteration runs in _stream(), which sees it raise

    def failed(self) -> bool:
        """The request failed: its body raised, or its status is 5xx (read off the server's
        response object, or recorded by :meth:`start_response`). A body sent unwatched (no
        ``request_connection()`` when the server began sending it) counts as raised if an
        exception is in flight when the server closes it (the server closes the body in a
        ``finally``)."""
        if getattr(self, "_broken", False):
            return True
        if not getattr(self, "_watched", True) and sys.exc_info()[0] is not None:
            return True
        try:
            status = self._status
        except AttributeError:  # the server's response object keeps it
            status = getattr(getattr(self._respond, "__self__", None), "status", None)
        return isinstance(status, str) and status[:1] == "5"

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """The app's start_response where the server records no status."""
        self._status = status  # the last status the app gave wins
        if exc_info is None:
            return self._respond(status, headers)
        return self._respond(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        # Only a request_connection() lease needs to know that the body raised (to roll back):
        # without one, the server iterates the body itself (no generator in between).
        if self.finalizers is None:
            self._watched = False
            return iter(self._body)
        self._watched = True
        return self._stream(self._body)

    def _stream(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            yield from body
        except BaseException:
            self._broken = True
            raise

    def close(self) -> None:
        body, self._body = self._body, ()
        try:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        except BaseException:
            self._broken = True
            raise
        finally:
            token = self._token
            if token is not None:
                if self.finalizers is None and (not self or _all_returned(self)):  # nothing to give back
                    self._token = None
                    try:
                        _reset(token)
                    except ValueError:  # closed in another context than it began in
                        pass
                else:
                    self.end(failed=self.finalizers is not None and self.failed())


def wrap(worker: Any) -> None:
    """Wrap *worker*'s loaded app (``worker.wsgi``) once."""
    app = getattr(worker, "wsgi", None)
    if app is not None and not isinstance(app, RequestScopeMiddleware):
        worker.wsgi = RequestScopeMiddleware(app)
