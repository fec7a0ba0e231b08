"""Example gunicorn config: one DatabasePool, SQLite unless DATABASE_URL is set.

gunicorn -c examples/gunicorn.conf.py --chdir examples app:app
DATABASE_URL=mysql://root@127.0.0.1:3306/test gunicorn -c examples/gunicorn.conf.py --chdir examples app:app
"""

import os

import gunicorn_pool

here = os.path.dirname(os.path.abspath(__file__))
default_url = "sqlite:///" + os.path.join(here, "example.db")

gunicorn_pool.register(
    gunicorn_pool.DatabasePool({"default": os.environ.get("DATABASE_URL", default_url)}),
    name="db",
)

worker_class = "gunicorn_pool.Worker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
bind = os.environ.get("BIND", "127.0.0.1:8000")
