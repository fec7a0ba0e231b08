"""DatabasePool: named database pools for one worker.

Register it in gunicorn.conf.py (or in app code) and use it in views::

    # gunicorn.conf.py
    import gunicorn_pool
    db = gunicorn_pool.register(gunicorn_pool.DatabasePool({
        "default": "mysql://app:secret@127.0.0.1:3306/shop",
    }), name="db")
    worker_class = "gunicorn_pool.Worker"

    # app.py
    import gunicorn_pool
    def app(environ, start_response):
        with gunicorn_pool.get("db").connection("default") as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
        ...

Every worker opens its own connections in ``init_pool()`` (after fork, before
the first request) and closes them when it exits.

Transactions
------------
``connection()`` lends the driver's own connection (a ``pymysql.Connection``,
``psycopg.Connection`` or ``sqlite3.Connection``). Connections run in autocommit mode by default, so
plain statements need no commit. A transaction you open (``conn.begin()``,
or any statement with ``autocommit=False``) is committed when the ``with``
block exits cleanly and rolled back when it exits with an exception, as in
psycopg_pool. The pool reads the driver's transaction flag, so a block that
opened no transaction costs no extra round trip, and no open transaction
ever reaches the next user.

Read replicas
-------------
A pool with ``replicas`` also opens one pool per replica (``default.replica1``
...); ``connection(name, readonly=True)`` and ``getconn(name, readonly=True)``
lend from a reachable replica, falling back to the primary (see
:mod:`gunicorn_pool.replicas`). Other leases always go to the primary.

Boot policy
-----------
``init_pool()`` never raises for a server that cannot be reached: it logs one
error naming the pool, ``host:port`` and the server's message (never the
password), and the pool connects on demand later, backing off between
attempts. A pool with ``strict=True`` instead stops the server's *first*
start (:class:`~gunicorn_pool.errors.PoolStartupError`); a worker respawned
later (max_requests, crash, SIGHUP) never fails, because gunicorn would halt
the whole server.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

from . import budget
from .base import WorkerProfile
from .config import ConfigValue, DatabaseConfig, parse_config
from .connectors import connector_class, make_connector
from .errors import ConfigError, LeaseError
from .pool import ConnectionPool, Lease
from .replicas import ReplicaLease, ReplicaSet
from .service import NamedPools, single_config

__all__ = ["DatabasePool", "before_open", "parse_databases"]

_PREIMPORT = frozenset({"mysql", "sqlite"})

logger = logging.getLogger("gunicorn_pool")


class DatabasePool(NamedPools[DatabaseConfig]):
    """Database pools keyed by name, one :class:`ConnectionPool` each.

    *configs* maps names to dicts or URLs (see :mod:`gunicorn_pool.config`);
    a single dict or URL means ``{"default": value}``. Every config is
    validated here, so a typo fails at import of gunicorn.conf.py. The life
    cycle (open at boot, all at once; close at exit; figures) is
    :class:`~gunicorn_pool.service.NamedPools`'.
    """

    _what = "database"

    def __init__(self, configs: Union[Mapping[str, ConfigValue], str], *, name: str = "database") -> None:
        parsed = parse_databases(configs, name=name, service="DatabasePool")
        super().__init__(parsed, name=name)
        self._replicas = {
            key: ReplicaSet(key, tuple(r.pool_name for r in cfg.replicas), self.pool)
            for key, cfg in parsed.items() if cfg.replicas
        }  # fmt: skip
        self.import_drivers(gevent=True)

    def import_drivers(self, *, gevent: bool) -> None:
        """Import the connectors and drivers these pools need, in this process, so forked
        workers inherit them instead of paying for the import at each boot and respawn
        (PyMySQL ~45-80 ms, psycopg ~150-250 ms here). Called where the config is read (the
        master, for a pool registered in gunicorn.conf.py) with *gevent* True, and again by the
        worker classes in the master with the worker model known. PyMySQL and sqlite3 look
        sockets up at call time, so they still cooperate after gevent patching; psycopg picks
        its wait function at import, so it is imported only when no gevent patching follows
        (imported before the patch, it would block the hub in every worker). psycopg2 chooses
        nothing at import (the gevent worker sets its wait callback at boot): always imported."""
        wanted = _PREIMPORT if gevent else _PREIMPORT | {"postgresql"}
        for adapter, driver in {(cfg.adapter, cfg.driver) for cfg in self.configs.values()}:
            if adapter in wanted or driver == "psycopg2":
                connector_class(adapter, driver)

    def _build(self, name: str, config: DatabaseConfig) -> ConnectionPool:
        return ConnectionPool(make_connector(config), name=name, options=config)

    def _before_open(self, name: str, config: DatabaseConfig, profile: WorkerProfile) -> None:
        before_open(name, config, profile)

    def init_pool(self) -> None:
        """Open every pool (and replica pool) as :meth:`NamedPools.init_pool`, then warn once
        per server that has no room for this worker's pools (:mod:`gunicorn_pool.budget`)."""
        super().init_pool()
        budget.check_servers(self._pools, self.configs)

    def connection(
        self, name: str = "default", *, timeout: Optional[float] = None, readonly: bool = False
    ) -> Union[Lease, ReplicaLease]:
        """``with db.connection("default") as conn:`` lends a driver connection; with
        *readonly*, one of a replica of *name* if it has any (else the primary's)."""
        if readonly:
            replicas = self._replicas.get(name)
            if replicas is not None:
                return ReplicaLease(replicas, timeout)
        pool = self._pools.get(name)  # pool()'s first test, here too: every request passes here
        return Lease(pool if pool is not None and not pool.closed else self.pool(name), timeout)

    def getconn(self, name: str = "default", *, timeout: Optional[float] = None, readonly: bool = False) -> Any:
        """Take a connection of pool *name* (with *readonly*, of one of its replicas, as
        :meth:`connection`); give it back with :meth:`putconn`."""
        replicas = self._replicas.get(name) if readonly else None
        if replicas is not None:
            return replicas.use(lambda pool: pool.getconn(timeout))[1]
        return self.pool(name).getconn(timeout)

    def putconn(self, conn: Any, *, commit: bool = False, discard: bool = False) -> None:
        """Give back a connection taken with :meth:`getconn`, to the pool (primary or replica)
        that lent it (see :meth:`ConnectionPool.putconn`)."""
        for pool in list(self._pools.values()):
            if pool.has_lent(conn):
                pool.putconn(conn, commit=commit, discard=discard)
                return
        raise LeaseError(f"DatabasePool {self.name!r}: putconn() of a connection none of its pools has lent out")

    def stats(self) -> dict[str, Any]:
        """``{pool name: figures}``; a primary with replicas adds ``replica_fallbacks``, and
        each replica has its own entry (``default.replica1``)."""
        out = super().stats()
        for key, replicas in self._replicas.items():
            if key in out:
                out[key].update(replicas.stats())
        return out

    def replica_sets(self) -> dict[str, ReplicaSet]:
        """The replica sets, by primary pool name."""
        return dict(self._replicas)

    def prefix(self, name: str = "default") -> str:
        """The table prefix configured for *name*, kept for the application."""
        return self._config(name).prefix


_ONE_CONFIG_KEYS = {"adapter", "host", "port", "user"}


def parse_databases(
    configs: Union[Mapping[str, ConfigValue], str], *, name: str, service: str
) -> dict[str, DatabaseConfig]:
    """Every named config of a database service (:class:`DatabasePool`, and
    :class:`~gunicorn_pool.database_async.AsyncDatabasePool`), validated, replicas included as
    named pools of their own (``default.replica1``); a single dict or URL means
    ``{"default": value}``."""
    if isinstance(configs, str) or single_config(configs, _ONE_CONFIG_KEYS):
        configs = {"default": configs}
    if not configs:
        raise ConfigError(f"{service} {name!r}: no database configured")
    parsed = {key: parse_config(key, val) for key, val in configs.items()}
    for key, cfg in list(parsed.items()):
        for replica in cfg.replicas:
            if replica.pool_name in parsed:
                raise ConfigError(f"pool {replica.pool_name!r}: the name of a replica of pool {key!r}"
                                  " is taken by another pool")  # fmt: skip
            parsed[replica.pool_name] = replica
    return parsed


def before_open(name: str, config: DatabaseConfig, profile: WorkerProfile) -> None:
    """What a worker logs before database pool *name* opens: SQLite under gevent, and the MySQL
    statement bound it runs with when ``read_timeout`` is unset."""
    if config.adapter == "sqlite" and profile.kind == "gevent":
        logger.warning(
            "pool %s (%s): SQLite calls block the gevent hub while they run: every greenlet of this worker"
            " waits for each statement and transaction", name, config.dsn,
        )  # fmt: skip
    if config.adapter == "mysql" and config.read_timeout is None and profile.kind != "sync":
        logger.info(
            "pool %s (%s): read_timeout unset: queries wait at most %s s (gunicorn's timeout) in this %s worker",
            name, config.dsn, f"{profile.timeout:g}" if profile.timeout else "unbounded", profile.kind,
        )  # fmt: skip
