"""WSGI app for the RedisPool integration tests (served by real gunicorn processes).

Routes (all answer JSON):
  /conn        pid and the server-side CLIENT ID of the connection the command ran on
  /incr        INCR a per-test key through a pipeline (two commands, one connection)
  /stats       the service's stats()
The service is GP_TEST_SERVICE (default "redis"), its pool GP_TEST_POOL
(default "default"). Pool errors map to status codes as in webapp:
PoolTimeout 503, TooManyRequests 429, ConnectError 502, anything else 500.
"""

import json
import os
import time

import gunicorn_pool

SERVICE = os.environ.get("GP_TEST_SERVICE", "redis")
KEY = os.environ.get("GP_TEST_POOL", "default")
STATUS = {
    "PoolTimeout": "503 Service Unavailable",
    "TooManyRequests": "429 Too Many Requests",
    "ConnectError": "502 Bad Gateway",
}


def _route(path):
    client = gunicorn_pool.get(SERVICE).client(KEY)
    if path == "/conn":
        return {"client_id": client.client_id()}
    if path == "/incr":
        with client.pipeline() as pipe:
            value, _ = pipe.incr(f"gunicorn_pool:test:{os.environ.get('GP_TEST_KEY', 'app')}").client_id().execute()
        return {"value": value}
    if path == "/stats":
        return {"stats": gunicorn_pool.get(SERVICE).stats()}
    raise LookupError(path)


def app(environ, start_response):
    start = time.monotonic()
    try:
        body = _route(environ.get("PATH_INFO", "/"))
        status = "200 OK"
    except LookupError as exc:
        body, status = {"error": "NotFound", "message": str(exc)}, "404 Not Found"
    except Exception as exc:  # noqa: BLE001 - report every failure to the test
        name = type(exc).__name__
        body, status = {"error": name, "message": str(exc)}, STATUS.get(name, "500 Internal Server Error")
    body.update(pid=os.getpid(), elapsed=time.monotonic() - start)
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
