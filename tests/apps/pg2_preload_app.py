"""A psycopg2 app that queries at import, for ``gunicorn --preload`` (see preload_app.py).

With --preload this module runs in the gunicorn *master*: it registers the
pool service (``GP_PRELOAD_URL`` names the psycopg2 driver), opens a connection
there and records its pg_backend_pid() and the master's pid. Workers inherit
that pool through fork; gunicorn_pool must drop the inherited connection
without a word to the server (psycopg2 would send Terminate when the object
is collected) and open the worker's own.

Routes added to :mod:`pg2_app`'s:
  /master   the pid and pg_backend_pid() recorded at import
"""

import os

import pg2_app
from _wsgi import with_master

import gunicorn_pool

DB = gunicorn_pool.register(gunicorn_pool.DatabasePool({"default": os.environ["GP_PRELOAD_URL"]}), name="db")

with DB.connection() as _conn:
    MASTER_BACKEND_PID = pg2_app._one(_conn, "SELECT pg_backend_pid()")
IMPORT_PID = os.getpid()

app = with_master(pg2_app._route, {"backend_pid": MASTER_BACKEND_PID, "import_pid": IMPORT_PID})
