"""The same FastAPI app on a SQLAlchemy async engine (postgresql+psycopg, its default
AsyncAdaptedQueuePool: pool_size 5, max_overflow 10), opened in the app's lifespan and disposed at
its end, as SQLAlchemy's docs show it. For bench/async_pools.py e2e, under gunicorn's stock
``-k asgi``."""

from contextlib import asynccontextmanager

from _settings import PG_KW
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from sqlalchemy.ext.asyncio import create_async_engine

URL = "postgresql+psycopg://{user}:{password}@{host}:{port}/{dbname}".format(**PG_KW)
engine = None


@asynccontextmanager
async def lifespan(app):
    global engine
    engine = create_async_engine(URL)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    async with engine.connect() as conn:
        (await conn.exec_driver_sql("SELECT 1")).all()
    return "1"
