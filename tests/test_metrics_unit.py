"""The metrics reporter, with no server: SQLite pools, a stand-in statsd logger.

The reporter reads every service's stats() each interval and sends gauges and
counter increments; these tests drive it by hand (report()) and through its
thread, and check the pool's own ms counters under thread contention.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from support import wait_until

import gunicorn_pool
from gunicorn_pool import DatabasePool
from gunicorn_pool.metrics import COUNTERS, GAUGES, iter_stats, start_reporter


def test_reporter_sends_gauges_and_counter_deltas_once(tmp_path):
    """The reporter itself, in-process: gauges every round, counters as deltas summing to the truth."""
    sent: list[tuple[str, str, float]] = []

    class Log:
        def gauge(self, name: str, value: float) -> None:
            sent.append(("g", name, value))

        def increment(self, name: str, value: float) -> None:
            sent.append(("c", name, value))

    class Worker:
        log = Log()
        cfg = type("Cfg", (), {"statsd_host": ("127.0.0.1", 9)})()

    db = DatabasePool({"default": {"adapter": "sqlite", "database": str(tmp_path / "r.db"), "max_size": 2}})
    db.pool().open()
    reporter = start_reporter(Worker(), [("db", db)], interval=30)
    try:
        assert reporter is not None
        wait_until(lambda: any(k == "g" for k, _, _ in sent), 5, what="first report")
        for _ in range(3):
            with db.connection() as conn:
                conn.execute("SELECT 1")
        reporter.report()
        for _ in range(2):
            with db.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        reporter.stop()  # the last deltas go out on stop
        db.close_pool()
    counts = [v for k, n, v in sent if n == "gunicorn_pool.db.default.requests_num"]
    assert sum(counts) == 5 and all(v > 0 for v in counts), counts
    gauge_names = {n for k, n, _ in sent if k == "g"}
    assert gauge_names == {f"gunicorn_pool.db.default.{g}" for g in GAUGES}
    assert all(k == "c" for k, n, _ in sent if n.rsplit(".", 1)[1] in COUNTERS)
    assert not reporter.running

def test_no_backend_means_no_reporter():
    class Worker:
        log = object()
        cfg = type("Cfg", (), {"statsd_host": None})()

    env = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        assert start_reporter(Worker(), [], interval=10) is None
        assert all(t.name != "gunicorn_pool-metrics" for t in threading.enumerate())
    finally:
        if env is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = env

def test_iter_stats_accepts_flat_custom_service():
    class Custom(gunicorn_pool.PoolInterface):
        def init_pool(self) -> None: ...

        def close_pool(self) -> None: ...

        def stats(self) -> dict[str, Any]:
            return {"clients": 3, "label": "x", "ok": True}

    assert list(iter_stats([("cache", Custom())])) == [("cache", "", {"clients": 3})]

def test_ms_counters_lose_no_update_under_thread_contention(tmp_path, monkeypatch):
    """``stats["connections_ms"] += int(...)`` read the counter before calling int(): a thread
    switch there lost the other threads' increments (no lock on this path, on purpose).

    The core module's ``int`` is replaced by one that yields the GIL and returns 1,
    so every ms figure is exactly 1 and every increment meets other threads: each
    ms counter must equal the count it goes with. (SQLite: this is the pool's own
    accounting, no server decides it.) ``usage_ms`` is no longer summed per lease: each slot
    keeps float seconds, written only by its holder, and stats() converts once.
    """
    from gunicorn_pool import core as pool_module

    def yielding_int(value: float) -> int:
        time.sleep(0)  # let other threads run between the counter's read and write
        return 1

    cfg = {"adapter": "sqlite", "database": str(tmp_path / "c.db"), "min_size": 0, "max_size": 4}
    db = DatabasePool({"default": cfg})
    pool = db.pool()
    monkeypatch.setattr(pool_module, "int", yielding_int, raising=False)
    threads, uses = 8, 2000

    def work() -> None:
        for _ in range(uses):
            raw = pool.getconn()
            time.sleep(0)  # hold it across a thread switch: the threads contend
            pool.putconn(raw)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
    finally:
        db.close_pool()
    s = pool.stats()
    assert s["requests_num"] == threads * uses
    assert s["usage_ms"] == 1, s  # one int() per stats() call, none per lease
    assert s["connections_ms"] == s["connections_num"] >= 4, s
    assert s["requests_wait_ms"] == s["requests_queued"] > 0, s
