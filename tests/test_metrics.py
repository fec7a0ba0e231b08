"""Pool stats against the real server, gunicorn statsd, Prometheus multiprocess, state-change logs.

Real MariaDB and real gunicorn processes; statsd packets are caught by a UDP
listener in the test, Prometheus values read back from the multiproc dir.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pytest
from support import admin_connect, free_port, wait_until

from gunicorn_pool import DatabasePool, PoolTimeout
from gunicorn_pool.metrics import GAUGES
from gunicorn_pool.stats import KEYS as STATS_KEYS

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
gunicorn_pool.configure(stats_interval={interval})
gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {cfg!r}}}), name="db")
worker_class = {worker!r}
workers = {workers}
{extra}
"""


def _conf(cfg: Any, worker: str = "gunicorn_pool.Worker", workers: int = 2, interval: float = 0.5, extra: str = ""):
    return CONF.format(cfg=cfg, worker=worker, workers=workers, interval=interval, extra=extra)


def _tasks(pid: int) -> int:
    """OS threads of a process (a Python thread is one task)."""
    return len(os.listdir(f"/proc/{pid}/task"))


class StatsdListener:
    """A UDP statsd server in the test: collects every metric line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.lines.extend(data.decode().splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def matching(self, prefix: str) -> list[tuple[str, float, str]]:
        """(name, value, type) of the lines whose name starts with *prefix*."""
        out = []
        for line in list(self.lines):
            name, _, rest = line.partition(":")
            if name.startswith(prefix):
                value, kind = rest.split("|")[:2]
                out.append((name, float(value), kind))
        return out

    def counter_sum(self, name: str) -> float:
        return sum(v for n, v, k in self.matching(name) if n == name and k == "c")

    def gauges(self, name: str) -> list[float]:
        return [v for n, v, k in self.matching(name) if n == name and k == "g"]


@pytest.fixture
def statsd() -> Any:
    listener = StatsdListener()
    try:
        yield listener
    finally:
        listener.close()


# -- pool-level stats under a scripted workload ------------------------------------------------


def test_stats_move_under_scripted_workload(mysql_user):
    # owner_check off: a waiter thread takes the connection the main thread gives back below.
    db = DatabasePool({"default": mysql_user.config(min_size=1, max_size=1, timeout=5, check_interval=0,
                                                    owner_check=False)})  # fmt: skip
    pool = db.pool()
    try:
        pool.open()
        s = pool.stats()
        assert set(s) == set(STATS_KEYS)
        assert (s["pool_size"], s["pool_available"], s["connections_num"], s["requests_num"]) == (1, 1, 1, 0)
        assert mysql_user.count() == 1

        # 5 uses of ~50 ms each: requests_num and usage_ms grow, no new connection.
        for _ in range(5):
            with pool.connection() as conn:
                conn.cursor().execute("SELECT SLEEP(0.05)")
        s = pool.stats()
        assert s["requests_num"] == 5 and s["connections_num"] == 1
        assert 250 <= s["usage_ms"] < 5000, s
        assert s["pool_available"] == 1 and s["requests_waiting"] == 0

        # A caller waits while the only connection is out: requests_waiting shows it.
        held = pool.getconn()
        got: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: got.update(conn=pool.getconn(timeout=10)))
        waiter.start()
        wait_until(lambda: pool.stats()["requests_waiting"] == 1, 5, what="a waiting request")
        s = pool.stats()
        assert s["requests_queued"] == 1 and s["pool_available"] == 0 and s["pool_size"] == 1
        time.sleep(0.2)
        pool.putconn(held)
        waiter.join(10)
        assert "conn" in got and pool.stats()["requests_waiting"] == 0
        assert pool.stats()["requests_wait_ms"] >= 150

        # Forced timeout while the connection is still out.
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.2)
        pool.putconn(got["conn"])
        s = pool.stats()
        assert s["requests_timeouts"] == 1 and s["requests_num"] == 8 and s["requests_waiting"] == 0

        # The server kills the idle session: the checkout ping finds it, the pool replaces it.
        assert mysql_user.kill_all() == 1
        wait_until(lambda: mysql_user.count() == 0, 5, what="session killed")
        with pool.connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        s = pool.stats()
        assert s["connections_lost"] == 1 and s["connections_num"] == 2 and s["connections_errors"] == 0
        assert db.stats() == {"default": s}
    finally:
        db.close_pool()


# -- gunicorn's statsd ------------------------------------------------------------------------------


def test_statsd_receives_pool_metrics_with_gunicorn_prefix(gunicorn, mysql_user, statsd):
    server = gunicorn(
        _conf(mysql_user.url()), "--statsd-host", f"127.0.0.1:{statsd.port}", "--statsd-prefix", "shop"
    ).start(workers_ready=2)
    base = "shop.gunicorn_pool.db.default."
    wait_until(lambda: len(statsd.gauges(base + "pool_size")) >= 4, 15, what="pool_size gauges from 2 workers")
    for _ in range(10):
        status, body = server.get("/conn")
        assert status == 200, body
    # Counter deltas from both workers add up to exactly the requests made.
    wait_until(lambda: statsd.counter_sum(base + "requests_num") == 10, 15, what="requests_num == 10")
    assert statsd.counter_sum(base + "connections_num") == 2  # one per worker, opened at boot
    assert set(statsd.gauges(base + "pool_size")) == {1}
    assert set(statsd.gauges(base + "pool_max")) == {1}
    names = {n for n, _, _ in statsd.matching(base)}
    assert {base + g for g in GAUGES} <= names
    assert not statsd.matching("gunicorn_pool."), "a metric was sent without gunicorn's prefix"
    # The reporter is a second thread in each sync worker.
    assert [_tasks(pid) for pid in server.worker_pids()] == [2, 2]
    time.sleep(1.5)  # still alive and reporting, not a one-off
    assert statsd.counter_sum(base + "requests_num") == 10
    assert server.stop() == 0


def test_statsd_under_gevent_worker(gunicorn, mysql_user, statsd):
    server = gunicorn(
        _conf(mysql_user.url(), worker="gunicorn_pool.GeventWorker", workers=1),
        "--statsd-host", f"127.0.0.1:{statsd.port}",
    ).start(workers_ready=1)  # fmt: skip
    base = "gunicorn_pool.db.default."
    for _ in range(4):
        assert server.get("/conn")[0] == 200
    wait_until(lambda: statsd.counter_sum(base + "requests_num") == 4, 15, what="requests_num == 4 (gevent)")
    assert 10 in statsd.gauges(base + "pool_max")  # gevent's default size
    assert server.stop() == 0


def test_no_reporter_when_statsd_off_or_interval_zero(gunicorn, mysql_user, statsd):
    off = gunicorn(_conf(mysql_user.url(), workers=1)).start(workers_ready=1)
    assert off.get("/conn")[0] == 200
    pids = off.worker_pids()
    assert len(pids) == 1 and _tasks(pids[0]) == 1, "a thread runs with no metrics backend"
    off.stop()
    # statsd on, reporting disabled: gunicorn's own metrics arrive, none of ours.
    quiet = gunicorn(_conf(mysql_user.url(), workers=1, interval=0), "--statsd-host", f"127.0.0.1:{statsd.port}").start(
        workers_ready=1
    )
    for _ in range(3):
        assert quiet.get("/conn")[0] == 200
    wait_until(lambda: len(statsd.matching("gunicorn.requests")) >= 3, 10, what="gunicorn's own statsd lines")
    time.sleep(1.0)
    assert not [line for line in statsd.lines if "gunicorn_pool" in line]
    assert _tasks(quiet.worker_pids()[0]) == 1
    quiet.stop()


# -- Prometheus multiprocess --------------------------------------------------------------------------

PROM_HOOKS = """
from gunicorn_pool.metrics import child_exit

def when_ready(server):
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server({port}, addr="127.0.0.1", registry=registry)
"""


def _collect(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for metric in registry.collect():
        for sample in metric.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(values: dict, name: str) -> Optional[float]:
    return values.get((name, (("pool", "default"), ("service", "db"))))


def test_prometheus_multiprocess_collection(gunicorn, mysql_user, tmp_path):
    pytest.importorskip("prometheus_client")
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    http_port = free_port()
    server = gunicorn(
        _conf(mysql_user.url(), extra=PROM_HOOKS.format(port=http_port)),
        env={"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)},
    ).start(workers_ready=2)
    for _ in range(6):
        assert server.get("/conn")[0] == 200

    def settled() -> Any:
        values = _collect(prom_dir)
        return values if _value(values, "gunicorn_pool_requests_num_total") == 6 else None

    values = wait_until(settled, 15, what="requests_num_total == 6 in the multiproc dir")
    assert _value(values, "gunicorn_pool_pool_size") == 2  # livesum over 2 workers
    assert _value(values, "gunicorn_pool_pool_max") == 2
    assert _value(values, "gunicorn_pool_connections_num_total") == 2
    assert _value(values, "gunicorn_pool_requests_waiting") == 0
    # The documented endpoint in the master serves the same aggregate.
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'gunicorn_pool_requests_num_total{pool="default",service="db"} 6.0' in text
    assert 'gunicorn_pool_pool_size{pool="default",service="db"} 2.0' in text
    # A worker leaves: child_exit drops its live gauges, its counters stay counted.
    old = server.worker_pids()[0]
    os.kill(old, signal.SIGTERM)
    wait_until(lambda: not (prom_dir / f"gauge_livesum_{old}.db").exists(), 15, what="dead worker's gauges removed")
    wait_until(lambda: len(server.worker_pids()) == 2 and old not in server.worker_pids(), 15, what="respawn")

    def respawned() -> Any:
        values = _collect(prom_dir)
        return values if _value(values, "gunicorn_pool_connections_num_total") == 3 else None

    values = wait_until(respawned, 15, what="the new worker's connection counted")
    assert _value(values, "gunicorn_pool_pool_size") == 2
    assert _value(values, "gunicorn_pool_requests_num_total") == 6
    assert server.stop() == 0


# -- every pool state change is one log line with the pool name and masked DSN ------------------------


def test_state_changes_logged_with_name_and_masked_dsn(gunicorn, mysql_user):
    cfg = mysql_user.config(max_size=1, timeout=0.5, check_interval=0, reconnect_backoff_max=0.2)
    server = gunicorn(
        _conf(cfg, worker="gunicorn_pool.ThreadWorker", workers=1, interval=0, extra="threads = 2")
    ).start(workers_ready=1)
    tag = f"pool default (mysql://{mysql_user.name}:***@127.0.0.1:3306/test)"
    assert f"{tag}: opened 1 connection(s)" in server.log()

    # Pool timeout: one request holds the only connection, the next one gives up.
    holder = threading.Thread(target=server.get, args=("/hold/2",))
    holder.start()
    time.sleep(0.5)
    status, body = server.get("/conn")
    assert status == 503 and body["error"] == "PoolTimeout", body
    holder.join(15)
    server.wait_log(f"{tag}: timed out after", timeout=5)

    # The server kills the session: dropped on checkout, replaced.
    mysql_user.kill_all()
    assert server.get("/conn")[0] == 200
    server.wait_log(f"{tag}: dropping dead connection", timeout=5)

    # The login breaks: connect failure, then reconnect once it works again.
    admin = admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"ALTER USER '{mysql_user.name}'@'%%' IDENTIFIED BY %s", ("changed-" + mysql_user.password,))
        mysql_user.kill_all()
        status, body = server.get("/conn")
        assert status == 502 and body["error"] == "ConnectError", body
        server.wait_log(f"{tag}: cannot connect to 127.0.0.1:3306: (1045) Access denied", timeout=5)
        with admin.cursor() as cur:
            cur.execute(f"ALTER USER '{mysql_user.name}'@'%%' IDENTIFIED BY %s", (mysql_user.password,))
    finally:
        admin.close()
    wait_until(lambda: server.get("/conn")[0] == 200, 10, interval=0.3, what="reconnected")
    server.wait_log(f"{tag}: reconnected to 127.0.0.1:3306", timeout=5)
    status, body = server.get("/stats")
    stats = body["stats"]["default"]
    assert stats["requests_timeouts"] == 1 and stats["connections_lost"] >= 1 and stats["connections_errors"] >= 1

    assert server.stop() == 0
    log = server.log()
    assert f"{tag}: closed 1 connection(s)" in log
    assert mysql_user.password not in log
    for line in log.splitlines():
        if "pool default" in line:
            assert tag in line, f"a pool line without the masked DSN: {line}"


