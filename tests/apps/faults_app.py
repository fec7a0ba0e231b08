"""WSGI app for the MySQL fault-injection tests: webapp's routes plus named pools.

Route added to :mod:`webapp`'s:
  /q/<pool>   CONNECTION_ID() of a connection from the named pool
Errors map to status codes as tests/apps/_wsgi.py says (ConnectError 502, ...).
"""

import webapp
from _wsgi import json_app

import gunicorn_pool


def _route(path):
    if not path.startswith("/q/"):
        return webapp._route(path)
    key = path[len("/q/") :]
    with gunicorn_pool.get(webapp.POOL).connection(key) as conn:
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": cur.fetchone()[0], "pool": key}


app = json_app(_route)
