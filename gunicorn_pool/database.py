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
``connection()`` lends the driver's own connection (a ``pymysql.Connection``
or ``sqlite3.Connection``). Connections run in autocommit mode by default, so
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

import functools
import logging
import os
import time
from typing import Any, Mapping, Optional, Union

from ._concurrency import run_all
from .base import PoolInterface, WorkerProfile, current_profile
from .config import ConfigValue, DatabaseConfig, parse_config
from .connectors import make_connector
from .errors import ConfigError, ConnectError, PoolClosed, PoolStartupError
from .pool import ConnectionPool, Lease

__all__ = ["DatabasePool"]

logger = logging.getLogger("gunicorn_pool")


class DatabasePool(PoolInterface):
    """Connection pools keyed by name, one :class:`ConnectionPool` each.

    *configs* maps names to dicts or URLs (see :mod:`gunicorn_pool.config`);
    a single dict or URL means ``{"default": value}``. Every config is
    validated here, so a typo fails at import of gunicorn.conf.py.
    """

    def __init__(self, configs: Union[Mapping[str, ConfigValue], str], *, name: str = "database") -> None:
        if isinstance(configs, str) or (isinstance(configs, Mapping) and _looks_like_one_config(configs)):
            configs = {"default": configs}
        if not configs:
            raise ConfigError(f"DatabasePool {name!r}: no database configured")
        self.name = name
        self.configs: dict[str, DatabaseConfig] = {key: parse_config(key, val) for key, val in configs.items()}
        self._pools: dict[str, ConnectionPool] = {}
        self._closed_in: Optional[int] = None  # the pid where close_pool() ran last
        if any(cfg.adapter == "mysql" for cfg in self.configs.values()):
            # Import the driver where the config is read (the master, for a
            # pool registered in gunicorn.conf.py): every worker then inherits
            # it instead of paying ~45 ms per boot and respawn. PyMySQL looks
            # socket up at call time, so it still cooperates after gevent patching.
            import pymysql  # noqa: F401

    # -- PoolInterface ---------------------------------------------------------

    def init_pool(self) -> None:
        """Open ``min_size`` connections of every named pool in this process.

        The named pools open at once, so several unreachable servers cost one
        ``connect_timeout``, not one each; all of it within the worker's
        warm-up deadline.
        """
        self._closed_in = None
        profile = current_profile()
        tasks = [(key, functools.partial(self._open, key, cfg, profile)) for key, cfg in self.configs.items()]
        for key, exc in run_all(tasks, deadline=profile.deadline).items():
            if exc is None:
                continue
            if isinstance(exc, TimeoutError):
                logger.error(
                    "pool %s (%s): warm-up still connecting at the worker's warm-up deadline; serving without it",
                    key, self.configs[key].dsn,
                )  # fmt: skip
            elif isinstance(exc, PoolStartupError) or not isinstance(exc, Exception):
                raise exc
            else:
                logger.error("pool %s (%s): warm-up failed: %s", key, self.configs[key].dsn, exc)

    def _open(self, key: str, cfg: DatabaseConfig, profile: WorkerProfile) -> None:
        pool = self.pool(key)
        pool.resize(*cfg.sizes(profile))
        if cfg.adapter == "sqlite" and profile.kind == "gevent":
            logger.warning(
                "pool %s (%s): SQLite calls block the gevent hub while they run: every greenlet of this worker"
                " waits for each statement and transaction", key, cfg.dsn,
            )  # fmt: skip
        if cfg.adapter == "mysql" and cfg.read_timeout is None and profile.kind != "sync":
            logger.info(
                "pool %s (%s): read_timeout unset: queries wait at most %s s (gunicorn's timeout) in this %s worker",
                key, cfg.dsn, f"{profile.timeout:g}" if profile.timeout else "unbounded", profile.kind,
            )  # fmt: skip
        start = time.monotonic()
        try:
            opened = pool.open(deadline=profile.deadline)
        except ConnectError as exc:
            if cfg.strict and profile.first_boot:
                raise PoolStartupError(f"{exc} (strict pool, first start)") from None
            logger.error(
                "pool %s (%s): warm-up failed, will connect on demand: %s", key, cfg.dsn, exc
            )  # the ConnectError already names host:port and the server's message
            return
        logger.info(
            "pool %s (%s): opened %d connection(s) in %.1f ms [min=%d max=%d]",
            key, cfg.dsn, opened, (time.monotonic() - start) * 1000, pool.min_size, pool.max_size,
        )  # fmt: skip

    def warm_pool(self) -> int:
        """Run each open connection's first use now (see ConnectionPool.warm)."""
        return sum(pool.warm() for pool in list(self._pools.values()))

    def close_pool(self) -> None:
        """Close every named pool opened in this process; later use raises PoolClosed
        (until :meth:`init_pool` opens them again)."""
        self._closed_in = os.getpid()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def stats(self) -> dict[str, Any]:
        """``{pool name: ConnectionPool.stats()}`` for the pools in use."""
        return {key: pool.stats() for key, pool in self._pools.items()}

    def connection_pools(self) -> dict[str, ConnectionPool]:
        """The named pools in use in this process."""
        return dict(self._pools)

    # -- use -------------------------------------------------------------------

    def connection(self, name: str = "default", *, timeout: Optional[float] = None) -> Lease:
        """``with db.connection("default") as conn:`` lends a driver connection."""
        pool = self._pools.get(name)  # pool()'s first test, here too: every request passes here
        return Lease(pool if pool is not None and not pool.closed else self.pool(name), timeout)

    def pool(self, name: str = "default") -> ConnectionPool:
        """The :class:`ConnectionPool` for *name*, built on first use."""
        pool = self._pools.get(name)
        if pool is not None and not pool.closed:  # every connection() passes here
            return pool
        if self._closed_in == os.getpid():
            raise PoolClosed(f"DatabasePool {self.name!r} is closed: no connection for {name!r}")
        cfg = self._config(name)
        candidate = ConnectionPool(make_connector(cfg), name=name, options=cfg)
        if pool is None:
            # Two threads racing here get the same pool (setdefault is
            # atomic; the loser's pool has opened nothing).
            pool = self._pools.setdefault(name, candidate)
        else:
            pool = self._pools[name] = candidate
        return pool

    def prefix(self, name: str = "default") -> str:
        """The table prefix configured for *name*, kept for the application."""
        return self._config(name).prefix

    def _config(self, name: str) -> DatabaseConfig:
        try:
            return self.configs[name]
        except KeyError:
            raise KeyError(
                f"DatabasePool {self.name!r} has no database {name!r} (known: {', '.join(sorted(self.configs))})"
            ) from None

    def __repr__(self) -> str:
        return f"<DatabasePool {self.name!r} {', '.join(f'{k}={c.dsn}' for k, c in self.configs.items())}>"


def _looks_like_one_config(value: Mapping[str, Any]) -> bool:
    """``DatabasePool({"host": ...})``: a single config, not a mapping of them."""
    keys = {"adapter", "host", "port", "user"}
    return any(k in keys for k in value) and not any(isinstance(v, Mapping) for v in value.values())
