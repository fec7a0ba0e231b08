"""OpenTelemetry metrics for every pool, under the database-client semantic conventions.

When an OpenTelemetry ``MeterProvider`` is configured in the worker (the
OpenTelemetry SDK, set up by the app or its instrumentation before the
worker boots), :func:`gunicorn_pool.lifecycle.boot` calls :func:`instrument`
and each worker reports its pools (extra ``gunicorn-pool[otel]``):

======================================== ================ ==========================================
instrument                               kind, unit       value
======================================== ================ ==========================================
``db.client.connection.count``           up-down counter  open connections, by
                                         ``{connection}`` ``db.client.connection.state``: ``idle`` /
                                                          ``used``
``db.client.connection.max``             up-down counter  ``max_size``
``db.client.connection.idle.min``        up-down counter  ``min_size``
``db.client.connection.pending_requests`` up-down counter callers waiting for a connection
``db.client.connection.timeouts``        counter          waits that ran out (``PoolTimeout``)
``db.client.connection.create_time``     histogram, s     each connect
``db.client.connection.wait_time``       histogram, s     each checkout, from asking to having a
                                                          connection (0 from the idle stack)
``db.client.connection.use_time``        histogram, s     each lease, checkout to return
======================================== ================ ==========================================

Every point carries ``db.client.connection.pool.name`` = ``<service>.<pool>``
(``db.default``). The counts are observed when the SDK collects (no thread,
nothing on the hot path); the histograms are fed by the pools as events
happen, through ``ConnectionPool.observer``, which costs nothing when no
provider is configured. With no SDK provider set (the API's default proxy),
nothing is instrumented.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, Optional

from . import stats as keys
from .metrics import iter_stats

__all__ = ["OTelMetrics", "instrument"]

logger = logging.getLogger("gunicorn_pool")

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
#: Seconds: a pooled checkout is microseconds, a connect milliseconds, a lease up to seconds.
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
           5.0, 10.0)  # fmt: skip
_UNCONFIGURED = ("_ProxyMeterProvider", "ProxyMeterProvider", "NoOpMeterProvider")


class _Observer:
    """A pool's PoolObserver: records its events into the three histograms."""

    __slots__ = ("_create", "_wait", "_use", "_attributes")

    def __init__(self, histograms: tuple[Any, Any, Any], pool_name: str) -> None:
        self._create, self._wait, self._use = histograms
        self._attributes = {POOL_NAME: pool_name}

    def connected(self, seconds: float) -> None:
        self._create.record(seconds, self._attributes)

    def waited(self, seconds: float) -> None:
        self._wait.record(seconds, self._attributes)

    def used(self, seconds: float) -> None:
        self._use.record(seconds, self._attributes)


class OTelMetrics:
    """The instruments of one worker's pools; :meth:`close` detaches the observers."""

    def __init__(self, services: list[tuple[str, Any]], meter_provider: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from opentelemetry.metrics import Observation

        try:
            package_version: Optional[str] = version("gunicorn-pool")
        except PackageNotFoundError:
            package_version = None
        self.services = services
        self._observation = Observation
        meter = meter_provider.get_meter("gunicorn_pool", package_version)
        meter.create_observable_up_down_counter(
            "db.client.connection.count", callbacks=[self._count], unit="{connection}",
            description="The number of connections that are currently in the state described by the state attribute",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.max", callbacks=[self._gauge(keys.POOL_MAX)], unit="{connection}",
            description="The maximum number of open connections allowed",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.min", callbacks=[self._gauge(keys.POOL_MIN)], unit="{connection}",
            description="The minimum number of idle open connections allowed",
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", callbacks=[self._gauge(keys.REQUESTS_WAITING)],
            unit="{request}", description="The number of current pending requests for an open connection",
        )  # fmt: skip
        meter.create_observable_counter(
            "db.client.connection.timeouts", callbacks=[self._gauge(keys.REQUESTS_TIMEOUTS)], unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a connection from"
            " the pool",
        )  # fmt: skip
        histograms = tuple(
            meter.create_histogram(name, unit="s", description=text, explicit_bucket_boundaries_advisory=BUCKETS)
            for name, text in (
                ("db.client.connection.create_time", "The time it took to create a new connection"),
                ("db.client.connection.wait_time", "The time it took to obtain an open connection from the pool"),
                ("db.client.connection.use_time", "The time between borrowing a connection and returning it to the"
                                                  " pool"),
            )
        )  # fmt: skip
        self._histograms = histograms
        self._pools: list[Any] = []
        self.attach(services)

    def attach(self, services: list[tuple[str, Any]]) -> None:
        """Feed the histograms from *services*' pools open now (an asyncio service's pools open in
        the ASGI lifespan, after the worker booted: attached then)."""
        for service_name, service in services:
            for pool_name, pool in (service.connection_pools() or {}).items():
                if pool not in self._pools:
                    pool.observer = _Observer(self._histograms, f"{service_name}.{pool_name}")
                    self._pools.append(pool)

    def _points(self) -> Iterable[tuple[str, dict[str, float]]]:
        for service, pool, figures in iter_stats(self.services):
            yield (f"{service}.{pool}" if pool else service), figures

    def _count(self, options: Any) -> Iterable[Any]:
        for name, figures in self._points():
            if keys.POOL_SIZE in figures and keys.POOL_AVAILABLE in figures:
                idle = figures[keys.POOL_AVAILABLE]
                yield self._observation(idle, {POOL_NAME: name, STATE: "idle"})
                yield self._observation(figures[keys.POOL_SIZE] - idle, {POOL_NAME: name, STATE: "used"})

    def _gauge(self, key: str) -> Any:
        def observe(options: Any) -> Iterable[Any]:
            for name, figures in self._points():
                if key in figures:
                    yield self._observation(figures[key], {POOL_NAME: name})

        return observe

    def close(self) -> None:
        """Stop feeding the histograms (the observable counts stop with the services' stats)."""
        for pool in self._pools:
            pool.observer = None
        self._pools = []


def instrument(services: list[tuple[str, Any]], *, meter_provider: Any = None) -> Optional[OTelMetrics]:
    """Report *services*' pools to *meter_provider* (default: OpenTelemetry's global one).

    None when no SDK provider is configured. OpenTelemetry is not imported here: an app that
    configured a provider has imported it already, and importing it in every worker that has
    none would cost each boot (and each max_requests respawn) its import time.
    """
    if meter_provider is None:
        metrics = sys.modules.get("opentelemetry.metrics")
        if metrics is None:
            return None
        meter_provider = metrics.get_meter_provider()
        if type(meter_provider).__name__ in _UNCONFIGURED:
            return None
    return OTelMetrics(services, meter_provider)
