"""The life cycle of a worker's pools, in one place.

Both the worker classes (:mod:`gunicorn_pool.workers`) and the hooks for
stock workers (:mod:`gunicorn_pool.hooks`) call these two functions::

    master, once started (gunicorn: the worker class's check_config)
      -> prepare_master(worker_class): import the registered pools' drivers
                            once, so no worker pays for it at boot or respawn
    fork (gunicorn)
      -> gevent patching, privilege drop, signals (gunicorn)
      -> app loaded (gunicorn: load_wsgi)
      -> boot(worker):      discover services, init_pool() each, warm the worker
                            (gunicorn_pool.warmup: first-request code paths), wrap the app
                            so each request runs in a request scope (gunicorn_pool.wsgi, or
                            gunicorn_pool.asgi for an ASGI app), start metrics
      -> user's post_worker_init (gunicorn)
      -> ASGI only, in the worker's event loop: the lifespan startup runs aboot():
                            ainit_pool() of each asyncio service, before the app's startup;
                            after the app's startup, afind_late(): what the app registered or
                            created there (an engine adopted in its lifespan) opens too
      -> serve requests
      -> ASGI only: the lifespan shutdown runs ashutdown() after the app's: aclose_pool()
      -> shutdown():        close_pool() each, in the worker's own pid only
    (SIGTERM, SIGQUIT/SIGINT, max_requests, SIGHUP's old workers; nothing runs
    on SIGKILL: the kernel closes the sockets and the server drops the sessions.)

``boot`` never lets a failing pool out of the boot path: an exception there
would make gunicorn halt the whole server, also on a routine respawn. The one
exception is a ``strict`` pool on the server's first start (worker age <=
workers), which is meant to stop the deploy loudly. Warm-up has a total
deadline (``configure(warmup_timeout=...)``, 30 s by default), because gunicorn
never times out a worker's boot.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import sys
import time
from typing import Any, Optional

from . import _concurrency, integrations, wsgi
from ._concurrency import arun_all, run_all
from .base import AsyncPoolInterface, PoolInterface, WorkerProfile, set_profile, worker_kind
from .errors import PoolStartupError
from .metrics import start_reporter
from .otel import instrument
from .registry import registered, settings
from .service import settle_boot
from .warmup import warm_worker

__all__ = ["aboot", "afind_late", "ashutdown", "boot", "boot_dirty", "profile_for", "shutdown"]

logger = logging.getLogger("gunicorn_pool")

_booted: dict[str, Any] = {"pid": None, "services": [], "reporter": None, "otel": None, "profile": None}


def prepare_master(worker_class: type) -> None:
    """In the master, before any fork: let each registered service import what its workers
    will need (``import_drivers``), told whether gevent patches later. Never raises."""
    gevent = worker_kind(worker_class) == "gevent"
    for name, service in registered().items():
        prepare = getattr(service, "import_drivers", None)
        if not callable(prepare):
            continue
        try:
            prepare(gevent=gevent)
        except Exception as exc:  # noqa: BLE001 - a worker imports it itself then, and says what fails
            logger.warning("pool service %s: drivers not imported in the master: %s", name, exc)


def profile_for(worker: Any) -> WorkerProfile:
    """The sizing profile of a gunicorn worker, read off its class and config."""
    cfg = worker.cfg
    return WorkerProfile(
        kind=worker_kind(type(worker)),
        threads=int(getattr(cfg, "threads", 1) or 1),
        first_boot=int(getattr(worker, "age", 0)) <= int(getattr(cfg, "workers", 1) or 1),
        deadline=time.monotonic() + settings.warmup_timeout,
        timeout=float(getattr(cfg, "timeout", 0) or 0) or None,
    )


def _app_attribute(worker: Any) -> str:
    """Where the worker keeps the loaded app: gunicorn's ``asgi`` worker in ``asgi``, every other
    (uvicorn's included, whose ``wsgi`` is an ASGI app) in ``wsgi``."""
    return "asgi" if getattr(worker, "asgi", None) is not None else "wsgi"


def _opened(services: list[tuple[str, PoolInterface]], deadline: Optional[float]) -> None:
    """init_pool() of every service at once (several unreachable servers cost one connect_timeout,
    not one each), bounded by *deadline*; failures per the boot policy (service.settle_boot)."""
    results = run_all([(name, service.init_pool) for name, service in services], deadline=deadline)
    try:
        settle_boot(results, lambda name: f"pool service {name}")
    except PoolStartupError as exc:
        logger.critical("%s", exc)
        raise  # strict pool on first start: gunicorn halts the server, as asked


def boot(worker: Any) -> list[tuple[str, PoolInterface]]:
    """Open every pool service for this worker; return them as (name, service).

    In an ASGI worker (or with an ASGI app under the hooks) the synchronous services open here
    (``def`` endpoints use them from the server's thread pool) and the asyncio ones
    (:class:`~gunicorn_pool.base.AsyncPoolInterface`) in the lifespan startup (:func:`aboot`):
    no event loop runs yet.
    """
    _route_logs_to_gunicorn(worker)
    profile = profile_for(worker)
    attribute = _app_attribute(worker)
    app = getattr(worker, attribute, None)
    asgi = profile.kind == "asyncio" or (app is not None and _is_asgi(app))
    if asgi and profile.kind != "asyncio":
        profile = dataclasses.replace(profile, kind="asyncio")
    set_profile(profile)
    if profile.kind == "gevent":
        _green_psycopg2()
    # A synchronous lease on the event loop's own thread would stall every request of the worker.
    _concurrency.REFUSE_ON_EVENT_LOOP = asgi
    services = integrations.discover(app)
    if profile.kind == "gevent":
        _refuse_blocking_drivers(services, profile)
    start = time.monotonic()
    _opened([(n, s) for n, s in services if not isinstance(s, AsyncPoolInterface)], profile.deadline)
    if settings.warm_up:
        assert profile.deadline is not None  # profile_for() sets it
        warm_worker(worker, services, requests=0 if asgi else settings.warm_requests, deadline=profile.deadline)
    if settings.request_scope or asgi:
        if asgi:  # every request in a scope, and the asyncio pools opened in the lifespan
            from . import asgi as asgi_layer

            scoped = asgi_layer.RequestScopeASGI(app, startup=aboot, shutdown=ashutdown,  # type: ignore[arg-type]
                                                 after_app_startup=afind_late)  # fmt: skip
            setattr(worker, attribute, scoped)
        else:
            wsgi.wrap(worker)  # every request in a scope: leaks reclaimed, request_connection() given back
    _booted.update(pid=os.getpid(), services=services, reporter=_start_reporter(worker, services),
                   otel=_start_otel(services), profile=profile)  # fmt: skip
    logger.info(
        "gunicorn_pool: %d pool service(s) ready in %.1f ms (%s worker)",
        len(services), (time.monotonic() - start) * 1000, profile.kind,
    )  # fmt: skip
    return services


def _green_psycopg2() -> None:
    """In a gevent worker whose process has psycopg2 loaded (a psycopg2 pool imports it in the
    master; an app may too): psycopg2's wait callback, as psycogreen installs it, so every psycopg2
    connection of the worker waits cooperatively. Never in sync or gthread workers: psycopg2
    refuses COPY and large objects while a callback is set. One the app set is kept."""
    if "psycopg2" not in sys.modules:
        return
    try:
        from .connectors.psycopg2 import install_wait_callback

        install_wait_callback()
    except Exception as exc:  # noqa: BLE001 - a broken psycopg2 is its pools' error to report
        logger.warning("gunicorn_pool: psycopg2's wait callback not installed: %s", exc)


#: Drivers whose calls block the whole process while they wait for the server (C libraries).
BLOCKING_DRIVERS = ("mysqlclient",)


def _refuse_blocking_drivers(services: list[tuple[str, PoolInterface]], profile: WorkerProfile) -> None:
    """In a gevent worker: a pool on a driver that blocks the hub (mysqlclient) is a configuration
    error on the server's first start (PoolStartupError: gunicorn halts, the message says why),
    and on a respawn an error logged while the worker boots (halting then would stop a running
    server; the pool's connects are refused by its connector under gevent all the same)."""
    found = []
    for name, service in services:
        configs = getattr(service, "configs", None)
        try:
            if not isinstance(configs, dict) and callable(getattr(service, "pool_configs", None)):
                configs = service.pool_configs()  # type: ignore[attr-defined]  # Django aliases
        except Exception:  # noqa: BLE001 - a service that cannot list them reports it when it opens
            continue
        for key, cfg in (configs or {}).items():
            if getattr(cfg, "driver", None) in BLOCKING_DRIVERS:
                found.append(f"{name}/{key} ({cfg.driver})")
    if not found:
        return
    message = (
        f"pool(s) {', '.join(found)}: mysqlclient is a C library that blocks gevent's hub while it waits for"
        " the server (every request of the worker would wait with it): use driver pymysql in gevent workers,"
        " or a sync or gthread worker"
    )
    if profile.first_boot:
        logger.critical("%s (configuration error, first start)", message)
        raise PoolStartupError(f"{message} (configuration error, first start)")
    logger.error("%s; this respawned worker serves without them", message)


def boot_dirty(worker: Any) -> list[tuple[str, PoolInterface]]:
    """Open the pool services in one of gunicorn's dirty workers (gunicorn >= 25 ``dirty_apps``:
    processes of their own for heavy tasks, whose app calls run in ``dirty_threads`` threads).

    The services are the registered ones, the entry points and those reachable from the
    loaded dirty apps (the app walk); synchronous ones open here, sized for ``dirty_threads``
    (1 thread: one connection per pool, as a sync worker; N: up to N); asyncio services do not
    apply (the apps run in threads). They close when the dirty worker closes its apps at exit
    (gunicorn calls ``dirty_worker_exit`` in the dirty arbiter, not in the worker). Never raises
    but for a ``strict`` pool on the first start."""
    _route_logs_to_gunicorn(worker)
    cfg = worker.cfg
    threads = max(1, int(getattr(cfg, "dirty_threads", 1) or 1))
    profile = WorkerProfile(
        kind="thread" if threads > 1 else "sync",
        threads=threads,
        first_boot=int(getattr(worker, "age", 0)) <= int(getattr(cfg, "dirty_workers", 1) or 1),
        deadline=time.monotonic() + settings.warmup_timeout,
        timeout=float(getattr(cfg, "dirty_timeout", 0) or 0) or None,
    )
    set_profile(profile)
    apps = getattr(worker, "apps", None)
    found = integrations.discover(dict(apps) if isinstance(apps, dict) else None)
    services = [(n, s) for n, s in found if not isinstance(s, AsyncPoolInterface)]
    start = time.monotonic()
    _opened(services, profile.deadline)
    if settings.warm_up:
        assert profile.deadline is not None
        warm_worker(worker, services, requests=0, deadline=profile.deadline)
    _booted.update(pid=os.getpid(), services=services, reporter=None, otel=None, profile=profile)
    if isinstance(apps, dict):
        # gunicorn closes every dirty app when the worker exits (its own _cleanup): so do we.
        apps["gunicorn_pool:pools"] = _ClosePools()
    logger.info("gunicorn_pool: %d pool service(s) ready in %.1f ms (dirty worker, %d thread(s))", len(services),
                (time.monotonic() - start) * 1000, threads)  # fmt: skip
    return services


class _ClosePools:
    """Sits among a dirty worker's apps so that gunicorn's close of every app at exit closes the
    pools too; it answers no request."""

    def init(self) -> None:
        """Nothing: the pools opened in dirty_worker_init."""

    def __call__(self, action: str, *args: Any, **kwargs: Any) -> Any:
        raise LookupError("gunicorn_pool:pools is not an app: it closes the worker's pools at exit")

    def close(self) -> None:
        shutdown()


def _is_asgi(app: Any) -> bool:
    """Is *app* an ASGI callable (an ``async def`` function, or an object whose ``__call__`` is
    one)? Asked with ``inspect``: importing asyncio for the question would cost every WSGI
    worker ~40 modules (bench/memory.py)."""
    return inspect.iscoroutinefunction(app) or (callable(app) and inspect.iscoroutinefunction(type(app).__call__))


def _async_services() -> list[tuple[str, AsyncPoolInterface]]:
    return [(n, s) for n, s in _booted["services"] if isinstance(s, AsyncPoolInterface)]


async def aboot() -> None:
    """In the worker's event loop (the ASGI lifespan startup): ``ainit_pool()`` of every asyncio
    service at once, bounded by what is left of the warm-up deadline, under the boot policy.
    Raises only for a ``strict`` pool on the first start (the lifespan startup then fails)."""
    services = _async_services()
    if not services:
        return
    start = time.monotonic()
    profile: WorkerProfile = _booted["profile"] or WorkerProfile(kind="asyncio")
    results = await arun_all({name: service.ainit_pool() for name, service in services}, deadline=profile.deadline)
    try:
        settle_boot(results, lambda name: f"pool service {name}")
    except PoolStartupError as exc:
        logger.critical("%s", exc)
        raise
    if _booted["otel"] is not None:  # the asyncio pools exist from now on: their histograms too
        _booted["otel"].attach(services)
    logger.info("gunicorn_pool: %d asyncio pool service(s) ready in %.1f ms", len(services),
                (time.monotonic() - start) * 1000)  # fmt: skip


async def afind_late(app: Any) -> None:
    """After the app's own lifespan startup, in the worker's event loop: the services found now
    and not at boot (``adopt(engine)`` or ``register()`` in the app's lifespan, an engine it keeps
    in ``app.state``) open as the boot's would, within a fresh warm-up deadline (the synchronous
    ones in a thread: their connects block), and join the worker's services (closed at exit,
    reported). Raises only for a ``strict`` pool on the first start."""
    if _booted["pid"] != os.getpid():
        return
    known = {id(service) for _, service in _booted["services"]}
    # Entry points were read at boot: a factory among them would build its service again.
    found = [(name, service) for name, service in integrations.discover(app, entry_points=False)
             if id(service) not in known]  # fmt: skip
    if not found:
        return
    import asyncio

    start = time.monotonic()
    deadline = start + settings.warmup_timeout
    synchronous = [(n, s) for n, s in found if not isinstance(s, AsyncPoolInterface)]
    asynchronous = [(n, s) for n, s in found if isinstance(s, AsyncPoolInterface)]
    _booted["services"].extend(found)  # closed at exit even if they fail to open now
    if synchronous:
        await asyncio.to_thread(_opened, synchronous, deadline)
    if asynchronous:
        results = await arun_all({name: service.ainit_pool() for name, service in asynchronous}, deadline=deadline)
        try:
            settle_boot(results, lambda name: f"pool service {name}")
        except PoolStartupError as exc:
            logger.critical("%s", exc)
            raise
    if _booted["otel"] is not None:
        _booted["otel"].attach(found)
    logger.info("gunicorn_pool: %d pool service(s) found after the app's lifespan startup, ready in %.1f ms",
                len(found), (time.monotonic() - start) * 1000)  # fmt: skip


async def ashutdown() -> None:
    """In the worker's event loop (the ASGI lifespan shutdown, after the app's): ``aclose_pool()``
    of every asyncio service, in this process only."""
    if _booted["pid"] != os.getpid():
        return
    for name, service in _async_services():
        try:
            await service.aclose_pool()
        except Exception as exc:  # noqa: BLE001 - one failing close must not skip the others
            logger.warning("pool service %s: aclose_pool() failed: %s", name, exc)


def shutdown() -> None:
    """Close the pools this process opened; do nothing in any other process. Asyncio services
    still open here (gunicorn's quick shutdown skips the lifespan's) drop their connections
    without a round trip: the event loop is gone."""
    if _booted["pid"] != os.getpid():
        return
    reporter = _booted["reporter"]
    if reporter is not None:
        reporter.stop()
    if _booted["otel"] is not None:
        _booted["otel"].close()
    for name, service in _booted["services"]:
        try:
            service.close_pool()
        except Exception as exc:  # noqa: BLE001 - one failing close must not skip the others
            logger.warning("pool service %s: close_pool() failed: %s", name, exc)
    _booted.update(pid=None, services=[], reporter=None, otel=None, profile=None)


def _start_reporter(worker: Any, services: list[tuple[str, PoolInterface]]) -> Any:
    try:
        return start_reporter(worker, services, interval=settings.stats_interval)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a worker
        logger.warning("gunicorn_pool: metrics reporter not started: %s", exc)
        return None


def _start_otel(services: list[tuple[str, PoolInterface]]) -> Any:
    try:
        return instrument(services)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a worker
        logger.warning("gunicorn_pool: OpenTelemetry metrics not started: %s", exc)
        return None


def _route_logs_to_gunicorn(worker: Any) -> None:
    """Send the ``gunicorn_pool`` logger to gunicorn's error log, in its format."""
    source = logging.getLogger("gunicorn.error")
    if not source.handlers:
        return
    target = logging.getLogger("gunicorn_pool")
    target.handlers = list(source.handlers)
    target.setLevel(source.level)
    target.propagate = False
