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
from typing import Mapping, Optional, Union

from .base import WorkerProfile
from .config import ConfigValue, DatabaseConfig, parse_config
from .connectors import connector_class, make_connector
from .errors import ConfigError
from .pool import ConnectionPool, Lease
from .service import NamedPools, single_config

__all__ = ["DatabasePool"]

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
        if isinstance(configs, str) or single_config(configs, _ONE_CONFIG_KEYS):
            configs = {"default": configs}
        if not configs:
            raise ConfigError(f"DatabasePool {name!r}: no database configured")
        super().__init__({key: parse_config(key, val) for key, val in configs.items()}, name=name)
        for adapter in {cfg.adapter for cfg in self.configs.values()} & _PREIMPORT:
            # Import the connector and its driver where the config is read (the
            # master, for a pool registered in gunicorn.conf.py): every worker then
            # inherits them instead of paying ~45 ms (PyMySQL) per boot and respawn.
            # PyMySQL and sqlite3 look sockets up at call time, so they still
            # cooperate after gevent patching. psycopg is never imported here: it
            # picks its wait function at import, and imported before the patch it
            # would block the gevent hub in every worker.
            connector_class(adapter)

    def _build(self, name: str, config: DatabaseConfig) -> ConnectionPool:
        return ConnectionPool(make_connector(config), name=name, options=config)

    def _before_open(self, name: str, config: DatabaseConfig, profile: WorkerProfile) -> None:
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

    def connection(self, name: str = "default", *, timeout: Optional[float] = None) -> Lease:
        """``with db.connection("default") as conn:`` lends a driver connection."""
        pool = self._pools.get(name)  # pool()'s first test, here too: every request passes here
        return Lease(pool if pool is not None and not pool.closed else self.pool(name), timeout)

    def prefix(self, name: str = "default") -> str:
        """The table prefix configured for *name*, kept for the application."""
        return self._config(name).prefix


_ONE_CONFIG_KEYS = {"adapter", "host", "port", "user"}
