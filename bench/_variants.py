"""The pools under test, behind one small interface, for contention.py.

``make(name, user, workers, size)`` returns a :class:`Variant`: ``acquire(i)``
gives worker *i* a connection, ``release(i, conn)`` takes it back. The raw
variant gives every worker its own connection (the ceiling); the others share
*size* connections among all workers.
"""

from __future__ import annotations

from typing import Any, Callable

import pymysql

NAMES = ("raw connection per worker", "gunicorn_pool", "DBUtils PooledDB", "DBUtils PooledDB (ping=0)",
         "SQLAlchemy QueuePool")  # fmt: skip


class Variant:
    """acquire/release/close callables for one pool under test."""

    def __init__(self, acquire: Callable[[int], Any], release: Callable[[int, Any], None],
                 close: Callable[[], None]) -> None:  # fmt: skip
        self.acquire = acquire
        self.release = release
        self.close = close


def make(name: str, kw: dict[str, Any], url: str, workers: int, size: int) -> Variant:
    """Build variant *name* for *workers* callers sharing *size* connections."""
    if name == "raw connection per worker":
        conns = [pymysql.connect(ssl_disabled=True, **kw) for _ in range(workers)]
        return Variant(conns.__getitem__, lambda i, c: None, lambda: [c.close() for c in conns] and None)
    if name == "gunicorn_pool":
        from gunicorn_pool import DatabasePool

        db = DatabasePool({"default": dict(kw, min_size=size, max_size=size, timeout=30)}, name="bench")
        db.init_pool()
        pool = db.pool("default")

        def gp_release(i: int, conn: Any) -> None:
            pool.finish(conn, True)

        return Variant(lambda i: pool.getconn(), gp_release, db.close_pool)
    if name.startswith("DBUtils PooledDB"):
        from dbutils.pooled_db import PooledDB

        ping = 0 if "ping=0" in name else 1
        pdb = PooledDB(pymysql, mincached=size, maxcached=size, maxconnections=size, blocking=True, ping=ping,
                       ssl_disabled=True, **kw)  # fmt: skip
        return Variant(lambda i: pdb.connection(), lambda i, c: c.close(), pdb.close)
    if name == "SQLAlchemy QueuePool":
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, pool_size=size, max_overflow=0, pool_timeout=30,
                                          connect_args={"ssl_disabled": True})  # fmt: skip
        held = [engine.raw_connection() for _ in range(size)]  # open them all before timing
        for conn in held:
            conn.close()
        return Variant(lambda i: engine.raw_connection(), lambda i, c: c.close(), engine.dispose)
    raise KeyError(name)


def select1(conn: Any) -> None:
    """The operation every variant runs: one SELECT 1 round trip."""
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.close()
