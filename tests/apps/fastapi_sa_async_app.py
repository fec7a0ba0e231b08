"""A FastAPI app on a SQLAlchemy ``create_async_engine()`` engine, the FastAPI + SQLAlchemy pattern:
the app makes its engine at import and ``gunicorn_pool.sqlalchemy.adopt()`` puts it on a
per-worker pool. The test's gunicorn.conf.py sets ``SA_ASYNC_URL`` (an aiomysql or psycopg URL)
and ``SA_ASYNC_OPTIONS`` (adopt()'s pool options, JSON), optionally ``SA_ASYNC_CONNECT_ARGS``
(the engine's ``connect_args``, JSON: a driver's connect timeout); with ``SA_ASYNC_SERVICE`` set, the
engine is instead ``gunicorn_pool.get(SA_ASYNC_SERVICE).engine()`` (EnginePool(..., asyncio=True)
registered by the conf).

    /conn           the server's session id of an AsyncSession's connection, the worker pid
    /sleep?s=       a query that sleeps s seconds on the server (pg_sleep / SLEEP)
    /sleep-watch?s= the same, cancelled when the client goes away
    /leak           an AsyncSession that runs a query and is never closed (kept referenced)
    /stats          every service's figures

SQLAlchemy's pool timeout (SQLAlchemyPoolTimeout) answers 503.
"""

import json
import os

from _asgi import cancelled_when_client_leaves
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import gunicorn_pool
import gunicorn_pool.sqlalchemy

SERVICE = os.environ.get("SA_ASYNC_SERVICE")
if not SERVICE:
    connect_args = json.loads(os.environ.get("SA_ASYNC_CONNECT_ARGS", "{}"))
    engine = create_async_engine(os.environ["SA_ASYNC_URL"], connect_args=connect_args)
    gunicorn_pool.sqlalchemy.adopt(engine, name="sa", **json.loads(os.environ.get("SA_ASYNC_OPTIONS", "{}")))

app = FastAPI()
_kept = []  # the leaked sessions: referenced, so no garbage collection ends them


def current_engine():
    return gunicorn_pool.get(SERVICE).engine() if SERVICE else engine


@app.exception_handler(SATimeoutError)
async def unavailable(request: Request, exc: SATimeoutError) -> JSONResponse:
    return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=503)


def _mysql() -> bool:
    return current_engine().dialect.name == "mysql"


@app.get("/conn")
async def conn_view():
    sql = "SELECT CONNECTION_ID()" if _mysql() else "SELECT pg_backend_pid()"
    async with AsyncSession(current_engine()) as session:
        result = await session.execute(text(sql))
        return {"session": result.scalar(), "pid": os.getpid()}


async def _sleep(seconds: float) -> None:
    sql = f"SELECT SLEEP({float(seconds)})" if _mysql() else f"SELECT pg_sleep({float(seconds)})"
    async with current_engine().connect() as conn:
        await conn.execute(text(sql))


@app.get("/sleep")
async def sleep(s: float = 0.2):
    await _sleep(s)
    return {"slept": s, "pid": os.getpid()}


@app.get("/sleep-watch")
async def sleep_watch(request: Request, s: float = 1.0):
    return await cancelled_when_client_leaves(request, _sleep(s), {"slept": s})


@app.get("/leak")
async def leak():
    session = AsyncSession(current_engine())
    await session.execute(text("SELECT 1"))  # the session's connection stays checked out
    _kept.append(session)
    return {"leaked": True, "pid": os.getpid()}


@app.get("/stats")
async def stats():
    return {name: service.stats() for name, service in gunicorn_pool.registered().items()} | {"pid": os.getpid()}
