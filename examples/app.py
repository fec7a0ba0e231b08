"""Example WSGI app: counts visits in the pool's database, per worker pid.

Each request borrows the worker's own connection from the "db" pool service
registered in gunicorn.conf.py.
"""

import json
import os

import gunicorn_pool

CREATE = "CREATE TABLE IF NOT EXISTS visits (pid INTEGER NOT NULL, path VARCHAR(200) NOT NULL)"


def app(environ, start_response):
    db = gunicorn_pool.get("db")
    with db.connection("default") as conn:
        cur = conn.cursor()
        cur.execute(CREATE)
        placeholder = "?" if db.configs["default"].adapter == "sqlite" else "%s"
        cur.execute(
            f"INSERT INTO visits (pid, path) VALUES ({placeholder}, {placeholder})",
            (os.getpid(), environ.get("PATH_INFO", "/")),
        )
        cur.execute("SELECT COUNT(*) FROM visits")
        (count,) = cur.fetchone()
    body = json.dumps({"pid": os.getpid(), "visits": count, "pool": db.stats()["default"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
