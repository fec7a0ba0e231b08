"""The pool's own CPU per checkout + checkin, with no I/O at all.

A stand-in connection (no socket, no server) goes through each pool's
checkout and checkin in a tight loop; ``timeit``'s best of ``--repeat`` runs
of ``--number`` cycles gives microseconds per cycle. This isolates what the
pool code costs from the round trip that bench/overhead.py includes, and is
steady on a noisy machine (best-of, no waiting on anything). Rows:

- gunicorn_pool ``with pool.connection()``, and ``getconn()``/``putconn()``;
- the minimal first-come-first-served pool of bench/_variants.py (a lock,
  a deque; reference);
- SQLAlchemy's pool API (``pool.connect().close()``, rollback reset) on QueuePool and on
  gunicorn_pool.sqlalchemy's ``GunicornPool``;
- DBUtils ``PooledDB`` (``ping=0``; its default ``reset`` calls the no-op
  ``rollback()`` on return) and
  SQLAlchemy ``QueuePool`` (``reset_on_return=None``), both over the same
  stand-in DB-API connection.

    python bench/cpu.py [--number 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any, Callable

from _common import fmt, preamble, table
from _variants import MinimalFifoPool

from gunicorn_pool import ConnectionPool
from gunicorn_pool.connectors import Connector


class StandInConnection:
    """Looks idle and healthy to every pool: autocommit, no open result, a socket-ish attribute."""

    server_status = 2  # SERVER_STATUS_AUTOCOMMIT, no transaction
    _sock = object()
    _result = None

    def cursor(self) -> Any:
        raise NotImplementedError

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def ping(self, *args: Any) -> None:
        pass


StandInConnection.threadsafety = 1  # type: ignore[attr-defined]  # DBUtils reads it from a callable creator


class StandInConnector(Connector):
    """gunicorn_pool's Connector contract over StandInConnection (no liveness probe: no socket)."""

    def connect(self) -> Any:
        return StandInConnection()

    def close(self, raw: Any) -> None:
        pass

    def discard(self, raw: Any) -> None:
        pass

    def ping(self, raw: Any, timeout: float) -> None:
        pass

    def check_in(self, raw: Any) -> bool:  # the same attribute reads as MySQLConnector.check_in
        if raw.server_status & 1 or raw._sock is None:
            return False
        result = raw._result
        return result is None or not result.unbuffered_active


def cycles() -> dict[str, Callable[[], None]]:
    pool = ConnectionPool(StandInConnector(), name="cpu", min_size=1, max_size=1)
    pool.open()

    def gp_with() -> None:
        with pool.connection():
            pass

    def gp_get_put() -> None:
        pool.putconn(pool.getconn())

    ref = MinimalFifoPool([StandInConnection()])

    def minimal() -> None:
        ref.putconn(ref.getconn())

    from dbutils.pooled_db import PooledDB

    pdb = PooledDB(StandInConnection, mincached=1, maxcached=1, maxconnections=1, blocking=True, ping=0,
                   failures=(RuntimeError,))  # a callable creator has no dbapi module to take them from

    def dbutils() -> None:
        pdb.connection().close()

    import sqlalchemy.pool

    qp = sqlalchemy.pool.QueuePool(StandInConnection, pool_size=1, max_overflow=0, reset_on_return=None)

    def sqlalchemy_cycle() -> None:
        qp.connect().close()

    # SQLAlchemy's pool API (connect() and the fairy's close(), reset = rollback) on both pools.
    from gunicorn_pool.options import PoolOptions
    from gunicorn_pool.sqlalchemy import GunicornPool

    qp_reset = sqlalchemy.pool.QueuePool(StandInConnection, pool_size=1, max_overflow=0)
    ours = GunicornPool(StandInConnection, options=PoolOptions(min_size=1, max_size=1), pool_name="cpu-sa")
    ours.core.open()

    def qp_reset_cycle() -> None:
        qp_reset.connect().close()

    def ours_cycle() -> None:
        ours.connect().close()

    return {
        "gunicorn_pool `with pool.connection()`": gp_with,
        "gunicorn_pool `getconn()` + `putconn()`": gp_get_put,
        "reference: minimal FIFO pool": minimal,
        "DBUtils PooledDB (ping=0)": dbutils,
        "SQLAlchemy QueuePool (reset_on_return=None)": sqlalchemy_cycle,
        "SQLAlchemy QueuePool, `connect().close()` with its rollback reset": qp_reset_cycle,
        "gunicorn_pool.sqlalchemy GunicornPool, `connect().close()` with SQLAlchemy's rollback reset": ours_cycle,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=100_000, help="cycles per run (default 100000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per row; the best counts (default 7)")
    args = parser.parse_args()
    rows = cycles()
    best = {}
    for _ in range(2):  # two passes, rows interleaved; best of all runs per row
        for name, cycle in rows.items():
            runs = timeit.repeat(cycle, number=args.number, repeat=args.repeat)
            best[name] = min(best.get(name, float("inf")), min(runs) / args.number * 1e6)
    ref = best["reference: minimal FIFO pool"]
    print(preamble("Pool CPU per checkout + checkin, no I/O",
                   f"best of {2 * args.repeat} runs × {args.number} cycles per row, stand-in connection"))  # fmt: skip
    print(table(["row", "µs per cycle", "÷ minimal FIFO pool"],
                [[name, fmt(us, 2), f"{us / ref:.2f}"] for name, us in best.items()]))  # fmt: skip


if __name__ == "__main__":
    main()
