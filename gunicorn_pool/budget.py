"""The worker-boot budget warning: does the live server have room for this worker's pool?

Right after a pool opened its ``min_size`` connections at boot, one of them
asks the server how many more connections it accepts now (the connector's
:meth:`~gunicorn_pool.connectors.base.Connector.free_connections`):

- MySQL/MariaDB: ``@@max_connections`` minus ``Threads_connected``;
- PostgreSQL: ``max_connections`` minus ``superuser_reserved_connections``
  (and ``reserved_connections``, 16+) minus the client backends of
  ``pg_stat_activity``.

When that is less than the connections the pool may still open
(``max_size`` minus those it holds, summed over this worker's pools on that
server), the worker logs one warning, once per server (its ``host:port``
list) per worker process, after all its pools opened: under load some of its
connects will be refused (``Too many connections``, ``too many clients
already``). It is a snapshot: other workers booting at the same moment are
not counted yet, and ``gunicorn-pool check`` gives the fleet's arithmetic.

Not checked: pools with ``pgbouncer=true`` (their clients are PgBouncer's;
PgBouncer queues them on its own server connections), pools whose warm-up
opened nothing, and adapters without a server (SQLite, DB-API). The query is
the pool's own use of an idle connection (not in ``stats()``), bounded by
``check_timeout``; if it fails the connection is dropped and nothing is
logged above debug.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Mapping, Optional

from .config import DatabaseConfig
from .pool import ConnectionPool

__all__ = ["check_servers"]

logger = logging.getLogger("gunicorn_pool")

#: (pid, server address) already checked and found short in this process.
_WARNED: set[tuple[int, str]] = set()


def check_servers(pools: Mapping[str, ConnectionPool], configs: Mapping[str, DatabaseConfig]) -> dict[str, int]:
    """Check each server of the open *pools* once, as the module docstring says: the connections
    the pools on it may still open, summed, against what it accepts now. Returns the free
    connections each server checked reported, by address."""
    by_server: dict[str, list[tuple[ConnectionPool, DatabaseConfig]]] = {}
    for name, pool in pools.items():
        config = configs.get(name)
        if config is None or config.adapter not in ("mysql", "postgresql") or config.pgbouncer or pool.closed:
            continue
        by_server.setdefault(config.address, []).append((pool, config))
    out = {}
    for address, members in by_server.items():
        key = (os.getpid(), address)
        if key in _WARNED:
            continue
        free = _free(members)
        if free is None:
            continue
        out[address] = free
        wanted = sum(pool.max_size - pool.stats()["pool_size"] for pool, _ in members)
        if free < wanted:
            _WARNED.add(key)
            names = ", ".join(pool.name for pool, _ in members)
            logger.warning(
                "pool %s (%s): server %s accepts %d more connection(s) now, this worker's pool may open %d more"
                " (max_size %s): under load its connects will be refused; see gunicorn-pool check",
                names, members[0][1].dsn, address, max(free, 0), wanted,
                " + ".join(str(pool.max_size) for pool, _ in members),
            )  # fmt: skip
    return out


def _free(members: list[tuple[ConnectionPool, DatabaseConfig]]) -> Optional[int]:
    """The free connections one of *members*' idle connections reads (None: none idle, or failed)."""
    for pool, config in members:
        connector = pool.connector
        try:
            free = pool.use_idle(functools.partial(connector.free_connections, timeout=config.check_timeout))
        except Exception as exc:  # noqa: BLE001 - a warning's check never hurts the boot
            logger.debug("pool %s (%s): free connections not read: %s", pool.name, config.dsn,
                         connector.describe_error(exc))  # fmt: skip
            return None
        if free is not None:
            return free
    return None
