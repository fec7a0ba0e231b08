"""The asyncio pools: checkout + SELECT 1 + return against the raw async drivers, and FastAPI end to end.

``--part overhead`` (one event loop, no gunicorn): per operation, a lease of one connection and a
``SELECT 1`` on it, divided by the same ``SELECT 1`` on a raw connection of the same driver, for
psycopg's ``AsyncConnection`` and aiomysql; with psycopg_pool's ``AsyncConnectionPool``,
SQLAlchemy's async engine (``create_async_engine(...).connect()``, the driver's own ``SELECT 1`` on
its raw connection), the same engine adopted (``gunicorn_pool.sqlalchemy.adopt(async_engine)``: its
pool is gunicorn_pool's AsyncGunicornPool) and aiomysql's own pool beside them, and asyncpg's pool,
SQLAlchemy's asyncpg engine and that engine adopted ÷ raw asyncpg. Each block runs between two raw
blocks (bench/_common.py ``bracketed``); a last line per group divides the adopted engine's ratio by
SQLAlchemy's own pool's.

``--part e2e``: FastAPI on PostgreSQL, ``gunicorn -w 2``, driven by ``wrk -c64``: gunicorn_pool's
AsyncDatabasePool under ``-k gunicorn_pool.AsgiWorker`` vs a SQLAlchemy async engine opened in the
app's lifespan under gunicorn's stock ``-k asgi``, and that engine adopted under
``-k gunicorn_pool.AsgiWorker`` (bench/apps/fastapi_*_app.py); req/s, latency, and the most server
sessions of each login seen while wrk ran.

``--part instructions``: the same SQLAlchemy rows counted by callgrind (bench/instructions.py's
method: two run lengths, the difference per operation), ``create_async_engine()`` with SQLAlchemy's
own pool vs the same engine adopted, on psycopg, asyncpg and aiomysql: the figure a busy 2-core
machine cannot blur (bench/_sa_async_ops.py is the loop).

    python bench/async_pools.py --part overhead --rounds 9
    python bench/async_pools.py --part e2e --rounds 5
    python bench/async_pools.py --part instructions --n1 300 --n2 1500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from _common import BenchUser, PGBenchUser, bracketed, bracketed_rows, fmt, preamble, spread, table
from _server import Server
from e2e import drive

from gunicorn_pool import AsyncDatabasePool
from gunicorn_pool.base import WorkerProfile, set_profile

Body = Callable[[], Awaitable[None]]


def timed(loop: asyncio.AbstractEventLoop, ops: int, body: Body) -> Callable[[], float]:
    """A block: *ops* awaits of *body* in *loop*; returns microseconds per operation."""

    async def block() -> float:
        start = time.perf_counter()
        for _ in range(ops):
            await body()
        return (time.perf_counter() - start) / ops * 1e6

    def run() -> float:
        gc.collect()
        return loop.run_until_complete(block())

    return run


async def pg_select(conn: Any) -> None:
    cur = await conn.execute("SELECT 1")
    await cur.fetchall()


async def my_select(conn: Any) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT 1")
        await cur.fetchall()


def within(lend: Callable[[], Any], op: Callable[[Any], Awaitable[None]]) -> Body:
    async def body() -> None:
        async with lend() as conn:
            await op(conn)

    return body


async def adopted_engine(url: str, closers: list[Any]) -> Any:
    """``create_async_engine(url)`` adopted: its pool is gunicorn_pool's (max_size 1), opened in this loop."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from gunicorn_pool.registry import unregister
    from gunicorn_pool.sqlalchemy import adopt

    engine = create_async_engine(url)
    name = f"bench-sa-{id(engine)}"
    service = adopt(engine, name=name, min_size=1, max_size=1)
    unregister(name)
    await service.ainit_pool()
    closers.append(service.aclose_pool)
    return engine


#: The two SQLAlchemy rows of each group, whose ratio the group's last line gives.
SA_STOCK = "SQLAlchemy async engine.connect()"
SA_ADOPTED = "adopt(async_engine): the same engine on gunicorn_pool's pool"


def sqlalchemy_connect(engine: Any, op: Callable[[Any], Awaitable[None]]) -> Body:
    async def body() -> None:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await op(raw.driver_connection)

    return body


async def build_pg(user: PGBenchUser, closers: list[Any]) -> dict[str, Body]:
    import psycopg
    from psycopg_pool import AsyncConnectionPool
    from sqlalchemy.ext.asyncio import create_async_engine

    raw = await psycopg.AsyncConnection.connect(**user.kwargs())
    closers.append(raw.close)
    pgpool = AsyncConnectionPool(user.conninfo(), min_size=1, max_size=1, kwargs={"autocommit": True}, open=False)
    await pgpool.open(wait=True)
    closers.append(pgpool.close)
    engine = create_async_engine(user.url("postgresql+psycopg"), pool_size=1, max_overflow=0)
    closers.append(engine.dispose)
    db = AsyncDatabasePool({"default": dict(user.config(), min_size=1, max_size=1)}, name="bench-apg")
    await db.ainit_pool()
    closers.append(db.aclose_pool)
    adopted = await adopted_engine(user.url("postgresql+psycopg"), closers)
    return {
        "raw psycopg AsyncConnection": lambda: pg_select(raw),
        "psycopg_pool AsyncConnectionPool": within(pgpool.connection, pg_select),
        f"{SA_STOCK} (postgresql+psycopg, rollback on return)": sqlalchemy_connect(engine, pg_select),
        f"{SA_ADOPTED}": sqlalchemy_connect(adopted, pg_select),
        "gunicorn_pool AsyncDatabasePool.connection()": within(db.connection, pg_select),
    }


async def build_mysql(user: BenchUser, closers: list[Any]) -> dict[str, Body]:
    import aiomysql
    from sqlalchemy.ext.asyncio import create_async_engine

    kw = user.kwargs()
    raw = await aiomysql.connect(host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"],
                                 db=kw["database"], autocommit=True)  # fmt: skip
    closers.append(raw.ensure_closed)
    own = await aiomysql.create_pool(minsize=1, maxsize=1, host=kw["host"], port=kw["port"], user=kw["user"],
                                     password=kw["password"], db=kw["database"], autocommit=True)  # fmt: skip

    async def close_own() -> None:
        own.close()
        await own.wait_closed()

    closers.append(close_own)
    engine = create_async_engine(user.url("mysql+aiomysql"), pool_size=1, max_overflow=0)
    closers.append(engine.dispose)
    db = AsyncDatabasePool({"default": user.url() + "?min_size=1&max_size=1&ssl_disabled=true"}, name="bench-amy")
    await db.ainit_pool()
    closers.append(db.aclose_pool)
    adopted = await adopted_engine(user.url("mysql+aiomysql"), closers)
    return {
        "raw aiomysql connection": lambda: my_select(raw),
        "aiomysql's own pool (acquire)": within(own.acquire, my_select),
        f"{SA_STOCK} (mysql+aiomysql, rollback on return)": sqlalchemy_connect(engine, my_select),
        f"{SA_ADOPTED}": sqlalchemy_connect(adopted, my_select),
        "gunicorn_pool AsyncDatabasePool.connection()": within(db.connection, my_select),
    }


async def build_asyncpg(user: PGBenchUser, closers: list[Any]) -> dict[str, Body]:
    import asyncpg

    kw = user.kwargs()
    args = dict(host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"], database=kw["dbname"])
    raw = await asyncpg.connect(**args)
    closers.append(raw.close)
    pool = await asyncpg.create_pool(min_size=1, max_size=1, **args)
    closers.append(pool.close)
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(user.url("postgresql+asyncpg"), pool_size=1, max_overflow=0)
    closers.append(engine.dispose)
    adopted = await adopted_engine(user.url("postgresql+asyncpg"), closers)

    async def fetch(conn: Any) -> None:
        await conn.fetch("SELECT 1")

    async def pool_op() -> None:
        async with pool.acquire() as conn:
            await fetch(conn)

    return {
        "raw asyncpg connection": lambda: fetch(raw),
        "asyncpg's own pool (acquire)": pool_op,
        f"{SA_STOCK} (postgresql+asyncpg, rollback on return)": sqlalchemy_connect(engine, fetch),
        f"{SA_ADOPTED}": sqlalchemy_connect(adopted, fetch),
    }


def overhead_group(loop: asyncio.AbstractEventLoop, title: str, builder: Callable[[list[Any]], Any], rounds: int,
                   ops: int) -> str:  # fmt: skip
    closers: list[Any] = []
    try:
        bodies = loop.run_until_complete(builder(closers))
        variants = {name: timed(loop, ops, body) for name, body in bodies.items()}
        for run in variants.values():  # warm-up, not reported
            run()
        base_name = next(iter(variants))
        base = variants.pop(base_name)
        base_values, values, rel = bracketed(base, variants, rounds)
    finally:
        for close in reversed(closers):
            result = close()
            if asyncio.iscoroutine(result):
                loop.run_until_complete(result)
    rows = bracketed_rows(base_name, base_values, values, rel)
    out = f"### {title}\n\n" + table(["row", "median µs/op", "min", "max", "÷ raw"], rows)
    stock = next((name for name in rel if name.startswith(SA_STOCK)), None)
    if stock is not None and SA_ADOPTED in rel:
        paired = spread([a / b for a, b in zip(rel[SA_ADOPTED], rel[stock])])
        out += (f"\n\nadopt(async_engine) ÷ SQLAlchemy's own async pool, per round: **{paired[0]:.3f}**"
                f" ({paired[1]:.3f}–{paired[2]:.3f})")  # fmt: skip
    return out


def overhead(rounds: int, ops: int) -> None:
    set_profile(WorkerProfile(kind="asyncio"))
    loop = asyncio.new_event_loop()
    pg, my = PGBenchUser(), BenchUser()
    try:
        print(preamble("Asyncio pools: checkout + SELECT 1 + return ÷ the raw async driver",
                       f"{rounds} rounds, {ops} operations per block; every block runs between two raw blocks;"
                       " ratio = block µs/op ÷ mean of the raw blocks around it, median (min–max)",
                       postgresql=True))  # fmt: skip
        print(overhead_group(loop, "PostgreSQL (psycopg AsyncConnection)", lambda c: build_pg(pg, c), rounds, ops))
        print()
        print(overhead_group(loop, "MariaDB (aiomysql)", lambda c: build_mysql(my, c), rounds, ops))
        print()
        print(overhead_group(loop, "Reference: asyncpg", lambda c: build_asyncpg(pg, c), rounds, ops))
        print()
        print("Target: gunicorn_pool ≤ 1.05 × raw, and below psycopg_pool's and SQLAlchemy's ratios.")
    finally:
        loop.close()
        pg.close()
        my.close()


def e2e(rounds: int, seconds: float, connections: int, size: int) -> None:
    theirs = "SQLAlchemy async engine in the lifespan, -k asgi"
    variants = {
        "gunicorn_pool AsyncDatabasePool, -k gunicorn_pool.AsgiWorker": ("fastapi_gp_app", "gunicorn_pool.AsgiWorker"),
        theirs: ("fastapi_sa_app", "asgi"),
        "the same SQLAlchemy engine adopted, -k gunicorn_pool.AsgiWorker": ("fastapi_sa_adopted_app",
                                                                            "gunicorn_pool.AsgiWorker"),
    }  # fmt: skip
    users = {name: PGBenchUser() for name in variants}
    servers: dict[str, Server] = {}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for name, (module, klass) in variants.items():
            servers[name] = Server(module, klass, 2, dict(users[name].env(), GPB_SIZE=str(size))).start()
        for name in variants:
            servers[name].wait_ready()
        for name in variants:  # warm-up, not reported
            drive(servers[name], users[name], connections, 2)
        names = list(variants)
        for r in range(rounds):
            for name in names if r % 2 == 0 else list(reversed(names)):
                results[name].append(drive(servers[name], users[name], connections, seconds))
    finally:
        for server in servers.values():
            server.stop()
        for user in users.values():
            user.close()
    rows = []
    for name in variants:
        runs = results[name]
        rps = [x["rps"] for x in runs]
        ratio = spread([a["rps"] / b["rps"] for a, b in zip(runs, results[theirs]) if b["rps"]])
        errors = sum(x["errors"] for x in runs)
        rows.append([name, fmt(spread(rps)[0], 0), f"{fmt(min(rps), 0)}–{fmt(max(rps), 0)}",
                     f"**{ratio[0]:.2f}** ({ratio[1]:.2f}–{ratio[2]:.2f})",
                     f"{spread([x['p50'] for x in runs])[0]:.2f}", f"{spread([x['p99'] for x in runs])[0]:.2f}",
                     errors, max(x["sessions"] for x in runs)])  # fmt: skip
    print(preamble(f"FastAPI end to end: gunicorn -w 2, wrk -t1 -c{connections}, {seconds:g} s a run",
                   f"{rounds} rounds, rows taking turns; gunicorn_pool max_size={size} per worker; SQLAlchemy's"
                   " default pool (5 + 10 overflow per worker); sessions = the login's pg_stat_activity count,"
                   " sampled every 0.2 s", postgresql=True, mysql=False))  # fmt: skip
    print(table(["row", "median req/s", "min–max", "÷ SQLAlchemy (paired runs)", "p50 ms", "p99 ms", "errors",
                 "max sessions (2 workers)"], rows))  # fmt: skip
    print()
    print("Target: req/s ratio ≥ 1.0; at most max_size sessions per worker where the stock engine opens more.")


def instructions(n1: int, n2: int) -> None:
    from instructions import per_op

    script = Path(__file__).with_name("_sa_async_ops.py")
    root = Path(__file__).resolve().parent.parent
    pg, my = PGBenchUser(), BenchUser()
    rows = []
    try:
        drivers = {"psycopg": pg.url("postgresql+psycopg"), "asyncpg": pg.url("postgresql+asyncpg"),
                   "aiomysql": my.url("mysql+aiomysql")}  # fmt: skip
        for driver, url in drivers.items():
            os.environ["GPB_SA_URL"] = url  # read by the script in the child (never on a command line)
            stock = per_op(sys.executable, script, "stock", n1, n2, root)
            adopted = per_op(sys.executable, script, "adopted", n1, n2, root)
            rows.append([driver, f"{stock:,.0f}", f"{adopted:,.0f}", f"**{adopted / stock:.3f}**"])
    finally:
        os.environ.pop("GPB_SA_URL", None)
        pg.close()
        my.close()
    print(preamble("SQLAlchemy async engine: engine.connect() + SELECT 1 + return, instructions per operation",
                   f"callgrind, (count(N={n2}) - count(N={n1})) / {n2 - n1}, PYTHONHASHSEED=0; the server's"
                   " work is another process and not counted", postgresql=True))  # fmt: skip
    print(table(["driver", "SQLAlchemy's AsyncAdaptedQueuePool", "adopt(async_engine)", "÷ SQLAlchemy's"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("overhead", "e2e", "instructions", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--n1", type=int, default=300, help="--part instructions: the shorter run")
    parser.add_argument("--n2", type=int, default=1500, help="--part instructions: the longer run")
    args = parser.parse_args()
    if args.part in ("overhead", "all"):
        overhead(args.rounds, args.ops)
    if args.part in ("e2e", "all"):
        e2e(max(1, args.rounds // 2), args.seconds, args.connections, args.size)
    if args.part == "instructions":  # minutes under valgrind: asked for by name only
        instructions(args.n1, args.n2)


if __name__ == "__main__":
    main()
