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
         "SQLAlchemy QueuePool", MINIMAL := "reference: minimal FIFO pool")  # fmt: skip


class MinimalFifoPool:
    """Reference only: the least a fair pool must do (a lock, a deque, a per-waiter lock).

    No timeout, health check, lifetime, stats or fork safety: the distance
    from gunicorn_pool to this row is what those features cost; the distance
    from this row to the raw row is what sharing with first-come-first-served
    hand-offs costs at all.
    """

    def __init__(self, connections: list[Any]) -> None:
        import collections
        import threading

        self._threading = threading
        self._lock = threading.Lock()
        self._idle: collections.deque[Any] = collections.deque(connections)
        self._waiters: collections.deque[list[Any]] = collections.deque()
        self.connections = connections

    def getconn(self) -> Any:
        with self._lock:
            if self._idle and not self._waiters:
                return self._idle.pop()
            box = [self._threading.Lock(), None]
            box[0].acquire()
            self._waiters.append(box)
        box[0].acquire()
        return box[1]

    def putconn(self, conn: Any) -> None:
        with self._lock:
            if self._waiters:
                box = self._waiters.popleft()
                box[1] = conn
                box[0].release()
            else:
                self._idle.append(conn)


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
            pool.putconn(conn)

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
    if name == MINIMAL:
        ref = MinimalFifoPool([pymysql.connect(ssl_disabled=True, **kw) for _ in range(size)])
        return Variant(lambda i: ref.getconn(), lambda i, c: ref.putconn(c),
                       lambda: [c.close() for c in ref.connections] and None)  # fmt: skip
    raise KeyError(name)


def select1(conn: Any) -> None:
    """The operation every variant runs: one SELECT 1 round trip."""
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.close()
