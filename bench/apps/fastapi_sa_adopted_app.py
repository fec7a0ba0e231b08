"""The SQLAlchemy async app of fastapi_sa_app.py, its engine made at import and adopted
(``gunicorn_pool.sqlalchemy.adopt``: its pool is gunicorn_pool's, GPB_SIZE connections at most per
worker, opened in the ASGI lifespan). For bench/async_pools.py e2e, under ``-k gunicorn_pool.AsgiWorker``."""

from _settings import PG_KW, SIZE
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from sqlalchemy.ext.asyncio import create_async_engine

import gunicorn_pool.sqlalchemy

URL = "postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}".format(**PG_KW)
engine = create_async_engine(URL)
gunicorn_pool.sqlalchemy.adopt(engine, max_size=SIZE)
app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    async with engine.connect() as conn:
        (await conn.exec_driver_sql("SELECT 1")).all()
    return "1"
