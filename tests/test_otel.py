"""OpenTelemetry metrics under the database-client semantic conventions, read back from the
SDK's in-memory reader: in-process on SQLite pools, and from a real gunicorn worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gunicorn_pool import DatabasePool, PoolTimeout
from gunicorn_pool.otel import BUCKETS, instrument


def read(reader: InMemoryMetricReader) -> dict[str, Any]:
    """{metric name: metric} of the last collection."""
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


@pytest.fixture
def instrumented(tmp_path):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    db = DatabasePool({"default": {"adapter": "sqlite", "database": str(tmp_path / "o.db"), "min_size": 1,
                                   "max_size": 2, "timeout": 0.05}}, name="db")  # fmt: skip
    db.init_pool()
    metrics = instrument([("db", db)], meter_provider=provider)
    assert metrics is not None
    yield db, reader
    metrics.close()
    db.close_pool()
    provider.shutdown()


def test_pool_figures_under_the_semantic_convention_names(instrumented):
    db, reader = instrumented
    pool = db.pool()
    held = [pool.getconn(), pool.getconn()]  # both connections out: a third caller times out
    with pytest.raises(PoolTimeout):
        pool.getconn()
    waiting_seen: list[int] = []
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
    waiter.start()
    while not pool.stats()["requests_waiting"]:
        threading.Event().wait(0.001)
    got = read(reader)
    waiting_seen.append(points(got["db.client.connection.pending_requests"])[(("db.client.connection.pool.name",
                                                                              "db.default"),)].value)  # fmt: skip
    counts = points(got["db.client.connection.count"])
    name = ("db.client.connection.pool.name", "db.default")
    assert counts[(name, ("db.client.connection.state", "used"))].value == 2
    assert counts[(name, ("db.client.connection.state", "idle"))].value == 0
    for conn in held:
        pool.putconn(conn)
    waiter.join(5)
    got = read(reader)
    assert waiting_seen == [1]
    assert points(got["db.client.connection.max"])[(name,)].value == 2
    assert points(got["db.client.connection.idle.min"])[(name,)].value == 1
    assert points(got["db.client.connection.timeouts"])[(name,)].value == 1
    assert points(got["db.client.connection.pending_requests"])[(name,)].value == 0
    counts = points(got["db.client.connection.count"])
    assert counts[(name, ("db.client.connection.state", "idle"))].value == 2
    for metric, unit in (("db.client.connection.count", "{connection}"), ("db.client.connection.timeouts",
                                                                         "{timeout}")):  # fmt: skip
        assert got[metric].unit == unit
    create, wait, use = (points(got[f"db.client.connection.{k}_time"])[(name,)] for k in ("create", "wait", "use"))
    assert got["db.client.connection.use_time"].unit == "s"
    assert create.count == 1 and 0 < create.sum < 5  # the second connection (the first opened before instrument())
    assert wait.count == 3  # three checkouts obtained a connection (the timed-out one did not)
    assert use.count == 3 and use.sum > 0
    assert list(wait.explicit_bounds) == list(BUCKETS)


def test_no_provider_configured_means_nothing_instrumented(tmp_path):
    db = DatabasePool(f"sqlite:///{tmp_path / 'n.db'}")
    db.init_pool()
    assert instrument([("db", db)]) is None  # the API's default proxy provider: no SDK set up
    assert db.pool().observer is None
    db.close_pool()


@pytest.mark.mysql
def test_a_worker_reports_its_pools_when_the_app_configured_a_meter_provider(mysql_user, gunicorn):
    from support import pool_conf

    server = gunicorn(pool_conf({"default": mysql_user.config(max_size=3)}, workers=1), app="otel_app:app")
    server.start(workers_ready=1)
    for _ in range(5):
        assert server.get("/conn")[0] == 200
    status, got = server.get("/otel")
    assert status == 200, got
    name = {"db.client.connection.pool.name": "db.default"}
    assert [name, 3] in got["db.client.connection.max"]
    assert [{**name, "db.client.connection.state": "idle"}, 1] in got["db.client.connection.count"]
    assert [name, 5] in got["db.client.connection.use_time"]  # five leases, each recorded
    assert mysql_user.password not in server.log()
