"""WSGI app for the RedisPool integration tests (served by real gunicorn processes).

Routes (all answer JSON):
  /conn        pid and the server-side CLIENT ID of the connection the command ran on
  /incr        INCR a per-test key through a pipeline (two commands, one connection)
  /stats       the service's stats()
The service is GP_TEST_SERVICE (default "redis"), its pool GP_TEST_POOL
(default "default"). Pool errors map to status codes as tests/apps/_wsgi.py says.
"""

import os

from _wsgi import json_app

import gunicorn_pool

SERVICE = os.environ.get("GP_TEST_SERVICE", "redis")
KEY = os.environ.get("GP_TEST_POOL", "default")


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


app = json_app(_route)
