"""Example FastAPI app: counts visits in the pool's database, per worker pid, from ``async def``.

Each request borrows a connection of the worker's "db" pool (an AsyncDatabasePool registered in
fastapi.conf.py, opened in the ASGI lifespan before the first request). A pool that cannot serve
in time answers 503 instead of hanging.
"""

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import gunicorn_pool

app = FastAPI()

CREATE = "CREATE TABLE IF NOT EXISTS visits (pid INTEGER NOT NULL, path VARCHAR(200) NOT NULL)"


@app.exception_handler(gunicorn_pool.PoolError)
async def pool_unavailable(request: Request, exc: gunicorn_pool.PoolError) -> JSONResponse:
    busy = isinstance(exc, (gunicorn_pool.PoolTimeout, gunicorn_pool.TooManyRequests, gunicorn_pool.ConnectError))
    return JSONResponse({"error": type(exc).__name__}, status_code=503 if busy else 500)


async def run(conn, adapter: str, sql: str, params: tuple = ()):
    """One statement and its first row, on any of the three drivers."""
    if adapter == "mysql":  # aiomysql: a cursor, %s placeholders
        async with conn.cursor() as cur:
            await cur.execute(sql.replace("?", "%s"), params)
            return await cur.fetchone()
    if adapter == "postgresql":  # psycopg: %s placeholders
        cur = await conn.execute(sql.replace("?", "%s"), params)
    else:  # aiosqlite: ? placeholders
        cur = await conn.execute(sql, params)
    return await cur.fetchone() if cur.description else None


@app.get("/{path:path}")
async def visit(path: str):
    db = gunicorn_pool.get("db")
    adapter = db.configs["default"].adapter
    async with db.connection("default") as conn:
        await run(conn, adapter, CREATE)
        await run(conn, adapter, "INSERT INTO visits (pid, path) VALUES (?, ?)", (os.getpid(), "/" + path))
        (count,) = await run(conn, adapter, "SELECT COUNT(*) FROM visits")
    return {"pid": os.getpid(), "visits": count, "pool": db.stats()["default"]}
