"""DjangoPools: the pool service that opens a Django project's pooled aliases in each worker.

gunicorn_pool's discovery (:func:`gunicorn_pool.registry.discover`) adds it
when the loaded app is a configured Django project with a pooled alias, so
``-k gunicorn_pool.Worker`` (or the hooks) needs no other setting. Pooled
aliases are:

- ``ENGINE: "gunicorn_pool.django.mysql"`` and
  ``"gunicorn_pool.django.postgresql"``: our pools (:mod:`.pools`);
- a PostgreSQL alias of ``django.db.backends.postgresql`` with
  ``OPTIONS["pool"]``: Django's own psycopg pool
  (``DatabaseWrapper._connection_pools``), which Django creates with
  ``open=False`` and opens on the first query. Its sizes follow the worker
  type as ours do (1/1 sync, 1/threads gthread, 1/10 gevent) unless
  ``OPTIONS["pool"]`` sets ``min_size``/``max_size`` (psycopg_pool's own
  default is 4 per worker). It needs psycopg 3: a project whose Django runs on
  psycopg2 is told to use ``gunicorn_pool.django.postgresql`` instead.

In each worker, after fork and before the first request, :meth:`init_pool`:

1. drops what the boot thread's Django connections hold from before the fork
   (``--preload``: the master's sessions, never used here): our backend's
   connections are dropped by their pool without a word to the server; any
   other backend's connection has its socket swapped for ``/dev/null`` in
   this process only (so neither a close nor the garbage collector can send
   the server a goodbye on the master's session) and is forgotten; a psycopg
   pool the master opened is forgotten the same way, and a new one is built;
2. opens every pooled alias at once (several slow servers cost one timeout):
   ``min_size`` connections of ours, sized by the worker's profile unless set;
   Django's psycopg pool with ``open(wait=True)``, bounded by what is left of
   the worker's warm-up deadline.

:meth:`close_pool` (worker exit) gives back the exiting thread's connections
and closes every pool; :meth:`stats` reports each alias under the same names
as every other pool (psycopg_pool's names, which ours follow), so statsd and
Prometheus see them as service ``django``, pool ``<alias>``.

A configuration error (``CONN_MAX_AGE`` not 0, an unknown option) stops the
server's first start (:class:`~gunicorn_pool.errors.PoolStartupError`); a
server that cannot be reached does not: the pool connects on demand later.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Optional

from .. import stats as keys
from .._concurrency import run_all
from ..base import PoolInterface, WorkerProfile, current_profile
from ..config import DatabaseConfig, parse_config
from ..errors import ConfigError, PoolStartupError
from ..service import fit, open_at_boot
from . import pools

__all__ = ["DjangoPools", "configured_service", "pooled_aliases"]

logger = logging.getLogger("gunicorn_pool")

_POSTGRESQL = "django.db.backends.postgresql"
#: pooled_aliases() families: our backends, and Django's own psycopg pool.
OURS_MYSQL, OURS_POSTGRESQL, DJANGO_PG_POOL = "mysql", "pg-ours", "postgresql"
#: Objects of another process (connections, psycopg pools) that must never be closed or collected here.
_FOREIGN: list[Any] = []


def pooled_aliases() -> dict[str, str]:
    """``{alias: family}`` for the pooled aliases of the configured project: ``mysql`` and
    ``pg-ours`` (our backends), ``postgresql`` (Django's own psycopg pool)."""
    from django.db import connections

    out = {}
    for alias, sd in connections.settings.items():
        engine = sd.get("ENGINE", "")
        if engine == pools.ENGINE or _is_backend_of(engine, pools.ENGINE):
            out[alias] = OURS_MYSQL
        elif engine == pools.PG_ENGINE or _is_backend_of(engine, pools.PG_ENGINE):
            out[alias] = OURS_POSTGRESQL
        elif (engine == _POSTGRESQL or _is_backend_of(engine, _POSTGRESQL)) and (sd.get("OPTIONS") or {}).get("pool"):
            out[alias] = DJANGO_PG_POOL
    return out


def _is_backend_of(engine: str, family: str) -> bool:
    """True if *engine*'s DatabaseWrapper derives from *family*'s (a project's own backend subclass)."""
    if not engine or engine.startswith("django.db.backends.") or engine.startswith("gunicorn_pool."):
        return False
    try:
        from django.db.utils import load_backend

        mine, theirs = load_backend(engine).DatabaseWrapper, load_backend(family).DatabaseWrapper
        return issubclass(mine, theirs)
    except Exception:  # noqa: BLE001 - an engine we cannot load is not ours
        return False


class DjangoPools(PoolInterface):
    """Opens, closes and reports the pooled aliases of the configured Django project."""

    name = "django"

    def __init__(self) -> None:
        self._opened_pg: dict[str, int] = {}  # alias -> pid that opened its psycopg pool

    # -- PoolInterface ---------------------------------------------------------

    def init_pool(self) -> None:
        """Open every pooled alias in this process (see the module docstring)."""
        profile = current_profile()
        pools.set_managed(True)
        self._forget_inherited()
        aliases = pooled_aliases()
        tasks = [(alias, functools.partial(self._open, alias, family, profile)) for alias, family in aliases.items()]
        for alias, exc in run_all(tasks, deadline=profile.deadline).items():
            if exc is None:
                continue
            if isinstance(exc, TimeoutError):
                logger.error("pool %s: warm-up still connecting at the worker's warm-up deadline; serving without it",
                             alias)  # fmt: skip
            elif _is_config_error(exc):
                message = str(exc) if "DATABASES[" in str(exc) else f"DATABASES[{alias!r}]: {exc}"
                if profile.first_boot:
                    raise PoolStartupError(f"{message} (configuration error, first start)") from None
                logger.error("pool %s: %s", alias, message)
            elif isinstance(exc, PoolStartupError) or not isinstance(exc, Exception):
                raise exc
            else:
                logger.error("pool %s: warm-up failed, will connect on demand: %s", alias, exc)

    def _open(self, alias: str, family: str, profile: WorkerProfile) -> None:
        if family == DJANGO_PG_POOL:
            self._open_postgresql(alias, profile)
        else:
            self._open_ours(alias, profile)

    def _open_ours(self, alias: str, profile: WorkerProfile) -> None:
        from django.db import connections

        found = connections[alias].get_connection_params()  # our backends': the alias's pool target
        assert found.pool is not None
        fit(found.pool, found.config, profile)
        open_at_boot(found.pool, alias, found.config, profile)

    def _open_postgresql(self, alias: str, profile: WorkerProfile) -> None:
        from django.db import connections

        start = time.monotonic()
        _check_django_pool(alias, connections.settings[alias])
        _size_django_pool(connections.settings[alias], profile)
        pg = connections[alias].pool  # built here if the master did not (open=False)
        left = 30.0 if profile.deadline is None else max(0.1, profile.deadline - time.monotonic())
        pg.open(wait=True, timeout=left)  # psycopg_pool.PoolTimeout if min_size are not open in time
        self._opened_pg[alias] = os.getpid()
        logger.info(
            "pool %s (%s): opened %d connection(s) in %.1f ms [min=%d max=%d]", alias,
            _pg_dsn(connections.settings[alias]), pg.get_stats().get("pool_size", 0),
            (time.monotonic() - start) * 1000, pg.min_size, pg.max_size,
        )  # fmt: skip

    def warm_pool(self) -> int:
        """Give our pools' connections their first use now, and read each alias's server data
        (version, sql_mode) once, so the first request runs no query of Django's own."""
        from django.db import connections

        used = 0
        for alias, found in pools.targets().items():
            if found.pool is None or found.pool.closed:
                continue
            used += found.pool.warm()
            if found.family == "mysql" and found.server_data is None:
                try:
                    connections[alias].mysql_server_data  # noqa: B018 - read once per pool, kept by it
                finally:
                    connections[alias].close()
        return used

    def close_pool(self) -> None:
        """Give back this thread's connections, close every pool opened in this process."""
        from django.db import connections

        try:
            connections.close_all()
        except Exception as exc:  # noqa: BLE001 - closing must go on
            logger.warning("gunicorn_pool: closing Django's connections failed: %s", exc)
        pools.set_managed(False)
        pools.close_all()
        pid = os.getpid()
        for alias, opened_in in list(self._opened_pg.items()):
            if opened_in != pid:
                continue
            del self._opened_pg[alias]
            try:
                connections[alias].close_pool()
            except Exception as exc:  # noqa: BLE001 - one failing pool must not keep the others open
                logger.warning("pool %s: closing Django's psycopg pool failed: %s", alias, exc)

    def stats(self) -> dict[str, Any]:
        """``{alias: {stat: number}}`` for every pooled alias open in this process."""
        out: dict[str, Any] = {alias: found.pool.stats() for alias, found in pools.targets().items()
                               if found.pool is not None}  # fmt: skip
        if self._opened_pg:
            from django.db.backends.postgresql.base import DatabaseWrapper

            for alias in self._opened_pg:
                pg = DatabaseWrapper._connection_pools.get(alias)
                if pg is not None:
                    figures = pg.get_stats()
                    out[alias] = {key: int(figures.get(key, 0)) for key in keys.KEYS}
        return out

    # -- gunicorn-pool check -----------------------------------------------------

    def pool_configs(self) -> dict[str, DatabaseConfig]:
        """``{alias: DatabaseConfig}`` of every pooled alias, sized for the current worker profile
        (read by ``gunicorn-pool check``; the PostgreSQL ones carry psycopg_pool's sizes)."""
        from django.db import connections

        out = {}
        profile = current_profile()
        for alias, family in pooled_aliases().items():
            sd = connections.settings[alias]
            if family == OURS_MYSQL:
                out[alias] = pools.config_for(alias, sd)[0]
            elif family == OURS_POSTGRESQL:
                out[alias] = pools.pg_config_for(alias, sd, connections[alias].timezone_name)[0]
            else:
                _check_django_pool(alias, sd)
                lo, hi = _django_pool_sizes(sd["OPTIONS"]["pool"], profile)
                out[alias] = parse_config(alias, {
                    "adapter": "postgresql", "driver": "psycopg", "host": sd.get("HOST") or None,
                    "port": sd.get("PORT") or None, "user": sd.get("USER") or None,
                    "password": sd.get("PASSWORD") or "", "database": sd.get("NAME") or None, "min_size": lo,
                    "max_size": hi,
                })  # fmt: skip
        return out

    # -- --preload ------------------------------------------------------------------

    def _forget_inherited(self) -> None:
        """Drop what this (boot) thread's Django connections and Django's psycopg pools hold
        from before the fork; see the module docstring."""
        from django.db import connections

        for wrapper in connections.all(initialized_only=True):
            raw = wrapper.connection
            if raw is None:
                continue
            if isinstance(wrapper, pools.PooledWrapper):
                if wrapper._gp_generation != _generation():
                    wrapper._gp_forget()  # its pool drops the connection itself
                continue
            if _detach(raw):
                wrapper.connection = None
                logger.info("Django connection %s: dropped a connection opened before the fork", wrapper.alias)
        if "django.db.backends.postgresql.base" not in sys.modules:
            return
        from django.db.backends.postgresql.base import DatabaseWrapper as PG

        for alias, pg in list(PG._connection_pools.items()):
            if pg.closed or _threads_alive(pg):
                continue  # not opened yet, or opened by this process
            del PG._connection_pools[alias]
            for conn in list(getattr(pg, "_pool", ())):
                _detach(conn)
            _FOREIGN.append(pg)
            logger.info("pool %s: Django's psycopg pool was opened before the fork; a new one opens here", alias)


def _django_pool_sizes(options: Any, profile: WorkerProfile) -> tuple[int, int]:
    """``(min_size, max_size)`` Django's psycopg pool opens with: those ``OPTIONS["pool"]`` gives,
    the worker profile's for those it does not (psycopg_pool: ``max_size`` defaults to
    ``min_size``)."""
    given = options if isinstance(options, dict) else {}
    lo, hi = profile.default_sizes()
    if "min_size" in given:
        lo = int(given["min_size"])
        hi = int(given.get("max_size") or lo)
    elif given.get("max_size") is not None:
        hi = int(given["max_size"])
        lo = min(lo, hi)
    return lo, hi


def _size_django_pool(sd: Any, profile: WorkerProfile) -> None:
    """Size the alias's psycopg pool for this worker before Django builds it: the profile's sizes
    go into ``OPTIONS["pool"]`` (this process's copy of the settings) where it sets none."""
    options = sd["OPTIONS"].get("pool")
    given = options if isinstance(options, dict) else {}
    if "min_size" in given and "max_size" in given:
        return
    lo, hi = _django_pool_sizes(options, profile)
    sd["OPTIONS"]["pool"] = {**given, "min_size": lo, "max_size": hi}


def _check_django_pool(alias: str, sd: Any) -> None:
    """Django's pool needs psycopg 3 (and psycopg_pool): where Django runs on psycopg2 it fails
    with "Error loading psycopg_pool module"; say what to do instead."""
    if pools.pg_driver() == "psycopg":
        return
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"DATABASES[{alias!r}]: OPTIONS['pool'] asks for Django's own connection pool, which needs psycopg 3"
        " (and psycopg_pool); this project's Django runs on psycopg2. For a pool per worker on psycopg2, set"
        f" ENGINE to {pools.PG_ENGINE!r} (OPTIONS['pool'] then takes gunicorn_pool's pool keys), or install"
        " 'psycopg[binary,pool]'"
    )


def _generation() -> int:
    from .._concurrency import fork_generation

    return fork_generation()


def _detach(raw: Any) -> bool:
    """Make *raw* (a connection of another process) unable to reach its server from here: its
    socket becomes /dev/null in this process. Kept referenced, never closed. False if its socket
    cannot be found."""
    try:
        fd = raw.fileno() if callable(getattr(raw, "fileno", None)) else raw._sock.fileno()
    except Exception:  # noqa: BLE001 - closed already, or a driver we cannot see into
        return False
    if not isinstance(fd, int) or fd < 0:
        return False
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    _FOREIGN.append(raw)
    return True


def _threads_alive(pg: Any) -> bool:
    """Does psycopg pool *pg* have a live thread in this process (then this process opened it)?
    Threads do not survive a fork, so an open pool without one was opened by the parent."""
    threads = [*getattr(pg, "_workers", ()), getattr(pg, "_sched_runner", None)]
    known = [t for t in threads if t is not None]
    return not known or any(t.is_alive() for t in known)


def _pg_dsn(sd: Any) -> str:
    from urllib.parse import quote

    auth = quote(sd.get("USER") or "", safe="") + (":***" if sd.get("PASSWORD") else "")
    where = f"{sd.get('HOST') or 'localhost'}:{sd.get('PORT') or 5432}"
    return f"postgresql://{auth}@{where}/{quote(sd.get('NAME') or '', safe='')}"


def _is_config_error(exc: BaseException) -> bool:
    from django.core.exceptions import ImproperlyConfigured

    return isinstance(exc, (ImproperlyConfigured, ConfigError))


_service: list[DjangoPools] = []


def configured_service() -> Optional[DjangoPools]:
    """The process's one :class:`DjangoPools`, if Django's settings are loaded and an alias is
    pooled; else None. Never raises for a project that is not set up."""
    from django.conf import settings

    if not settings.configured:
        return None
    if not pooled_aliases():
        return None
    if not _service:
        _service.append(DjangoPools())
    return _service[0]
