"""A plain WSGI app on EnginePool: ``gunicorn_pool.get("orm").engine()`` (registered in the
gunicorn.conf.py the test writes). /conn answers the worker pid and the server's session id."""

import json
import os

from sqlalchemy import text

import gunicorn_pool


def app(environ, start_response):
    engine = gunicorn_pool.get("orm").engine()
    sql = "SELECT CONNECTION_ID()" if engine.dialect.name == "mysql" else "SELECT pg_backend_pid()"
    with engine.connect() as conn:
        session = conn.execute(text(sql)).scalar()
    body = json.dumps({"pid": os.getpid(), "session": session, "stats": gunicorn_pool.get("orm").stats()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
