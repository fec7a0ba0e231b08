"""Worker warm-up (gunicorn_pool.warmup): a fresh worker runs its first-request
code before traffic, without calling the app, counting requests or logging them.

Real gunicorn processes and the real MariaDB; timing is not asserted here
(bench/boot.py measures it), only what the warm-up must and must not do.
"""

from __future__ import annotations

import os
import re

import pytest
from support import wait_until

from gunicorn_pool import DatabasePool

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {url!r}}}), name="db")
worker_class = {worker!r}
workers = 1
accesslog = "-"
{extra}
"""
WARMED = re.compile(r"worker warm-up http ([\d.]+) ms, db ([\d.]+) ms, threads ([\d.]+) ms")


@pytest.mark.parametrize(
    "worker, extra",
    [("gunicorn_pool.Worker", ""), ("gunicorn_pool.ThreadWorker", "threads = 4"),
     ("gunicorn_pool.GeventWorker", "")],
    ids=["sync", "gthread", "gevent"],
)  # fmt: skip
def test_warm_up_runs_before_traffic_and_leaves_no_trace(gunicorn, mysql_user, worker, extra):
    server = gunicorn(CONF.format(url=mysql_user.url(min_size=2, max_size=4), worker=worker, extra=extra))
    server.start(workers_ready=1)
    log = server.log()
    assert WARMED.search(log), log[-2000:]
    assert "warm-up step" not in log, "a warm-up step failed"
    (pid,) = server.worker_pids()
    if "threads" in extra:  # gthread's executor threads started at boot, not on the first request
        assert len(os.listdir(f"/proc/{pid}/task")) >= 1 + 4
    status, body = server.get("/stats")
    assert status == 200, body
    stats = body["stats"]["default"]
    assert stats["requests_num"] == 0 and stats["usage_ms"] == 0, stats  # warm-up uses are not traffic
    assert stats["connections_num"] == 2 and stats["pool_available"] == 2, stats
    assert mysql_user.count() == 2
    wait_until(lambda: '"GET /stats' in server.log(), 5, what="the access line of /stats")
    access = [line for line in server.log().splitlines() if '"GET ' in line]
    assert len(access) == 1 and "/stats" in access[0], access  # the warm-up's requests are not logged
    assert "__gunicorn_pool_warmup__" not in server.log()


def test_warm_up_does_not_count_towards_max_requests(gunicorn, mysql_user):
    """8 synthetic requests at boot; max_requests = 3 still means 3 real requests per worker."""
    server = gunicorn(CONF.format(url=mysql_user.url(), worker="gunicorn_pool.Worker", extra="max_requests = 3"))
    server.start(workers_ready=1)
    pids = {server.get("/conn")[1]["pid"] for _ in range(2)}
    assert len(pids) == 1, "the worker restarted before its third real request"
    server.get("/conn")
    wait_until(lambda: server.worker_pids() and server.worker_pids()[0] not in pids, 15, what="a restart")


def test_warm_up_off_and_failing_steps_never_stop_a_worker(gunicorn, mysql_user):
    """configure(warm_up=False) skips it; a step that raises logs a warning and the worker serves."""
    off = gunicorn(CONF.format(url=mysql_user.url(), worker="gunicorn_pool.Worker",
                               extra="gunicorn_pool.configure(warm_up=False)"))  # fmt: skip
    off.start(workers_ready=1)
    assert not WARMED.search(off.log())
    assert off.get("/conn")[0] == 200
    failing = gunicorn(CONF.format(url=mysql_user.url(), worker="gunicorn_pool.Worker", extra=(
        "import gunicorn_pool.warmup as w\n"
        "def broken(worker, timeout):\n"
        "    raise OSError('synthetic failure')\n"
        "w._http_round = broken\n")))  # fmt: skip
    failing.start(workers_ready=1)
    assert "warm-up step http failed (the worker serves anyway): synthetic failure" in failing.log()
    assert WARMED.search(failing.log())  # the other steps still ran
    assert failing.get("/conn")[0] == 200


def test_pool_warm_uses_each_idle_connection_and_drops_dead_ones(mysql_user):
    """ConnectionPool.warm(): one use per idle connection, not counted; a KILLed one is dropped."""
    db = DatabasePool({"default": mysql_user.config(min_size=3, max_size=3)})
    db.init_pool()
    try:
        pool = db.pool()
        mysql_user.kill(mysql_user.connection_ids()[0])
        wait_until(lambda: mysql_user.count() == 2, 5, what="the KILL")
        assert db.warm_pool() == 2
        stats = pool.stats()
        assert stats["requests_num"] == 0 and stats["pool_size"] == 2 and stats["pool_available"] == 2, stats
        with pool.connection() as conn:  # the pool still serves, and grows back on demand
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    finally:
        db.close_pool()
