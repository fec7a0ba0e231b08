"""The request boundary for ASGI apps, and the lifespan in which asyncio pools open and close.

:class:`RequestScopeASGI` wraps an ASGI app (FastAPI, Starlette, Quart,
Litestar, Django's ``ASGIHandler``...) the way :mod:`gunicorn_pool.wsgi` wraps
a WSGI one:

- every ``http`` and ``websocket`` call runs in a
  :class:`~gunicorn_pool.request.RequestScope` owned by its task: a lease its
  code left out when the call ends (the response sent, the socket closed, or
  the task cancelled) is logged with the ``file:line`` that took it and
  reclaimed, for asyncio pools and for synchronous pools used from ``def``
  endpoints in the server's thread pool alike. The request *failed* when the
  app raised or answered 5xx.
- the ``lifespan`` protocol: no event loop runs while gunicorn loads the app
  (``load_wsgi``, ``post_worker_init``), so asyncio pools open in the lifespan
  startup, in the worker's own loop, before the app's own startup runs, and
  close after the app's own shutdown. The app's lifespan still runs as it
  would (an app without one is fine: the startup completes anyway); what it
  registered or created in its startup (``adopt(engine)`` there, an engine
  kept in ``app.state``) is found and opened right after it, before the
  server's first request.
- with the server's lifespan switched off (gunicorn's ``asgi_lifespan =
  "off"``), the pools open on the first request instead, once, under a lock,
  bounded by ``warmup_timeout``, and a warning says so.

The startup and shutdown coroutines come from the layer above
(:mod:`gunicorn_pool.lifecycle`): this module opens nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from .pool_async import task_ident
from .request import RequestScope

__all__ = ["RequestScopeASGI"]

logger = logging.getLogger("gunicorn_pool")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


class _Request(RequestScope):
    """One ASGI call's scope; ``failed`` when the response started with a 5xx status."""

    __slots__ = ("failed", "_send")

    def owner(self) -> int:
        return task_ident()  # the request's task (asked in it, at its end)

    def __init__(self, label: str, send: Send) -> None:
        RequestScope.__init__(self, label)
        self.failed = False
        self._send = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.failed = int(message.get("status", 200)) >= 500
        await self._send(message)


class RequestScopeASGI:
    """Runs each request of *app* in its own request scope; opens and closes the worker's asyncio
    pools in the lifespan (*startup* and *shutdown*: coroutine functions, or None)."""

    def __init__(self, app: ASGIApp, *, startup: Optional[Hook] = None, shutdown: Optional[Hook] = None,
                 after_app_startup: Optional[Callable[[ASGIApp], Awaitable[None]]] = None) -> None:  # fmt: skip
        self.app = app
        self._startup = startup
        self._shutdown = shutdown
        #: Run with the app once the app's own lifespan startup completed: what it registered or
        #: created there (an engine adopted in its lifespan, ``app.state.engine``) opens then.
        self._after_app_startup = after_app_startup
        self._started = startup is None
        self._starting: Optional[asyncio.Lock] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        if not self._started:
            await self._start_on_first_request()
        request = _Request(scope.get("path", ""), send).begin()
        failed = True
        try:
            await self.app(scope, receive, request.send)
            failed = request.failed
        finally:
            request.end(failed=failed)  # also when cancelled: what the task held is reclaimed

    # -- the lifespan ---------------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ours around the app's: our startup, then the app's; the app's shutdown, then ours."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self._start()
        except Exception as exc:  # noqa: BLE001 - a strict pool on the first start: refuse to serve
            await send({"type": "lifespan.startup.failed", "message": f"gunicorn_pool: {exc}"})
            return
        app = _AppLifespan(self.app, scope)
        answer = await app.forward({"type": "lifespan.startup"}, "lifespan.startup")
        if answer is not None and answer["type"] == "lifespan.startup.failed":
            await send(answer)
            return
        if self._after_app_startup is not None:
            try:
                await self._after_app_startup(self.app)
            except Exception as exc:  # noqa: BLE001 - a strict pool on the first start: refuse to serve
                await send({"type": "lifespan.startup.failed", "message": f"gunicorn_pool: {exc}"})
                return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        answer = await app.forward({"type": "lifespan.shutdown"}, "lifespan.shutdown")
        await self._stop()
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            await send(answer)
        else:
            await send({"type": "lifespan.shutdown.complete"})

    async def _start(self) -> None:
        if self._startup is not None:
            await self._startup()
        self._started = True

    async def _stop(self) -> None:
        if self._shutdown is not None:
            try:
                await self._shutdown()
            except Exception as exc:  # noqa: BLE001 - the worker exits anyway
                logger.warning("gunicorn_pool: closing the asyncio pools failed: %s", exc)

    async def _start_on_first_request(self) -> None:
        """The server runs no lifespan: open the pools on the first request, once."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            logger.warning(
                "gunicorn_pool: the server runs no ASGI lifespan (asgi_lifespan off?): the asyncio pools open on"
                " the first request instead of before it"
            )
            try:
                await self._start()
            except Exception as exc:  # noqa: BLE001 - serve without them: they connect on demand
                self._started = True
                logger.error("gunicorn_pool: the asyncio pools did not open: %s", exc)


class _AppLifespan:
    """The app's own lifespan, run as a task fed through a queue: ours runs around it."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: Optional[asyncio.Task[None]] = None
        self._app = app
        self._scope = scope
        self._gone = False  # the app has no lifespan (it raised or returned), or it ended

    async def forward(self, message: Message, step: str) -> Optional[Message]:
        """Give *message* to the app; its answer to *step* (None: the app has no lifespan)."""
        if self._gone:
            return None
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        await self._inbox.put(message)
        getter = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        self._gone = True
        return None

    async def _run(self) -> None:
        try:
            await self._app(self._scope, self._inbox.get, self._outbox.put)
        except Exception as exc:  # noqa: BLE001 - an app without lifespan support raises here
            logger.debug("gunicorn_pool: the app's lifespan: %s", exc)
