"""Read replicas: which replica serves a read-only lease, and the fall back to the primary.

A pool configured with ``replicas`` (see :mod:`gunicorn_pool.config`) gets one
:class:`~gunicorn_pool.pool.ConnectionPool` per replica, named
``<pool>.replica1``, ``<pool>.replica2``..., each bounded by its own
``max_size``; :class:`~gunicorn_pool.database.DatabasePool` opens them at boot
with the primary and closes them at exit. ``connection(name, readonly=True)``
asks a :class:`ReplicaSet` which of them lends:

- **Least busy first**: the replica whose pool has the fewest connections
  out (lent or being opened) in this worker; ties go round-robin. Each
  sub-pool is bounded, so round-robin alone would queue a caller on a
  replica whose connections are all out (a slow replica, a long report)
  while another has idle ones; counting what is out costs two attribute
  reads per replica and also sends more reads to a replica that answers
  faster (its connections come back sooner).
- **Unreachable replicas are skipped**: a replica whose checkout raised
  :class:`~gunicorn_pool.errors.ConnectError` (it could not connect, or its
  pool is backing off) is left out until its re-check time: 0.5 s, doubling
  on each failure to at most 10 s. The first read-only lease after that
  tries it again: a replica that came back is used again without a restart.
- **The primary as the last resort**: when no replica can lend, the primary
  does. Each such lease counts in the primary's ``replica_fallbacks``
  (``DatabasePool.stats()``); the first one of a streak is logged as a
  warning, the return to a replica as info.
- **Writes never go to a replica**: only ``readonly=True`` leases consult
  the set; every other lease is the primary's. A statement that writes in a
  read-only lease goes to the replica (and fails there if it is
  ``read_only``): the flag is the caller's promise, not checked.

Only the checkout moves to another server: a statement that failed on a
replica is never re-run elsewhere. Reads from a replica may be as stale as
its replication lag.
"""

from __future__ import annotations

import logging
import threading
import time
from operator import attrgetter
from typing import Any, Callable, Optional, TypeVar

from .errors import ConnectError
from .pool import ConnectionPool, Lease

__all__ = ["ReplicaLease", "ReplicaSet"]

logger = logging.getLogger("gunicorn_pool")

T = TypeVar("T")


class ReplicaSet:
    """The replicas of one primary pool, in one process (see the module docstring).

    *pool* maps a pool name to its (built on first use) ConnectionPool:
    ``DatabasePool.pool``, so a pool rebuilt after fork or close is found.
    """

    RECHECK_FIRST = 0.5
    RECHECK_MAX = 10.0

    def __init__(self, primary: str, replicas: tuple[str, ...], pool: Callable[[str], ConnectionPool]) -> None:
        self.primary = primary
        self.replicas = replicas
        self._pool = pool
        self._down: dict[str, tuple[float, float]] = {}  # replica -> (re-check at, back-off)
        self._turn = 0
        self._lock = threading.Lock()  # guards the counter and the log-once flag (rare paths)
        self.fallbacks = 0
        self._falling_back = False

    def candidates(self) -> list[ConnectionPool]:
        """The replicas' pools to try now: reachable ones, least busy first, ties in turn."""
        down = self._down
        now = time.monotonic() if down else 0.0
        pools = [self._pool(name) for name in self.replicas if (entry := down.get(name)) is None or entry[0] <= now]
        if len(pools) > 1:
            self._turn = turn = (self._turn + 1) % len(pools)
            pools = pools[turn:] + pools[:turn]
            pools.sort(key=attrgetter("busy"))  # stable: equally busy ones keep the rotated order
        return pools

    def use(self, take: Callable[[ConnectionPool], T]) -> tuple[ConnectionPool, T]:
        """``take(pool)`` on the first replica that can lend, else on the primary; the pool
        that lent, with what *take* returned. PoolTimeout and TooManyRequests of a replica are
        the caller's (its replica is up, only busy); ConnectError moves on."""
        for pool in self.candidates():
            try:
                got = take(pool)
            except ConnectError as exc:
                self._failed(pool, exc)
                continue
            if self._down or self._falling_back:
                self._recovered(pool)
            return pool, got
        primary = self._pool(self.primary)
        with self._lock:
            self.fallbacks += 1
            first, self._falling_back = not self._falling_back, True
        if first:
            logger.warning(
                "pool %s: no replica reachable (%s): read-only leases go to the primary until one is",
                self.primary, ", ".join(self.replicas),
            )  # fmt: skip
        return primary, take(primary)

    def _failed(self, pool: ConnectionPool, exc: ConnectError) -> None:
        previous = self._down.get(pool.name)
        backoff = min(self.RECHECK_MAX, previous[1] * 2 if previous else self.RECHECK_FIRST)
        self._down[pool.name] = (time.monotonic() + backoff, backoff)
        if previous is None:
            logger.warning("pool %s: replica left out of read-only leases, re-checked after %.1f s: %s",
                           pool.name, backoff, exc)  # fmt: skip

    def _recovered(self, pool: ConnectionPool) -> None:
        if self._down.pop(pool.name, None) is not None:
            logger.info("pool %s: replica back in use", pool.name)
        with self._lock:
            back, self._falling_back = self._falling_back, False
        if back:
            logger.info("pool %s: read-only leases go to replicas again", self.primary)

    def stats(self) -> dict[str, int]:
        """The set's own figures, reported with the primary's."""
        return {"replica_fallbacks": self.fallbacks}


class ReplicaLease:
    """``with db.connection(name, readonly=True) as conn``: the :class:`~gunicorn_pool.pool.Lease`
    of the pool chosen when the block is entered (a replica, or the primary)."""

    __slots__ = ("_replicas", "_timeout", "_lease")

    def __init__(self, replicas: ReplicaSet, timeout: Optional[float]) -> None:
        self._replicas = replicas
        self._timeout = timeout
        self._lease: Optional[Lease] = None

    def __enter__(self) -> Any:
        def enter(pool: ConnectionPool) -> tuple[Lease, Any]:
            lease = pool.connection(self._timeout)
            return lease, lease.__enter__()

        _, (self._lease, conn) = self._replicas.use(enter)
        return conn

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Any, tb: Any) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.__exit__(exc_type, exc, tb)
