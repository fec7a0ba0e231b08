"""Example gunicorn config for the FastAPI example: one AsyncDatabasePool, SQLite (aiosqlite) unless
DATABASE_URL is set, served by gunicorn_pool.AsgiWorker (gunicorn's own asgi worker, no uvicorn).

gunicorn -c examples/fastapi.conf.py --chdir examples fastapi_app:app
DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
    gunicorn -c examples/fastapi.conf.py --chdir examples fastapi_app:app
"""

import os

import gunicorn_pool

here = os.path.dirname(os.path.abspath(__file__))
default_url = "sqlite:///" + os.path.join(here, "example.db")

gunicorn_pool.register(
    gunicorn_pool.AsyncDatabasePool({"default": os.environ.get("DATABASE_URL", default_url)}),
    name="db",
)

worker_class = "gunicorn_pool.AsgiWorker"  # or "gunicorn_pool.UvicornWorker" (pip install uvicorn-worker)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
bind = os.environ.get("BIND", "127.0.0.1:8000")
