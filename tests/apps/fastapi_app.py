"""A FastAPI app on gunicorn_pool: ``def`` endpoints on the synchronous ``db`` service (run in the
server's thread pool), its own lifespan, and a leak.

    /sync        CONNECTION_ID() of a lease of db's "default", the worker pid, the app's lifespan count
    /on-loop     an async endpoint taking a synchronous lease on the event loop's thread (refused)
    /leak        takes db's connection and never gives it back (reclaimed when the request ends)
    /stats       db's figures
"""

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

import gunicorn_pool

LIFESPAN = {"started": 0, "stopped": 0}


@asynccontextmanager
async def lifespan(app):
    LIFESPAN["started"] += 1
    yield
    LIFESPAN["stopped"] += 1


app = FastAPI(lifespan=lifespan)


@app.get("/sync")
def sync_view():
    with gunicorn_pool.get("db").connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": cur.fetchone()[0], "pid": os.getpid(), "lifespan": LIFESPAN["started"]}


@app.get("/on-loop")
async def on_loop():
    try:
        with gunicorn_pool.get("db").connection():
            return {"refused": False}
    except gunicorn_pool.PoolError as exc:
        return {"refused": True, "message": str(exc)}


@app.get("/leak")
def leak():
    gunicorn_pool.get("db").pool().getconn()
    return {"leaked": True, "pid": os.getpid()}


@app.get("/stats")
def stats():
    return {"stats": gunicorn_pool.get("db").stats(), "pid": os.getpid()}
