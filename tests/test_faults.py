"""Fault injection against real gunicorn and the real MariaDB.

Each test is one row of the failure table (see docs/failure.md): the fault is
made for real (tests/proxy.py refuses, blackholes or cuts TCP; the server
KILLs sessions; a worker is SIGKILLed), and the test checks what a user of
the server sees. Measured figures are printed as ``FIGURE ...`` lines
(``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from support import assert_no_secret, figure, poll_until_ok, pool_conf, wait_until

pytestmark = pytest.mark.mysql

APP = "faults_app:app"


def test_db_refused_while_workers_respawn(mysql_user, tcp_proxy, gunicorn):
    """Respawns (max_requests=3) while connects are refused: master lives, heals within 5 s."""
    pools = {"default": mysql_user.config(port=tcp_proxy.port)}
    server = gunicorn(pool_conf(pools, extra="max_requests = 3"), app=APP)
    server.start(workers_ready=2)
    assert server.get("/conn")[0] == 200
    tcp_proxy.refuse()
    tcp_proxy.cut()
    boots_before = server.log().count("Booting worker")
    statuses = []
    for _ in range(14):
        status, body = server.get("/conn", timeout=15)
        statuses.append(status)
        assert server.alive(), server.log()[-3000:]
        assert status in (500, 502), body  # the DB is really gone; never a hang
    respawns = server.log().count("Booting worker") - boots_before
    assert respawns >= 3, f"only {respawns} respawns during the outage"
    assert "warm-up failed, will connect on demand" in server.log()
    tcp_proxy.forward()
    healed = poll_until_ok(server, "/conn", limit=5.0, streak=10)
    figure("refused: 10 straight 200s after the DB returned", healed)
    assert server.alive()
    assert "Connection refused" in server.log()
    assert_no_secret(server, mysql_user.password)


WORKER_KINDS = {
    "sync": ("gunicorn_pool.Worker", ""),
    "gthread": ("gunicorn_pool.ThreadWorker", "threads = 4"),
    "gevent": ("gunicorn_pool.GeventWorker", ""),
}


@pytest.mark.parametrize("kind", list(WORKER_KINDS))
def test_kill_every_pooled_connection(mysql_user, gunicorn, kind):
    """KILL CONNECTION of every pooled session: the next 20 requests all succeed."""
    worker, extra = WORKER_KINDS[kind]
    server = gunicorn(pool_conf({"default": mysql_user.config()}, worker=worker, extra=extra), app=APP)
    server.start(workers_ready=2)
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    killed = set(mysql_user.connection_ids())
    assert len(killed) == 2
    assert mysql_user.kill_all() == 2
    results = [server.get("/conn") for _ in range(20)]
    bad = [r for r in results if r[0] != 200]
    assert not bad, bad
    assert not killed & {body["conn_id"] for _, body in results}
    assert "dropping dead connection" in server.log()
    assert_no_secret(server, mysql_user.password)


def test_sigkill_of_a_worker(mysql_user, gunicorn):
    """SIGKILL of a worker: the server-side count is back to W within 5 s."""
    workers = 3
    server = gunicorn(pool_conf({"default": mysql_user.config()}, workers=workers), app=APP)
    server.start(workers_ready=workers)
    wait_until(lambda: mysql_user.count() == workers, 10, what="W connections")
    before = set(mysql_user.connection_ids())
    victim = server.worker_pids()[0]
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        ids = set(mysql_user.connection_ids())
        return len(ids) == workers and ids != before

    wait_until(replaced, 5, what="count back to W with a new session")
    figure("SIGKILL: count back to W", time.monotonic() - start)
    assert victim not in server.worker_pids()
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    assert mysql_user.count() == workers
    assert_no_secret(server, mysql_user.password)


def test_blackholed_db_at_boot(mysql_user, tcp_proxy, gunicorn):
    """A server that accepts and never answers: bounded by connect_timeout, heals after."""
    timeout = 2.0
    tcp_proxy.blackhole()
    pools = {"default": mysql_user.config(port=tcp_proxy.port, connect_timeout=timeout)}
    server = gunicorn(pool_conf(pools), app=APP)
    server.start()
    start = time.monotonic()
    status, body = server.get("/conn", timeout=30)
    first = time.monotonic() - start
    figure("blackhole: first HTTP answer after the request was sent", first)
    assert status == 502 and body["error"] == "ConnectError", body
    assert first < timeout + 5
    assert "timed out" in server.log()
    tcp_proxy.forward()
    healed = poll_until_ok(server, "/conn", limit=10.0, streak=10)
    figure("blackhole: 10 straight 200s after the blackhole lifted", healed)
    assert server.alive()
    assert_no_secret(server, mysql_user.password)


def test_preload_app_querying_at_import(mysql_user, gunicorn):
    """--preload with a query at import: workers never use the master's connection."""
    workers = 3
    # The pool service is registered by the app module itself, in the master.
    preload_conf = f"worker_class = 'gunicorn_pool.Worker'\nworkers = {workers}\npreload_app = True\n"
    server = gunicorn(preload_conf, app="preload_app:app", env={"GP_PRELOAD_URL": mysql_user.url()})
    server.start(workers_ready=workers)
    status, master = server.get("/master")
    assert status == 200
    assert master["import_pid"] == server.pid, "the app was not imported in the master"
    seen: dict[int, set[int]] = {}
    errors = []
    for _ in range(90):
        status, body = server.get("/conn")
        if status != 200:
            errors.append(body)
            continue
        seen.setdefault(body["pid"], set()).add(body["conn_id"])
    assert not errors, errors[:3]
    assert len(seen) == workers, seen
    assert all(len(ids) == 1 for ids in seen.values()), seen
    used = {next(iter(ids)) for ids in seen.values()}
    assert len(used) == workers, "two workers shared a connection"
    assert master["conn_id"] not in used, "a worker used the master's connection"
    # The children dropped their inherited copy without COM_QUIT: the master's session lives on.
    assert master["conn_id"] in mysql_user.connection_ids()
    assert server.log().count(f"inherited from pid {server.pid}") == workers
    assert_no_secret(server, mysql_user.password)


def test_wrong_password_beside_healthy_pool(mysql_user, gunicorn):
    """One pool with a wrong password: master alive, error within 5 s, the other pool serves."""
    wrong = "wrong-" + mysql_user.password[3:]
    pools = {"default": mysql_user.config(), "bad": mysql_user.config(password=wrong)}
    server = gunicorn(pool_conf(pools), app=APP)
    start = time.monotonic()
    server.start()
    server.wait_log("pool bad (", timeout=30)
    figure("wrong password: first error logged after gunicorn was started", time.monotonic() - start)
    assert time.monotonic() - start < 5 + 3  # + gunicorn's own start-up on a busy box
    server.wait_log("pool service(s) ready", count=2)
    opened = [line for line in server.log().splitlines() if "pool default (" in line and "opened 1 conn" in line]
    assert len(opened) == 2, "the healthy pool did not open in every worker"
    t = time.monotonic()
    status, body = server.get("/q/bad")
    figure("wrong password: error answer to a request", time.monotonic() - t)
    assert status == 502 and body["error"] == "ConnectError", body
    assert time.monotonic() - t < 5
    for _ in range(10):
        status, body = server.get("/q/default")
        assert status == 200, body
    assert server.alive()
    log = server.log()
    assert "pool bad (" in log and "Access denied for user" in log
    assert f"mysql://{mysql_user.name}:***@" in log
    assert_no_secret(server, mysql_user.password, wrong)


@pytest.mark.parametrize("where", ["dict", "url"])
def test_typo_in_pool_option_refuses_startup(mysql_user, gunicorn, where):
    """A misspelled option stops gunicorn at start-up, naming the option and the pool."""
    if where == "dict":
        pools: dict[str, Any] = {"default": mysql_user.config(max_sise=4)}
    else:
        pools = {"default": mysql_user.url(max_sise=4)}
    server = gunicorn(pool_conf(pools), app=APP)
    server.start(wait=False)
    assert server.proc is not None
    code = server.proc.wait(30)
    figure("typo: gunicorn exit code", code, "")
    assert code != 0
    log = server.log()
    assert "unknown option 'max_sise'" in log and "pool 'default'" in log, log[-2000:]
    assert_no_secret(server, mysql_user.password)
