"""One row of ``async_pools.py --part instructions``, run under callgrind: *n* times
``engine.connect()`` + the driver's own ``SELECT 1`` on its raw connection + return, on a
``create_async_engine()`` engine (``GPB_SA_URL``) with SQLAlchemy's pool (``stock``, pool_size 1)
or adopted (``adopted``: gunicorn_pool's AsyncGunicornPool, max_size 1).

    python _sa_async_ops.py stock|adopted N
"""

from __future__ import annotations

import asyncio
import os
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from gunicorn_pool.registry import unregister
from gunicorn_pool.sqlalchemy import adopt


async def main(kind: str, n: int) -> None:
    url = os.environ["GPB_SA_URL"]
    if kind == "stock":
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        close = engine.dispose
    else:
        engine = create_async_engine(url)
        service = adopt(engine, name="bench", min_size=1, max_size=1)
        unregister("bench")
        await service.ainit_pool()
        close = service.aclose_pool
    for _ in range(n):
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            if engine.dialect.name == "mysql":
                async with raw.cursor() as cur:
                    await cur.execute("SELECT 1")
                    await cur.fetchall()
            elif engine.dialect.driver == "asyncpg":
                await raw.fetch("SELECT 1")
            else:
                await (await raw.execute("SELECT 1")).fetchall()
    await close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
