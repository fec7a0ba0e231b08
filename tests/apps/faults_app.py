"""WSGI app for the fault-injection tests: webapp's routes plus named pools.

Routes added to :mod:`webapp`'s:
  /q/<pool>   pid and CONNECTION_ID() of a connection from the named pool
Errors map to the same status codes as in webapp (ConnectError 502, ...).
"""

import json
import os
import time

import webapp

import gunicorn_pool


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if not path.startswith("/q/"):
        return webapp.app(environ, start_response)
    start = time.monotonic()
    key = path[len("/q/") :]
    try:
        with gunicorn_pool.get(webapp.POOL).connection(key) as conn:
            cur = conn.cursor()
            cur.execute("SELECT CONNECTION_ID()")
            body = {"conn_id": cur.fetchone()[0]}
        status = "200 OK"
    except Exception as exc:  # noqa: BLE001 - report every failure to the test
        name = type(exc).__name__
        body = {"error": name, "message": str(exc)}
        status = webapp.STATUS.get(name, "500 Internal Server Error")
    body.update(pid=os.getpid(), pool=key, elapsed=time.monotonic() - start)
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
