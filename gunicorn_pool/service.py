"""NamedPools: a pool service made of named pools, each one pool core, opened and closed together.

:class:`~gunicorn_pool.DatabasePool` and :class:`~gunicorn_pool.redis.RedisPool`
are both this shape: a mapping of names to validated configs, one pool core
per name built on first use, all of them opened at once at boot, closed at
exit, figures by name. The service life cycle lives here once; a subclass
says how to build one pool (:meth:`NamedPools._build`) and what to log
before it opens (:meth:`NamedPools._before_open`).

:class:`~gunicorn_pool.service_async.AsyncNamedPools` (in its own module, so that a
WSGI worker never imports asyncio) is the same service over asyncio pools
(:class:`~gunicorn_pool.pool_async.AsyncConnectionPool`): the configs, the
build, the sizing (:func:`fit`), the boot policy (:func:`settle_boot`), the
log lines and the figures are the ones above (:class:`_Named`); only opening
(``ainit_pool()``, in the ASGI lifespan) and closing (``aclose_pool()``, or
``close_pool()`` dropping without a round trip once the loop is gone) await.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Generic, Mapping, Optional, Protocol, TypeVar

from ._concurrency import run_all
from .base import PoolInterface, WorkerProfile, current_profile
from .core import PoolCore
from .errors import ConfigError, ConnectError, PoolClosed, PoolStartupError
from .pool import ConnectionPool

__all__ = [
    "NamedConfig", "NamedPools", "fit", "open_at_boot", "settle_boot", "single_config",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")


class NamedConfig(Protocol):
    """What a named pool's config offers the service (DatabaseConfig and RedisConfig do)."""

    @property
    def dsn(self) -> str: ...

    @property
    def strict(self) -> bool: ...

    def sizes(self, defaults: tuple[int, int] = ...) -> tuple[int, int]: ...


C = TypeVar("C", bound=NamedConfig)
P = TypeVar("P", bound=PoolCore)


def single_config(value: Any, keys: set[str]) -> bool:
    """True if *value* is one config (``{"host": ...}``), not a mapping of named ones."""
    return isinstance(value, Mapping) and any(k in keys for k in value) and not any(
        isinstance(v, Mapping) for v in value.values()
    )  # fmt: skip


def open_at_boot(pool: ConnectionPool, name: str, config: NamedConfig, profile: WorkerProfile) -> None:
    """Open *pool*'s ``min_size`` connections within the worker's warm-up deadline, and log it.

    A ``strict`` pool that cannot, on the server's first start, raises PoolStartupError (the
    deploy stops loudly); any other failure is logged and the pool connects on demand."""
    start = time.monotonic()
    try:
        opened = pool.open(deadline=profile.deadline)
    except ConnectError as exc:
        _warm_up_failed(exc, name, config, profile)
        return
    _opened(pool, name, config, start, opened)


def _warm_up_failed(exc: ConnectError, name: str, config: NamedConfig, profile: WorkerProfile) -> None:
    if config.strict and profile.first_boot:
        raise PoolStartupError(f"{exc} (strict pool, first start)") from None
    logger.error(
        "pool %s (%s): warm-up failed, will connect on demand: %s", name, config.dsn, exc
    )  # the ConnectError already names host:port and the server's message


def _opened(pool: PoolCore, name: str, config: NamedConfig, start: float, opened: int) -> None:
    logger.info(
        "pool %s (%s): opened %d connection(s) in %.1f ms [min=%d max=%d]",
        name, config.dsn, opened, (time.monotonic() - start) * 1000, pool.min_size, pool.max_size,
    )  # fmt: skip


def settle_boot(results: Mapping[str, Optional[BaseException]], label: Callable[[str], str]) -> None:
    """The boot-failure policy, written once: what each of several services or pools opened at
    once raised (*results*; None: it opened). A ``strict`` pool on the first start
    (PoolStartupError) and a BaseException propagate (gunicorn then halts the server, as asked);
    anything else is logged under *label(name)* and the worker serves without it (the pool
    connects on demand), because an exception at boot makes gunicorn halt the whole server, also
    on a routine respawn."""
    for name, exc in results.items():
        if exc is None:
            continue
        if isinstance(exc, PoolStartupError) or not isinstance(exc, Exception):
            raise exc
        if isinstance(exc, TimeoutError):
            logger.error("%s: still opening at the worker's warm-up deadline; serving without it", label(name))
        else:
            logger.error("%s: warm-up failed, will connect on demand: %s", label(name), exc)


def fit(pool: PoolCore, config: NamedConfig, profile: WorkerProfile) -> None:
    """Size *pool* and bound its statements for the worker *profile* describes: the pool core
    takes both as values (sizes the config leaves unset, and the query bound where the config
    sets none, come from the worker type)."""
    pool.resize(*config.sizes(profile.default_sizes()))
    pool.connector.query_bound = profile.query_bound()


class _Named(Generic[C, P]):
    """What a service of named pools is, whatever its front end: validated configs by name, one
    pool each built on first use in each process (:meth:`pool`), sized for the worker, figures by
    name. Subclasses say how to build one pool (:meth:`_build`)."""

    #: What one named pool is called in messages ("no database 'x'").
    _what = "pool"
    #: True for a service that finds its pools when it opens them (nothing to configure before).
    _allow_empty = False

    def __init__(self, configs: Mapping[str, C], *, name: str) -> None:
        if not configs and not self._allow_empty:
            raise ConfigError(f"{type(self).__name__} {name!r}: nothing configured")
        self.name = name
        self.configs: dict[str, C] = dict(configs)
        self._pools: dict[str, P] = {}
        self._closed_in: Optional[int] = None  # the pid where close_pool() ran last

    # -- what a subclass says ----------------------------------------------------------

    def _build(self, name: str, config: C) -> P:
        """A new (unopened) pool for *name*."""
        raise NotImplementedError

    def _before_open(self, name: str, config: C, profile: WorkerProfile) -> None:
        """Log what this worker should know before *name* opens (nothing by default)."""

    # -- figures -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``{pool name: pool.stats()}`` for the pools in use."""
        return {key: pool.stats() for key, pool in self._pools.items()}

    def connection_pools(self) -> dict[str, P]:
        """The named pools in use in this process."""
        return dict(self._pools)

    # -- use ---------------------------------------------------------------------------------

    def pool(self, name: str = "default") -> P:
        """The pool for *name*, built on first use."""
        pool = self._pools.get(name)
        if pool is not None and not pool.closed:
            return pool
        if self._closed_in == os.getpid():
            raise PoolClosed(f"{type(self).__name__} {self.name!r} is closed: no connection for {name!r}")
        config = self._config(name)
        candidate = self._build(name, config)
        fit(candidate, config, current_profile())
        if pool is None:
            # Two threads racing here get the same pool (setdefault is
            # atomic; the loser's pool has opened nothing).
            pool = self._pools.setdefault(name, candidate)
        else:
            pool = self._pools[name] = candidate
        return pool

    def _prepared(self, key: str, cfg: C, profile: WorkerProfile) -> P:
        """*key*'s pool, sized for *profile*, with what this worker should know logged: ready to open."""
        pool = self.pool(key)
        fit(pool, cfg, profile)
        self._before_open(key, cfg, profile)
        return pool

    def _label(self, key: str) -> str:
        return f"pool {key} ({self.configs[key].dsn})"

    def _config(self, name: str) -> C:
        try:
            return self.configs[name]
        except KeyError:
            raise KeyError(
                f"{type(self).__name__} {self.name!r} has no {self._what} {name!r}"
                f" (known: {', '.join(sorted(self.configs))})"
            ) from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {', '.join(f'{k}={c.dsn}' for k, c in self.configs.items())}>"


class NamedPools(_Named[C, ConnectionPool], PoolInterface):
    """Named pools, one :class:`ConnectionPool` each, built on first use in each process."""

    # -- PoolInterface ---------------------------------------------------------------------

    def init_pool(self) -> None:
        """Open ``min_size`` connections of every named pool in this process.

        The named pools open at once, so several unreachable servers cost one
        connect timeout, not one each; all of it within the worker's warm-up
        deadline. An unreachable server is logged and its pool connects on
        demand later; a ``strict`` pool stops the server's first start.
        """
        self._closed_in = None
        profile = current_profile()
        tasks = [(key, functools.partial(self._open, key, cfg, profile)) for key, cfg in self.configs.items()]
        settle_boot(run_all(tasks, deadline=profile.deadline), self._label)

    def _open(self, key: str, cfg: C, profile: WorkerProfile) -> None:
        open_at_boot(self._prepared(key, cfg, profile), key, cfg, profile)

    def warm_pool(self) -> int:
        """Give each open connection its first use now (see ConnectionPool.warm)."""
        return sum(pool.warm() for pool in list(self._pools.values()))

    def close_pool(self) -> None:
        """Close every named pool opened in this process; later use raises PoolClosed
        (until :meth:`init_pool` opens them again)."""
        self._closed_in = os.getpid()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
