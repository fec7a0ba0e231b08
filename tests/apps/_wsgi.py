"""What the test apps share: JSON answers with the worker's pid, pool errors mapped to status codes.

Pool errors map to PoolTimeout 503, TooManyRequests 429, ConnectError 502,
anything else 500 (a route's LookupError: 404); the body names the error class.
"""

import json
import os
import time

STATUS = {
    "PoolTimeout": "503 Service Unavailable",
    "TooManyRequests": "429 Too Many Requests",
    "ConnectError": "502 Bad Gateway",
}


def respond(start_response, status, body):
    """Answer *body* as JSON with *status*."""
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def json_app(route):
    """A WSGI app answering ``route(path)`` (a dict) as JSON, with the worker's ``pid`` and the
    ``elapsed`` seconds added; a failure answers ``{"error": class name, "message": ...}``."""

    def app(environ, start_response):
        start = time.monotonic()
        try:
            body = route(environ.get("PATH_INFO", "/"))
            status = "200 OK"
        except LookupError as exc:
            body, status = {"error": "NotFound", "message": str(exc)}, "404 Not Found"
        except Exception as exc:  # noqa: BLE001 - report every failure to the test
            name = type(exc).__name__
            body, status = {"error": name, "message": str(exc)}, STATUS.get(name, "500 Internal Server Error")
        body.update(pid=os.getpid(), elapsed=time.monotonic() - start)
        return respond(start_response, status, body)

    return app


def with_master(route, master):
    """A :func:`json_app` of *route* plus ``/master``, answering *master*: what a ``--preload``
    app recorded in the gunicorn master at import (its pid, its session)."""
    return json_app(lambda path: dict(master) if path == "/master" else route(path))
