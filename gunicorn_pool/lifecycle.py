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
                            so each request runs in a request scope (gunicorn_pool.wsgi),
                            start metrics
      -> user's post_worker_init (gunicorn)
      -> serve requests
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

import logging
import os
import time
from typing import Any

from . import integrations, wsgi
from ._concurrency import run_all
from .base import PoolInterface, WorkerProfile, set_profile, worker_kind
from .errors import PoolStartupError
from .metrics import start_reporter
from .otel import instrument
from .registry import registered, settings
from .warmup import warm_worker

__all__ = ["boot", "profile_for", "shutdown"]

logger = logging.getLogger("gunicorn_pool")

_booted: dict[str, Any] = {"pid": None, "services": [], "reporter": None, "otel": None}


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


def boot(worker: Any) -> list[tuple[str, PoolInterface]]:
    """Open every pool service for this worker; return them as (name, service)."""
    _route_logs_to_gunicorn(worker)
    profile = profile_for(worker)
    set_profile(profile)
    services = integrations.discover(getattr(worker, "wsgi", None))
    start = time.monotonic()
    # At once: several unreachable servers cost one connect_timeout, not one each.
    results = run_all([(name, service.init_pool) for name, service in services], deadline=profile.deadline)
    for name, exc in results.items():
        if exc is None:
            continue
        if isinstance(exc, PoolStartupError):
            logger.critical("%s", exc)
            raise exc  # strict pool on first start: gunicorn halts the server, as asked
        if isinstance(exc, TimeoutError):
            logger.error("pool service %s: init_pool() still running at the warm-up deadline; serving without it", name)
        elif isinstance(exc, Exception):  # never halt the server for a pool
            logger.error("pool service %s: init_pool() failed, it will connect on demand: %s", name, exc)
        else:
            raise exc
    if settings.warm_up:
        assert profile.deadline is not None  # profile_for() sets it
        warm_worker(worker, services, requests=settings.warm_requests, deadline=profile.deadline)
    if settings.request_scope:
        wsgi.wrap(worker)  # every request in a scope: leaks reclaimed, request_connection() given back
    _booted.update(pid=os.getpid(), services=services, reporter=_start_reporter(worker, services),
                   otel=_start_otel(services))  # fmt: skip
    logger.info(
        "gunicorn_pool: %d pool service(s) ready in %.1f ms (%s worker)",
        len(services), (time.monotonic() - start) * 1000, profile.kind,
    )  # fmt: skip
    return services


def shutdown() -> None:
    """Close the pools this process opened; do nothing in any other process."""
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
    _booted.update(pid=None, services=[], reporter=None, otel=None)


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
