"""An app that queries the database at import, for ``gunicorn --preload``.

With --preload this module runs in the gunicorn *master*: it registers the
pool service, opens a connection there and records its CONNECTION_ID() and
the master's pid. Workers inherit that pool through fork; gunicorn_pool must
drop the inherited connection (without COM_QUIT) and open the worker's own.

Routes added to :mod:`webapp`'s:
  /master   the pid and CONNECTION_ID() recorded at import
"""

import os

import webapp
from _wsgi import with_master

import gunicorn_pool

DB = gunicorn_pool.register(gunicorn_pool.DatabasePool({"default": os.environ["GP_PRELOAD_URL"]}), name="db")

with DB.connection() as _conn:
    _cur = _conn.cursor()
    _cur.execute("SELECT CONNECTION_ID()")
    (MASTER_CONN_ID,) = _cur.fetchone()
IMPORT_PID = os.getpid()

app = with_master(webapp._route, {"conn_id": MASTER_CONN_ID, "import_pid": IMPORT_PID})
