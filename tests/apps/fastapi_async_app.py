"""A FastAPI app on the asyncio pools: ``async def`` endpoints on AsyncDatabasePool ``adb`` (its pool
"default": PostgreSQL or MariaDB, as the test's gunicorn.conf.py registers it) and, when registered,
AsyncRedisPool ``aredis``.

    /conn           the server's session id of a lease of adb, the worker pid
    /sleep?s=       a query that sleeps s seconds on the server (pg_sleep / SLEEP)
    /sleep-watch?s= the same, cancelled when the client goes away (the endpoint watches
                    ``request.is_disconnected()``, as a streaming response does)
    /sleep-timeout?s=&limit=   the same under asyncio.wait_for(limit): 504 when it runs out
    /leak           takes a connection with getconn() and never gives it back
    /ws-leak        a WebSocket: takes a connection with getconn(), sends its session id, closes
    /stats          every service's figures
    /redis          INCR of a key through the pooled client; its connection's CLIENT ID

A pool that cannot serve in time (PoolTimeout, TooManyRequests, ConnectError) answers 503.
"""

import asyncio
import os

from _asgi import cancelled_when_client_leaves
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse

import gunicorn_pool

app = FastAPI()


@app.exception_handler(gunicorn_pool.PoolError)
async def unavailable(request: Request, exc: gunicorn_pool.PoolError) -> JSONResponse:
    status = 503 if isinstance(exc, (gunicorn_pool.PoolTimeout, gunicorn_pool.TooManyRequests,
                                     gunicorn_pool.ConnectError)) else 500  # fmt: skip
    return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=status)


def db():
    return gunicorn_pool.get("adb")


def _mysql() -> bool:
    return db().configs["default"].adapter == "mysql"


async def fetch_one(conn, sql: str):
    if _mysql():
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return await cur.fetchone()
    cur = await conn.execute(sql)
    return await cur.fetchone()


def _session_sql() -> str:
    return "SELECT CONNECTION_ID()" if _mysql() else "SELECT pg_backend_pid()"


def _sleep_sql(seconds: float) -> str:
    return f"SELECT SLEEP({float(seconds)})" if _mysql() else f"SELECT pg_sleep({float(seconds)})"


@app.get("/conn")
async def conn_view():
    async with db().connection() as conn:
        (session,) = await fetch_one(conn, _session_sql())
    return {"session": session, "pid": os.getpid()}


async def _sleep(seconds: float) -> None:
    async with db().connection() as conn:
        await fetch_one(conn, _sleep_sql(seconds))


@app.get("/sleep")
async def sleep(s: float = 0.2):
    await _sleep(s)
    return {"slept": s, "pid": os.getpid()}


@app.get("/sleep-watch")
async def sleep_watch(request: Request, s: float = 1.0):
    return await cancelled_when_client_leaves(request, _sleep(s), {"slept": s})


@app.get("/sleep-timeout")
async def sleep_timeout(s: float = 1.0, limit: float = 0.1):
    try:
        await asyncio.wait_for(_sleep(s), limit)
    except asyncio.TimeoutError:
        return JSONResponse({"timed_out": True}, status_code=504)
    return {"slept": s}


@app.get("/leak")
async def leak():
    await db().getconn()
    return {"leaked": True, "pid": os.getpid()}


@app.websocket("/ws-leak")
async def ws_leak(websocket: WebSocket):
    await websocket.accept()
    conn = await db().getconn()  # never given back: the WebSocket's request scope reclaims it
    (session,) = await fetch_one(conn, _session_sql())
    await websocket.send_json({"session": session, "pid": os.getpid()})
    await websocket.close()


@app.get("/stats")
async def stats():
    return {name: service.stats() for name, service in gunicorn_pool.registered().items()} | {"pid": os.getpid()}


@app.get("/redis")
async def redis_view():
    r = gunicorn_pool.get("aredis").client()
    hits = await r.incr("gunicorn_pool:test:hits")
    return {"hits": hits, "client_id": await r.client_id(), "pid": os.getpid()}
