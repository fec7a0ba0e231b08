"""A gunicorn dirty app (gunicorn >= 25, ``dirty_apps``) that queries through a pool, and the
HTTP app that calls it.

The dirty app uses the service registered as ``dirty_db`` in the gunicorn config: in its
worker, ``hooks.dirty_worker_init`` opened it before the first task.
"""

import os

from _wsgi import json_app
from gunicorn.dirty import DirtyApp, get_dirty_client

import gunicorn_pool


class QueryApp(DirtyApp):
    """``conn`` answers the dirty worker's pid and the server session its pool lent."""

    def init(self):
        pass

    def __call__(self, action, *args, **kwargs):
        if action != "conn":
            raise ValueError(action)
        with gunicorn_pool.get("dirty_db").connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return {"dirty_pid": os.getpid(), "conn_id": cur.fetchone()[0],
                    "stats": gunicorn_pool.get("dirty_db").stats()["default"]}

    def close(self):
        pass


def _route(path):
    if path == "/dirty":
        return get_dirty_client(timeout=10).execute("dirty_app:QueryApp", "conn")
    raise LookupError(path)


app = json_app(_route)
