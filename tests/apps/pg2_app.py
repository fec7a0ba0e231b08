"""WSGI app for the psycopg2 integration tests (``driver: psycopg2`` pools; served by real gunicorn).

Routes (all answer JSON with the worker's ``pid``):
  /conn            pg_backend_pid() of the connection used
  /q/<pool>        pg_backend_pid() of a connection from the named pool
  /sleep/<s>       SELECT pg_sleep(s) on a pooled connection
  /keep            use a connection in a with block and keep the object in a global
  /use-kept        run a query on the connection /keep kept (after its lease ended)
  /green           psycopg2's wait callback in this worker: "gunicorn_pool", "other" or null
  /imported        was psycopg2 imported before this module (in the master, before fork)? and psycopg 3?
  /stats           the pool service's stats()
Pool errors map to status codes as tests/apps/_wsgi.py says (ConnectError 502, ...).
"""

import os
import sys

from _wsgi import json_app

import gunicorn_pool  # imports no driver

PSYCOPG2_BEFORE_APP = "psycopg2" in sys.modules

POOL = os.environ.get("GP_TEST_SERVICE", "db")
KEY = os.environ.get("GP_TEST_POOL", "default")
KEPT = []


def _one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def _backend(key, sql=None, args=None):
    with gunicorn_pool.get(POOL).connection(key) as conn:
        backend = _one(conn, "SELECT pg_backend_pid()")
        if sql is not None:
            _one(conn, sql, args)
    return backend


def _route(path):
    parts = path.strip("/").split("/")
    if parts[0] == "conn":
        return {"backend_pid": _backend(KEY)}
    if parts[0] == "q":
        return {"backend_pid": _backend(parts[1]), "pool": parts[1]}
    if parts[0] == "sleep":
        return {"backend_pid": _backend(KEY, "SELECT pg_sleep(%s)", (float(parts[1]),))}
    if parts[0] == "keep":
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            KEPT.append(conn)
            return {"backend_pid": _one(conn, "SELECT pg_backend_pid()")}
    if parts[0] == "use-kept":
        return {"backend_pid": _one(KEPT[-1], "SELECT pg_backend_pid()")}
    if parts[0] == "green":
        import psycopg2.extensions

        callback = psycopg2.extensions.get_wait_callback()
        mine = getattr(callback, "__module__", "") == "gunicorn_pool.connectors.psycopg2"
        return {"callback": None if callback is None else ("gunicorn_pool" if mine else "other")}
    if parts[0] == "imported":
        return {"psycopg2_before_app": PSYCOPG2_BEFORE_APP, "psycopg": "psycopg" in sys.modules}
    if parts[0] == "stats":
        return {"stats": gunicorn_pool.get(POOL).stats()}
    raise LookupError(path)


app = json_app(_route)
