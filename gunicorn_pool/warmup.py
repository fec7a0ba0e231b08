"""Warm a fresh worker, after its pools opened and before its first request.

Opening the connections at boot removes the connect from the first request,
but a freshly forked worker still runs gunicorn's request code for the first
time: lazy imports and caches (the optional C parser lookup, the
``forwarded_allow_ips`` networks, the ``Date`` header's formatter), and
copy-on-write page faults as it first writes to the master's memory (~180 of
them, ~4.5 us each, on the VM of bench/boot.py). Measured there, the first
request cost 4-5x a warm one with no database at all.

:func:`warm_worker` runs those paths once, on the worker's own time:

1. *http*: ``settings.warm_requests`` synthetic ``GET`` requests go through
   gunicorn's own parser, ``wsgi.create`` and ``Response`` over a private
   loopback connection (a socket pair for unix-socket listeners), answered by
   a no-op WSGI app. The user's app, ``pre_request``/``post_request`` and the
   access log are not called, ``worker.nr`` (max_requests) is not touched;
   the access line is formatted and dropped. Skipped for TLS, PROXY protocol
   and uwsgi listeners, whose first bytes a synthetic request cannot fake.
2. *db*: ``warm_pool()`` of every service that has one (DatabasePool runs
   :meth:`~gunicorn_pool.ConnectionPool.warm`: a ping and one ``SELECT 1``
   per idle connection, not counted in ``stats()``).
3. *threads*: gthread's executor starts its threads lazily on first use;
   they are started here.

Nothing here can stop a worker: a failing step logs a warning and the worker
serves as it would have without it. ``gunicorn_pool.configure(warm_up=False)``
turns all three steps off (``warm_requests=0`` skips only the first). It costs
~10-20 ms per worker boot and is bounded by what is left of ``warmup_timeout``.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime
from typing import Any, Callable

__all__ = ["warm_worker"]

logger = logging.getLogger("gunicorn_pool")

PATH = "/__gunicorn_pool_warmup__"  # never the app's URL: its caches stay the app's own
_REQUEST = (
    f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: gunicorn-pool-warmup\r\n"
    "Accept: */*\r\nConnection: close\r\n\r\n"
).encode()
_BODY = b"ok"


def _noop_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))])
    return [_BODY]


def _socket_pair(worker: Any, timeout: float) -> tuple[socket.socket, socket.socket, Any, Any]:
    """(server side, client side, peer address, server address) in the listeners' address family."""
    listeners = getattr(worker, "sockets", None) or []
    family = getattr(listeners[0], "FAMILY", socket.AF_INET) if listeners else socket.AF_INET
    if family in (socket.AF_INET, socket.AF_INET6):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            listener.settimeout(timeout)
            client = socket.socket(family, socket.SOCK_STREAM)
            client.settimeout(timeout)
            client.connect(listener.getsockname())
            server, peer = listener.accept()
        return server, client, peer, server.getsockname()
    server, client = socket.socketpair()  # unix listener: gunicorn passes "" as the peer
    client.settimeout(timeout)
    return server, client, "", ""


def _http_round(worker: Any, timeout: float) -> None:
    from gunicorn import http, util
    from gunicorn.http import wsgi

    cfg, log = worker.cfg, worker.log
    server, client, peer, local = _socket_pair(worker, timeout)
    try:
        server.settimeout(timeout)
        client.sendall(_REQUEST)
        client.shutdown(socket.SHUT_WR)
        start = datetime.now()
        req = next(http.get_parser(cfg, server, peer))
        resp, environ = wsgi.create(req, server, peer, local, cfg)
        resp.force_close()
        for chunk in _noop_app(environ, resp.start_response):
            resp.write(chunk)
        resp.close()
        if getattr(log, "access_log_enabled", False):
            atoms = log.atoms_wrapper_class(log.atoms(resp, req, environ, datetime.now() - start))
            cfg.access_log_format % atoms  # formatted, not logged
        close = getattr(util, "close_graceful", None)
        close(server, timeout=timeout) if close is not None else server.close()
        while client.recv(65536):
            pass
    finally:
        client.close()
        server.close()


def _plain_http(cfg: Any) -> bool:
    return (
        getattr(cfg, "protocol", "http") == "http"
        and getattr(cfg, "proxy_protocol", "off") in ("off", None, False)
        and not getattr(cfg, "is_ssl", False)
    )


def _warm_http(worker: Any, rounds: int, timeout: float) -> int:
    if not _plain_http(worker.cfg):
        return 0
    for _ in range(rounds):
        _http_round(worker, timeout)
    return rounds


def _warm_pools(services: list[tuple[str, Any]]) -> int:
    used = 0
    for _name, service in services:
        used += service.warm_pool()  # PoolInterface's default does nothing
    return used


def _warm_threads(worker: Any, timeout: float) -> int:
    import threading

    executor = getattr(worker, "tpool", None)  # gthread builds it before load_wsgi()
    threads = int(getattr(worker.cfg, "threads", 1) or 1)
    if executor is None or not hasattr(executor, "submit") or threads < 2:
        return 0
    barrier = threading.Barrier(threads)  # every thread must start to pass it
    for future in [executor.submit(barrier.wait, timeout) for _ in range(threads)]:
        future.result(timeout + 1.0)
    return threads


def warm_worker(worker: Any, services: list[tuple[str, Any]], *, requests: int, deadline: float) -> dict[str, float]:
    """Run the warm-up steps for *worker*; return the milliseconds each took. Never raises.

    *deadline* (a ``time.monotonic()`` value) bounds every socket wait; steps
    not started by then are skipped.
    """
    steps: tuple[tuple[str, Callable[[float], int]], ...] = (
        ("http", lambda timeout: _warm_http(worker, requests, timeout)),
        ("db", lambda timeout: _warm_pools(services)),
        ("threads", lambda timeout: _warm_threads(worker, timeout)),
    )
    spent: dict[str, float] = {}
    for name, step in steps:
        left = deadline - time.monotonic()
        if left <= 0:
            logger.warning("gunicorn_pool: warm-up step %s skipped: warmup_timeout reached", name)
            continue
        start = time.perf_counter()
        try:
            step(min(1.0, left))
        except Exception as exc:  # noqa: BLE001 - a warm-up must never stop a worker
            logger.warning("gunicorn_pool: warm-up step %s failed (the worker serves anyway): %s", name, exc)
        spent[name] = (time.perf_counter() - start) * 1000
    logger.info("gunicorn_pool: worker warm-up %s", ", ".join(f"{k} {v:.1f} ms" for k, v in spent.items()))
    return spent
