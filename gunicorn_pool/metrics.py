"""Periodic pool metrics: gunicorn's statsd and Prometheus (multiprocess).

:func:`gunicorn_pool.lifecycle.boot` calls :func:`start_reporter` in every
worker. When a backend is on, one daemon thread per worker (a greenlet under
gevent, whose ``threading`` is patched by then) wakes every
``configure(stats_interval=...)`` seconds (10 by default), reads every pool
service's ``stats()`` and sends:

- **gauges**, the figures of this worker now: ``pool_min``, ``pool_max``,
  ``pool_size``, ``pool_available``, ``requests_waiting``;
- **counters**, what happened since the last report: every key of
  :data:`gunicorn_pool.stats.COUNTERS` (``requests_num``,
  ``requests_timeouts``, ``connections_lost``, ...).

Backends:

- **statsd** (gunicorn ``--statsd-host``): sent through the worker's
  ``worker.log`` (``gunicorn.instrument.statsd.Statsd``), so gunicorn's
  ``--statsd-prefix`` and ``--dogstatsd-tags`` apply. Names are
  ``gunicorn_pool.<service>.<pool>.<stat>``.
- **Prometheus** (``prometheus_client`` installed and
  ``PROMETHEUS_MULTIPROC_DIR`` set before gunicorn starts): Gauges
  (``multiprocess_mode="livesum"``: the sum over the live workers) and
  Counters named ``gunicorn_pool_<stat>``, labelled ``service`` and ``pool``.
  Add :func:`child_exit` to gunicorn.conf.py.

With neither backend (or ``stats_interval <= 0``) nothing starts: no thread,
no cost. The reporter only reads the pools' figures; the pools' hot path has
no extra lock or call for it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Iterator, Optional, Protocol

from .stats import COUNTERS, GAUGES, HELP

__all__ = ["COUNTERS", "GAUGES", "Reporter", "child_exit", "iter_stats", "start_reporter"]

logger = logging.getLogger("gunicorn_pool")


def iter_stats(services: list[tuple[str, Any]]) -> Iterator[tuple[str, str, dict[str, float]]]:
    """Yield ``(service, pool, {stat: number})`` for every pool of every service.

    A service's ``stats()`` is either ``{pool: {stat: n}}`` (DatabasePool) or a
    flat ``{stat: n}``, reported with the pool name ``""``.
    """
    for service_name, service in services:
        stats = service.stats() or {}
        flat = {k: v for k, v in stats.items() if _is_number(v)}
        if flat:
            yield service_name, "", flat
        for pool_name, figures in stats.items():
            if isinstance(figures, dict):
                yield service_name, str(pool_name), {k: v for k, v in figures.items() if _is_number(v)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Sink(Protocol):
    """A metrics backend."""

    def gauge(self, service: str, pool: str, key: str, value: float) -> None: ...

    def count(self, service: str, pool: str, key: str, delta: float) -> None: ...


class StatsdSink:
    """Sends through gunicorn's statsd logger (its prefix, host and tags)."""

    def __init__(self, log: Any) -> None:
        self.log = log

    @staticmethod
    def name(service: str, pool: str, key: str) -> str:
        parts = ["gunicorn_pool", _clean(service)] + ([_clean(pool)] if pool else []) + [key]
        return ".".join(parts)

    def gauge(self, service: str, pool: str, key: str, value: float) -> None:
        self.log.gauge(self.name(service, pool, key), value)

    def count(self, service: str, pool: str, key: str, delta: float) -> None:
        self.log.increment(self.name(service, pool, key), delta)


class PrometheusSink:
    """Updates prometheus_client metrics, written to PROMETHEUS_MULTIPROC_DIR."""

    def __init__(self) -> None:
        import prometheus_client

        self._client = prometheus_client
        self._metrics: dict[str, Any] = {}

    def _metric(self, key: str, gauge: bool) -> Any:
        metric = self._metrics.get(key)
        if metric is None:
            name, doc = "gunicorn_pool_" + re.sub(r"\W+", "_", key), HELP.get(key, key)
            doc += " (sum over live workers)" if gauge else " (all workers, exited ones included)"
            labels = ("service", "pool")
            if gauge:
                metric = self._client.Gauge(name, doc, labels, registry=None, multiprocess_mode="livesum")
            else:
                metric = self._client.Counter(name, doc, labels, registry=None)
            self._metrics[key] = metric
        return metric

    def gauge(self, service: str, pool: str, key: str, value: float) -> None:
        self._metric(key, True).labels(service, pool).set(value)

    def count(self, service: str, pool: str, key: str, delta: float) -> None:
        self._metric(key, False).labels(service, pool).inc(delta)


class Reporter:
    """Reads the services' stats every *interval* seconds and feeds the sinks."""

    def __init__(self, services: list[tuple[str, Any]], sinks: list[Sink], interval: float) -> None:
        self.services = services
        self.sinks = sinks
        self.interval = interval
        self._last: dict[tuple[str, str, str], float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failed = False

    def start(self) -> Reporter:
        self._thread = threading.Thread(target=self._run, name="gunicorn_pool-metrics", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self.report()
            if self._stop.wait(self.interval):
                return

    def report(self) -> None:
        """Send one round of gauges and counter deltas (never raises)."""
        try:
            for service, pool, stats in iter_stats(self.services):
                for key, value in stats.items():
                    if key not in COUNTERS:  # GAUGES, and a custom service's own figures
                        for sink in self.sinks:
                            sink.gauge(service, pool, key, value)
                        continue
                    delta = value - self._last.get((service, pool, key), 0)
                    if delta < 0:  # the pool was rebuilt (close, fork): its counters restarted
                        delta = value
                    self._last[(service, pool, key)] = value
                    if delta:
                        for sink in self.sinks:
                            sink.count(service, pool, key, delta)
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - metrics must never hurt the worker
            if not self._failed:  # once per failure streak, not every interval
                logger.warning("gunicorn_pool: metrics report failed: %s", exc)
            self._failed = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (bounded wait) and send the last counter deltas."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.report()


def start_reporter(worker: Any, services: list[tuple[str, Any]], *, interval: float) -> Optional[Reporter]:
    """Start reporting pool stats; None (and no thread) when no backend is on."""
    if not interval or interval <= 0:
        return None
    sinks: list[Sink] = []
    log = getattr(worker, "log", None)
    cfg = getattr(worker, "cfg", None)
    if getattr(cfg, "statsd_host", None) and callable(getattr(log, "gauge", None)):
        sinks.append(StatsdSink(log))
    prometheus = _prometheus_sink()
    if prometheus is not None:
        sinks.append(prometheus)
    if not sinks:
        return None
    logger.debug("gunicorn_pool: metrics every %gs to %s", interval, ", ".join(type(s).__name__ for s in sinks))
    return Reporter(services, sinks, interval).start()


def _prometheus_sink() -> Optional[PrometheusSink]:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    try:
        from prometheus_client import values
    except ImportError:
        logger.warning("gunicorn_pool: PROMETHEUS_MULTIPROC_DIR is set but prometheus_client is not installed")
        return None
    if values.ValueClass is values.MutexValue:
        # prometheus_client was imported before the variable was set: values
        # would stay in this process, invisible to the MultiProcessCollector.
        logger.warning(
            "gunicorn_pool: prometheus_client is not in multiprocess mode; set PROMETHEUS_MULTIPROC_DIR"
            " in the environment before gunicorn starts"
        )
        return None
    return PrometheusSink()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live Prometheus gauges.

    In gunicorn.conf.py: ``from gunicorn_pool.metrics import child_exit``.
    Does nothing unless PROMETHEUS_MULTIPROC_DIR is set.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _clean(name: str) -> str:
    """A statsd/Prometheus-safe name part: letters, digits, ``_`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "_"
