"""Per-operation cost of a checkout + SELECT 1 + checkin, against a raw connection.

Every row runs the same operation on one connection of its own (no sharing):
``cursor(); execute("SELECT 1"); fetchall(); close()``, wrapped in the pool's
checkout and checkin. The raw persistent PyMySQL connection is the floor.
Every block of a row runs between two blocks of the raw row, and rows take
turns (forward, then reverse order): the ratio of a block is its µs/op over
the mean of the two raw blocks around it, so drift on a shared machine hits
both sides alike. The table gives medians with min and max over the rounds.

A second table pairs single operations instead of blocks: a raw op and a
row's op alternate (AB, then BA) and each is timed alone; per chunk of 500
pairs the ratio is the median row op over the median raw op. It resolves a
few microseconds on a machine whose block timings swing 2x.

The ``mysqlclient`` part does the same for the C driver: a raw persistent
mysqlclient connection is its floor, beside a raw connection of the class the
pool lends (PooledMySQLdbConnection) and ``DatabasePool.connection()`` with
``driver: mysqlclient``.

    python bench/overhead.py [--part mysqlclient] [--rounds 40] [--ops 200] [--pairs 10000]
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import time
from typing import Any, Callable, Optional

import pymysql
from _common import BenchUser, PGBenchUser, bracketed, bracketed_rows, preamble, spread, table
from _variants import MinimalFifoPool

from gunicorn_pool import DatabasePool

SQL = "SELECT 1"
RAW = "raw persistent PyMySQL connection"
PG_RAW = "raw persistent psycopg connection"
RAW_SAME = "raw PooledMySQLConnection (the class the pool lends, no pool)"
bodies: dict[str, Callable[[], None]] = {}  # one operation of each row, for the paired part


def _op(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(SQL)
    cur.fetchall()
    cur.close()


def timed(ops: int, body: Callable[[], None]) -> Callable[[], float]:
    """A round: *ops* calls of *body*; returns microseconds per call."""

    def run() -> float:
        gc.collect()
        start = time.perf_counter()
        for _ in range(ops):
            body()
        return (time.perf_counter() - start) / ops * 1e6

    return run


def paired(raw: Callable[[], None], body: Callable[[], None], pairs: int, chunk: int) -> list[float]:
    """Per-operation pairing: raw op and pool op alternate (AB, then BA), each timed alone.

    Drift on a shared machine lands on both ops of a pair alike, and a
    median per chunk ignores the scheduler's hiccups. Returns, per chunk of
    *chunk* pairs, the median pool op over the median raw op.
    """
    clock = time.perf_counter_ns
    out = []
    for _ in range(pairs // chunk):
        a: list[int] = []
        b: list[int] = []
        gc.collect()
        for i in range(chunk):
            for first in ((raw, body) if i % 2 == 0 else (body, raw)):
                t0 = clock()
                first()
                (a if first is raw else b).append(clock() - t0)
        out.append(statistics.median(b) / statistics.median(a))
    return out


NO_PROBE = "gunicorn_pool, probe_after=none (no socket poll on checkout)"
DBAPI_ON = "gunicorn_pool dbapi adapter, PyMySQL creator, autocommit on (no round trip on return)"
DBAPI_OFF = "gunicorn_pool dbapi adapter, PyMySQL creator, autocommit off (a COMMIT on every return)"
PAIRED = ("DBUtils PooledDB (ping=1, default)", "SQLAlchemy QueuePool", "gunicorn_pool DatabasePool.connection()",
          NO_PROBE, "reference: minimal FIFO pool (lock + deque, no features)", DBAPI_ON, DBAPI_OFF)  # fmt: skip
PG_POOL = "PG: psycopg_pool ConnectionPool"
PG_SQLALCHEMY = "PG: SQLAlchemy QueuePool (postgresql+psycopg, rollback on return)"
PG_GP = "PG: gunicorn_pool DatabasePool.connection()"
PG_UNTRACKED = "PG: gunicorn_pool, reset_session=False (no statement tracking)"
PG_PAIRED = (PG_POOL, PG_SQLALCHEMY, PG_GP, PG_UNTRACKED)
PG2_RAW = "PG: raw persistent psycopg2 connection"
PG2_GP = "PG: gunicorn_pool DatabasePool.connection(), driver psycopg2"
#: psycopg2's row against its own driver's floor (the block table shows it ÷ raw psycopg 3).
PG2_PAIR = ("PG: gunicorn_pool on psycopg2 ÷ raw psycopg2", PG2_RAW, PG2_GP)
#: A paired row against a raw connection of the class the pool lends (one driver class in the loop).
SAME_CLASS = ("gunicorn_pool DatabasePool.connection() ÷ raw PooledMySQLConnection", RAW_SAME,
              "gunicorn_pool DatabasePool.connection()")


def _closing(acquire: Callable[[], Any]) -> Callable[[], None]:
    """One operation on a connection from *acquire*, given back with ``close()``."""

    def op() -> None:
        conn = acquire()
        _op(conn)
        conn.close()

    return op


def _within(lend: Callable[[], Any]) -> Callable[[], None]:
    """One operation inside ``with lend() as conn`` (gunicorn_pool's context managers)."""

    def op() -> None:
        with lend() as conn:
            _op(conn)

    return op


def build(user: BenchUser, ops: int) -> tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]:
    kw = user.kwargs()
    closers: list[Callable[[], None]] = []
    variants: dict[str, Callable[[], float]] = {}
    bodies.clear()

    def add(label: str, body: Callable[[], None], count: int = ops) -> None:
        bodies[label] = body
        variants[label] = timed(count, body)

    raw = pymysql.connect(**kw)
    closers.append(raw.close)
    add(RAW, lambda: _op(raw))
    from gunicorn_pool.connectors.mysql import PooledMySQLConnection

    same = PooledMySQLConnection(**kw)
    closers.append(same.close)
    add(RAW_SAME, lambda: _op(same))

    few = max(5, ops // 40)
    add("connect per operation (PyMySQL defaults: TLS preferred)", _closing(lambda: pymysql.connect(**kw)), few)
    add("connect per operation (ssl_disabled=True)", _closing(lambda: pymysql.connect(ssl_disabled=True, **kw)), few)

    from dbutils.pooled_db import PooledDB

    for label, ping in (("DBUtils PooledDB (ping=1, default)", 1), ("DBUtils PooledDB (ping=0)", 0)):
        pdb = PooledDB(pymysql, mincached=1, maxcached=1, maxconnections=1, blocking=True, ping=ping, **kw)
        closers.append(pdb.close)
        add(label, _closing(pdb.connection))

    import sqlalchemy

    for label, pre_ping in (("SQLAlchemy QueuePool", False), ("SQLAlchemy QueuePool (pre_ping)", True)):
        engine = sqlalchemy.create_engine(user.url("mysql+pymysql"), pool_size=1, max_overflow=0,
                                          pool_pre_ping=pre_ping)  # fmt: skip
        engine.raw_connection().close()  # first connect: dialect initialisation
        closers.append(engine.dispose)
        add(label, _closing(engine.raw_connection))

    db = DatabasePool({"default": dict(kw, min_size=1, max_size=1)}, name="bench")
    no_probe = DatabasePool({"default": dict(kw, min_size=1, max_size=1, probe_after=None)}, name="bench-np")
    for service in (db, no_probe):
        service.init_pool()
        closers.append(service.close_pool)
    add("gunicorn_pool DatabasePool.connection()", _within(db.connection))
    add(NO_PROBE, _within(no_probe.connection))
    add("gunicorn_pool ConnectionPool.connection()", _within(db.pool("default").connection))

    import functools

    creator = functools.partial(pymysql.connect, ssl_disabled=True, **kw)
    for label, autocommit in ((DBAPI_ON, True), (DBAPI_OFF, False)):
        generic = DatabasePool({"default": {"adapter": "dbapi", "creator": creator, "autocommit": autocommit,
                                            "min_size": 1, "max_size": 1}}, name="bench-dbapi")  # fmt: skip
        generic.init_pool()
        closers.append(generic.close_pool)
        add(label, _within(generic.connection))

    ref = MinimalFifoPool([pymysql.connect(ssl_disabled=True, **kw)])
    closers.append(ref.connections[0].close)

    def minimal() -> None:
        conn = ref.getconn()
        _op(conn)
        ref.putconn(conn)

    add("reference: minimal FIFO pool (lock + deque, no features)", minimal)
    return variants, closers


MC_RAW = "raw persistent mysqlclient connection"
MC_SAME = "raw PooledMySQLdbConnection (the class the pool lends, no pool)"
MC_GP = "gunicorn_pool DatabasePool.connection(), driver mysqlclient"
MC_PAIRED = (MC_SAME, MC_GP)
MC_SAME_CLASS = ("gunicorn_pool, driver mysqlclient ÷ raw PooledMySQLdbConnection", MC_SAME, MC_GP)


def build_mysqlclient(user: BenchUser, ops: int) -> tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]:
    """The mysqlclient group: a raw connection, the pool's connection class alone, the pool."""
    import MySQLdb

    from gunicorn_pool.connectors.mysqlclient import PooledMySQLdbConnection

    kw = user.kwargs()
    closers: list[Callable[[], None]] = []
    variants: dict[str, Callable[[], float]] = {}
    bodies.clear()

    def add(label: str, body: Callable[[], None]) -> None:
        bodies[label] = body
        variants[label] = timed(ops, body)

    for label, make in ((MC_RAW, MySQLdb.connect), (MC_SAME, PooledMySQLdbConnection)):
        conn = make(**kw)
        closers.append(conn.close)
        add(label, functools.partial(_op, conn))
    db = DatabasePool({"default": dict(kw, driver="mysqlclient", min_size=1, max_size=1)}, name="bench-mc")
    db.init_pool()
    closers.append(db.close_pool)
    add(MC_GP, _within(db.connection))
    return variants, closers


def build_pg(user: PGBenchUser, ops: int) -> tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]:
    """The PostgreSQL group: raw psycopg, psycopg_pool, SQLAlchemy on psycopg, gunicorn_pool."""
    import psycopg
    import sqlalchemy
    from psycopg_pool import ConnectionPool

    closers: list[Callable[[], None]] = []
    variants: dict[str, Callable[[], float]] = {}

    def add(label: str, body: Callable[[], None]) -> None:
        bodies[label] = body
        variants[label] = timed(ops, body)

    raw = psycopg.connect(**user.kwargs())
    closers.append(raw.close)
    add(PG_RAW, lambda: _op(raw))

    # psycopg's own pool, as its docs show it: autocommit connections, no check on checkout.
    pgpool = ConnectionPool(user.conninfo(), min_size=1, max_size=1, kwargs={"autocommit": True}, open=True)
    pgpool.wait(10)
    closers.append(pgpool.close)
    add(PG_POOL, _within(pgpool.connection))

    engine = sqlalchemy.create_engine(user.url("postgresql+psycopg"), pool_size=1, max_overflow=0)
    engine.raw_connection().close()  # first connect: dialect initialisation
    closers.append(engine.dispose)
    add(PG_SQLALCHEMY, _closing(engine.raw_connection))

    db = DatabasePool({"default": dict(user.config(), min_size=1, max_size=1)}, name="bench-pg")
    untracked = DatabasePool({"default": dict(user.config(), min_size=1, max_size=1, reset_session=False)},
                             name="bench-pg-untracked")  # fmt: skip
    for service in (db, untracked):
        service.init_pool()
        closers.append(service.close_pool)
    add(PG_GP, _within(db.connection))
    add(PG_UNTRACKED, _within(untracked.connection))

    import psycopg2

    raw2 = psycopg2.connect(**{k: v for k, v in user.kwargs().items() if k != "autocommit"})
    raw2.autocommit = True
    closers.append(raw2.close)
    add(PG2_RAW, lambda: _op(raw2))
    db2 = DatabasePool({"default": dict(user.config(), driver="psycopg2", min_size=1, max_size=1)},
                       name="bench-pg2")  # fmt: skip
    db2.init_pool()
    closers.append(db2.close_pool)
    add(PG2_GP, _within(db2.connection))
    return variants, closers


SA_STOCK = "SQLAlchemy engine, stock QueuePool (pool_size=1)"
SA_ENGINE_POOL = "gunicorn_pool.sqlalchemy EnginePool engine (max_size=1)"
SA_ADOPTED = "stock engine adopted: gunicorn_pool.sqlalchemy.adopt(engine)"
SA_PAIRED = (SA_ENGINE_POOL, SA_ADOPTED)


def build_sqlalchemy(url: str, ops: int) -> tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]:
    """ORM rows: ``with Session(engine) as s: s.execute(select(1))`` on a stock engine, on an
    EnginePool engine and on an adopted stock engine (the issue 13 rows)."""
    import sqlalchemy
    from sqlalchemy.orm import Session

    from gunicorn_pool.sqlalchemy import EnginePool, adopt

    closers: list[Callable[[], None]] = []
    variants: dict[str, Callable[[], float]] = {}
    stmt = sqlalchemy.select(1)

    def add(label: str, engine: Any) -> None:
        def body() -> None:
            with Session(engine) as session:
                session.execute(stmt).all()

        body()  # first connect: dialect initialisation
        bodies[label] = body
        variants[label] = timed(ops, body)

    stock = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0)
    closers.append(stock.dispose)
    add(SA_STOCK, stock)
    service = EnginePool({"default": {"url": url, "min_size": 1, "max_size": 1}}, name="bench-orm")
    service.init_pool()
    closers.append(service.close_pool)
    add(SA_ENGINE_POOL, service.engine())
    adopted = sqlalchemy.create_engine(url)
    adopted_service = adopt(adopted, name="bench-adopted", min_size=1, max_size=1)
    adopted_service.init_pool()
    closers.append(adopted_service.close_pool)
    add(SA_ADOPTED, adopted)
    return variants, closers


REDIS_RAW = "raw redis.Redis(single_connection_client=True): its own connection"
REDIS_MINIMAL = "reference: minimal per-command pool (deque pop/append, no features)"
REDIS_PAIRED = ("redis-py default ConnectionPool: redis.Redis()", "gunicorn_pool RedisPool.client()",
                "gunicorn_pool RedisPool.client(), probe_after=none",
                "gunicorn_pool RedisPool.client() in a request scope", REDIS_MINIMAL)  # fmt: skip


def minimal_redis_pool(host: str, port: int) -> Any:
    """Reference only: the least a per-command checkout can cost in redis-py (a deque of one
    connection; no bound, wait, check, lifetime, stats or fork safety)."""
    import collections

    import redis

    class MinimalPool(redis.ConnectionPool):
        def __init__(self) -> None:
            super().__init__(host=host, port=port)
            conn = redis.Connection(host=host, port=port)
            conn.connect()
            self.idle = collections.deque([conn])

        def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
            return self.idle.pop()

        def release(self, connection: Any) -> None:
            self.idle.append(connection)

        def close(self) -> None:
            for conn in self.idle:
                conn.disconnect()

    return MinimalPool()


def build_redis(ops: int) -> tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]:
    """The Redis rows: one GET of a short string per operation, each row on its own connection."""
    import redis

    from gunicorn_pool import RedisPool, request_scope

    host, port = os.environ.get("GP_REDIS_HOST", "127.0.0.1"), int(os.environ.get("GP_REDIS_PORT", "6379"))
    closers: list[Callable[[], None]] = []
    variants: dict[str, Callable[[], float]] = {}
    bodies.clear()
    key = "gunicorn_pool:bench:overhead"

    def add(label: str, client: Any) -> None:
        def body() -> None:
            client.get(key)

        bodies[label] = body
        variants[label] = timed(ops, body)

    raw = redis.Redis(host=host, port=port, single_connection_client=True)
    raw.set(key, "x" * 16)
    closers.append(raw.close)
    add(REDIS_RAW, raw)
    default = redis.Redis(host=host, port=port)
    closers.append(default.close)
    add(REDIS_PAIRED[0], default)
    url = f"redis://{host}:{port}/0?min_size=1&max_size=1"
    service = RedisPool({"default": url, "np": url + "&probe_after=none"}, name="bench-redis")
    service.init_pool()
    closers.append(service.close_pool)
    add(REDIS_PAIRED[1], service.client())
    add(REDIS_PAIRED[2], service.client("np"))
    scope = request_scope("bench")
    scope.__enter__()  # the request scope is this thread's context from here on
    closers.append(lambda: scope.__exit__(None, None, None))
    add(REDIS_PAIRED[3], service.client())
    minimal = minimal_redis_pool(host, port)
    closers.append(minimal.close)
    add(REDIS_MINIMAL, redis.Redis(connection_pool=minimal))
    closers.reverse()  # the scope ends before the pool closes
    return variants, closers


def run_part(title: str, base_name: str, paired_names: tuple[str, ...], target: str,
             build: Callable[[], tuple[dict[str, Callable[[], float]], list[Callable[[], None]]]],
             args: argparse.Namespace, note: str = "", servers: Optional[dict[str, bool]] = None,
             extra_pairs: tuple[tuple[str, str, str], ...] = ()) -> None:  # fmt: skip
    """Build the rows, time them (blocks between raw blocks, then paired) and print both tables.

    *extra_pairs* are (label, baseline row, row) pairs timed against another baseline than *base_name*.
    """
    variants, closers = build()
    try:
        for run in variants.values():  # warm-up, not reported
            run()
        base = variants.pop(base_name)
        base_values, values, rel = bracketed(base, variants, args.rounds)
        pair_rel = {name: paired(bodies[base_name], bodies[name], args.pairs, 500) for name in paired_names}
        for label, baseline, row in extra_pairs:
            pair_rel[label] = paired(bodies[baseline], bodies[row], args.pairs, 500)
    finally:
        for close in closers:
            close()
    rows = bracketed_rows(base_name, base_values, values, rel)
    print(preamble(title, f"{args.rounds} rounds, {args.ops} operations per block{note}; every block runs between"
                          " two raw blocks; ratio = block µs/op ÷ mean of the raw blocks around it, median (min–max)",
                   **(servers or {})))  # fmt: skip
    print(table(["row", "median µs/op", "min", "max", "÷ raw"], rows))
    print()
    print(f"Paired per operation: {args.pairs} pairs per row, raw and row operations alternating (AB, BA); "
          "ratio = median row op ÷ median raw op per 500 pairs, median (min–max) over those chunks")
    print()
    prow = []
    for name in (*paired_names, *(label for label, _, _ in extra_pairs)):
        med, lo, hi = spread(pair_rel[name])
        prow.append([name, f"**{med:.3f}** ({lo:.3f}–{hi:.3f})"])
    print(table(["row", "÷ raw, paired"], prow))
    print()
    print(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "mysql", "mysqlclient", "postgresql", "redis", "sqlalchemy"),
                        default="all",
                        help="which rows (default all)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=40, help="rounds (default 40)")
    parser.add_argument("--ops", type=int, default=200, help="operations per block (default 200)")
    parser.add_argument("--pairs", type=int, default=10000, help="pairs per row in the paired part (default 10000)")
    args = parser.parse_args()
    if args.part in ("all", "mysql"):
        with BenchUser() as user:
            run_part("Overhead: checkout + SELECT 1 + checkin, one connection (MySQL)", RAW, PAIRED,
                     "Target: gunicorn_pool ≤ 1.05 × raw. The last paired row uses a raw connection of the class"
                     " the pool lends: one driver class in the loop (see docs/performance.md).",
                     lambda: build(user, args.ops), args, note=f" ({max(5, args.ops // 40)} for"
                     " connect-per-operation)", extra_pairs=(SAME_CLASS,))  # fmt: skip
        print()
    if args.part in ("all", "mysqlclient"):
        with BenchUser() as user:
            run_part("Overhead: checkout + SELECT 1 + checkin, one connection (MySQL through mysqlclient)", MC_RAW,
                     MC_PAIRED, "Target: gunicorn_pool ≤ 1.05 × raw mysqlclient.",
                     lambda: build_mysqlclient(user, args.ops), args, extra_pairs=(MC_SAME_CLASS,))  # fmt: skip
        print()
    if args.part in ("all", "postgresql"):
        with PGBenchUser() as pg_user:
            run_part("Overhead: checkout + SELECT 1 + checkin, one connection (PostgreSQL)", PG_RAW, PG_PAIRED,
                     "Target: gunicorn_pool ≤ 1.05 × raw (psycopg 3's and psycopg2's rows each against its"
                     " own driver's raw connection), and below psycopg_pool's ratio.",
                     lambda: build_pg(pg_user, args.ops), args,
                     servers={"postgresql": True, "mysql": False}, extra_pairs=(PG2_PAIR,))  # fmt: skip
        print()
    if args.part in ("all", "sqlalchemy"):
        target = "Target: both ≤ 1.0 × the stock engine (issue 13)."
        with BenchUser() as user:
            run_part("Overhead: ORM Session + select(1), one connection (MySQL)", SA_STOCK, SA_PAIRED, target,
                     lambda: build_sqlalchemy(user.url("mysql+pymysql"), args.ops), args)  # fmt: skip
        print()
        with PGBenchUser() as pg_user:
            run_part("Overhead: ORM Session + select(1), one connection (PostgreSQL)", SA_STOCK, SA_PAIRED, target,
                     lambda: build_sqlalchemy(pg_user.url("postgresql+psycopg"), args.ops), args,
                     servers={"postgresql": True, "mysql": False})  # fmt: skip
        print()
    if args.part in ("all", "redis"):
        run_part("Overhead: GET through redis-py, one connection", REDIS_RAW, REDIS_PAIRED,
                 "Target: gunicorn_pool RedisPool.client() ≤ 1.05 × raw.", lambda: build_redis(args.ops), args)


if __name__ == "__main__":
    main()
