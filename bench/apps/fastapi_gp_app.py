"""FastAPI on gunicorn_pool's AsyncDatabasePool (psycopg AsyncConnection), for bench/async_pools.py e2e.

Run under ``-k gunicorn_pool.AsgiWorker``: the pool opens in the ASGI lifespan, GPB_SIZE connections
at most per worker. ``/`` is one ``SELECT 1`` round trip.
"""

from _settings import PG_CONFIG, SIZE
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import gunicorn_pool

db = gunicorn_pool.register(gunicorn_pool.AsyncDatabasePool({"default": dict(PG_CONFIG, max_size=SIZE)}), name="db")
app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    async with db.connection() as conn:
        cur = await conn.execute("SELECT 1")
        await cur.fetchall()
    return "1"
