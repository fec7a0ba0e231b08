"""A FastAPI app that creates its SQLAlchemy async engine in its own lifespan startup (the other
common FastAPI pattern), after gunicorn_pool's boot walk has run. ``SA_ASYNC_URL`` is the engine's
URL; with ``SA_LIFESPAN_ADOPT=1`` the lifespan calls ``gunicorn_pool.sqlalchemy.adopt(engine)``,
otherwise it only keeps the engine in ``app.state`` (no line of gunicorn_pool's).

    /conn   the server's session id of an AsyncSession's connection, the engine's pool class, the pid
"""

import contextlib
import os

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import gunicorn_pool.sqlalchemy


@contextlib.asynccontextmanager
async def lifespan(app):
    engine = create_async_engine(os.environ["SA_ASYNC_URL"])
    if os.environ.get("SA_LIFESPAN_ADOPT") == "1":
        gunicorn_pool.sqlalchemy.adopt(engine, name="sa", max_size=2)
    app.state.engine = engine
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/conn")
async def conn():
    engine = app.state.engine
    sql = "SELECT CONNECTION_ID()" if engine.dialect.name == "mysql" else "SELECT pg_backend_pid()"
    async with AsyncSession(engine) as session:
        session_id = (await session.execute(text(sql))).scalar()
    return {"session": session_id, "pool": type(engine.sync_engine.pool).__name__, "pid": os.getpid()}
