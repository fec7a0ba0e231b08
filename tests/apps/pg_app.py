"""WSGI app for the PostgreSQL integration tests (psycopg connections; served by real gunicorn).

Routes (all answer JSON with the worker's ``pid``):
  /conn            pg_backend_pid() of the connection used
  /sleep/<s>       SELECT pg_sleep(s) on a pooled connection
  /stats           the pool service's stats()
  /q/<pool>        pg_backend_pid() of a connection from the named pool
  /keep            use a connection in a with block and keep the object in a global
  /use-kept        run a query on the connection /keep kept (after its lease ended)
  /bouncer         8 parameterised SELECTs (past psycopg's prepare_threshold), then a SET LOCAL
                   in a transaction: the setting inside and after it, and the prepare threshold
  /setting/<name>  SHOW <name> (a plain setting name) on a pooled connection
  /set/<name>/<v>  SET <name> = '<v>' outside a transaction (autocommit): session state
  /imported        was psycopg imported before this module (in the master, before fork)?
Pool errors map to status codes as tests/apps/_wsgi.py says (ConnectError 502, ...).
"""

import os
import sys

from _wsgi import json_app

import gunicorn_pool  # imports no driver

PSYCOPG_BEFORE_APP = "psycopg" in sys.modules

POOL = os.environ.get("GP_TEST_SERVICE", "db")
KEY = os.environ.get("GP_TEST_POOL", "default")
KEPT = []


def _backend(key, sql="SELECT pg_backend_pid()", args=None):
    with gunicorn_pool.get(POOL).connection(key) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if sql != "SELECT pg_backend_pid()":
            conn.execute(sql, args).fetchall()
    return backend


def _route(path):
    parts = path.strip("/").split("/")
    if parts[0] == "conn":
        return {"backend_pid": _backend(KEY)}
    if parts[0] == "sleep":
        return {"backend_pid": _backend(KEY, "SELECT pg_sleep(%s)", (float(parts[1]),))}
    if parts[0] == "q":
        return {"backend_pid": _backend(parts[1]), "pool": parts[1]}
    if parts[0] == "bouncer":
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            total = sum(conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0] for i in range(8))
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = '4321ms'")
                inside = conn.execute("SHOW statement_timeout").fetchone()[0]
            after = conn.execute("SHOW statement_timeout").fetchone()[0]
            return {"total": total, "inside": inside, "after": after, "prepare_threshold": conn.prepare_threshold}
    if parts[0] in ("setting", "set") and parts[1].isidentifier():
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            if parts[0] == "set":
                conn.execute(f"SET {parts[1]} = '{int(parts[2])}'")
            return {"value": conn.execute(f"SHOW {parts[1]}").fetchone()[0]}
    if parts[0] == "imported":
        return {"psycopg_before_app": PSYCOPG_BEFORE_APP}
    if parts[0] == "stats":
        return {"stats": gunicorn_pool.get(POOL).stats()}
    if parts[0] == "keep":
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            KEPT.append(conn)
            return {"backend_pid": conn.execute("SELECT pg_backend_pid()").fetchone()[0]}
    if parts[0] == "use-kept":
        return {"backend_pid": KEPT[-1].execute("SELECT pg_backend_pid()").fetchone()[0]}
    raise LookupError(path)


app = json_app(_route)
