"""Fault injection against real gunicorn and a real database server, MySQL and PostgreSQL.

Each test is one row of the failure table (see docs/failure.md): the fault is
made for real (tests/proxy.py refuses, blackholes or cuts TCP; the server
ends sessions with KILL CONNECTION or pg_terminate_backend(); a worker is
SIGKILLed), and the test checks what a user of the server sees. Every test
runs once per server (the ``backend`` fixture, tests/backends.py; the test id
names it). Measured figures are printed as ``FIGURE ...`` lines (``pytest -s``
shows them).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from support import (
    WORKER_CLASSES,
    assert_no_secret,
    figure,
    poll_until_ok,
    pool_conf,
    refuse_during_respawns,
    wait_until,
)


def test_db_refused_while_workers_respawn(backend, db_user, db_proxy, gunicorn):
    """Respawns (max_requests=3) while connects are refused: the master lives, service heals."""
    pools = {"default": db_user.config(port=db_proxy.port)}
    server = gunicorn(pool_conf(pools, extra="max_requests = 3"), app=backend.app)
    server.start(workers_ready=2)
    assert server.get("/conn")[0] == 200
    respawns = refuse_during_respawns(server, db_proxy, 14)
    assert respawns >= 3, f"only {respawns} respawns during the outage"
    assert "warm-up failed, will connect on demand" in server.log()
    db_proxy.forward()
    healed = poll_until_ok(server, "/conn", limit=backend.heal_limit, streak=10)
    figure(f"{backend.figure}refused: 10 straight 200s after the DB returned", healed)
    assert server.alive()
    assert backend.refused in server.log()
    assert_no_secret(server, db_user.password)


@pytest.mark.parametrize("kind", list(WORKER_CLASSES))
def test_kill_every_pooled_connection(backend, db_user, gunicorn, kind):
    """The server ends every pooled session (KILL CONNECTION, pg_terminate_backend()): the next
    20 requests all succeed, none on an ended session."""
    if backend.blocking and kind == "gevent":
        pytest.skip("gevent workers refuse mysqlclient (test_mysqlclient.py::test_gevent_worker_refuses_mysqlclient)")
    server = gunicorn(pool_conf({"default": db_user.config()}, kind=kind), app=backend.app)
    server.start(workers_ready=2)
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    killed = set(db_user.session_ids())
    assert len(killed) == 2
    assert db_user.kill_all() == 2
    wait_until(lambda: not killed & set(db_user.session_ids()), 5, what=f"sessions ended by {backend.kill}")
    results = [server.get("/conn") for _ in range(20)]
    bad = [r for r in results if r[0] != 200]
    assert not bad, bad
    assert not killed & {body[backend.session] for _, body in results}
    assert "dropping dead connection" in server.log()
    assert_no_secret(server, db_user.password)


def test_sigkill_of_a_worker(backend, db_user, gunicorn):
    """SIGKILL of a worker: the server-side count is back to W, with a new session."""
    workers = 3
    server = gunicorn(pool_conf({"default": db_user.config()}, workers=workers), app=backend.app)
    server.start(workers_ready=workers)
    wait_until(lambda: db_user.count() == workers, 10, what="W sessions")
    before = set(db_user.session_ids())
    victim = server.worker_pids()[0]
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        ids = set(db_user.session_ids())
        return len(ids) == workers and ids != before

    wait_until(replaced, backend.heal_limit, what="count back to W with a new session")
    figure(f"{backend.figure}SIGKILL: count back to W", time.monotonic() - start)
    assert victim not in server.worker_pids()
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    assert db_user.count() == workers
    assert_no_secret(server, db_user.password)


def test_blackholed_db_at_boot(backend, db_user, db_proxy, gunicorn):
    """A server that accepts and never answers: the first answer within connect_timeout (a
    fraction: psycopg alone would wait 2 s), 502, then service once it answers again."""
    timeout = 1.5
    db_proxy.blackhole()
    pools = {"default": db_user.config(port=db_proxy.port, connect_timeout=timeout)}
    server = gunicorn(pool_conf(pools), app=backend.app)
    server.start()
    start = time.monotonic()
    status, body = server.get("/conn", timeout=30)
    first = time.monotonic() - start
    figure(f"{backend.figure}blackhole: first HTTP answer after the request was sent", first)
    assert status == 502 and body["error"] == "ConnectError", body
    assert first < timeout + 5
    assert backend.timed_out.format(timeout=timeout) in server.log()
    db_proxy.forward()
    healed = poll_until_ok(server, "/conn", limit=10.0, streak=10)
    figure(f"{backend.figure}blackhole: 10 straight 200s after the blackhole lifted", healed)
    assert server.alive()
    assert_no_secret(server, db_user.password)


def test_preload_app_querying_at_import(backend, db_user, gunicorn):
    """--preload with a query at import: workers never use the master's session."""
    workers = 3
    # The pool service is registered by the app module itself, in the master.
    preload_conf = f"worker_class = 'gunicorn_pool.Worker'\nworkers = {workers}\npreload_app = True\n"
    server = gunicorn(preload_conf, app=backend.preload_app, env={"GP_PRELOAD_URL": db_user.url()})
    server.start(workers_ready=workers)
    status, master = server.get("/master")
    assert status == 200, master
    assert master["import_pid"] == server.pid, "the app was not imported in the master"
    seen: dict[int, set[int]] = {}
    errors = []
    # Sync workers race for each connection and one may win most of them: ask until every worker
    # answered (at least 90 requests, at most 600) instead of counting on a fair spread.
    for asked in range(600):
        if asked >= 90 and len(seen) == workers:
            break
        status, body = server.get("/conn")
        if status != 200:
            errors.append(body)
            continue
        seen.setdefault(body["pid"], set()).add(body[backend.session])
    assert not errors, errors[:3]
    assert len(seen) == workers, seen
    assert all(len(ids) == 1 for ids in seen.values()), seen
    used = {next(iter(ids)) for ids in seen.values()}
    assert len(used) == workers, "two workers shared a session"
    assert master[backend.session] not in used, "a worker used the master's session"
    # The children dropped their inherited copy without a word to the server: the master's session lives on.
    assert master[backend.session] in db_user.session_ids()
    assert server.log().count(f"inherited from pid {server.pid}") == workers
    assert_no_secret(server, db_user.password)


def test_wrong_password_beside_healthy_pool(backend, checked_login, gunicorn):
    """On a server that checks passwords, one pool with a wrong password: the master lives, the
    bad pool's error is logged within 5 s, the other pool serves, neither password is logged."""
    login = checked_login
    wrong = "wrong-" + login.password[3:]
    pools = {"default": login.config(), "bad": login.config(password=wrong)}
    server = gunicorn(pool_conf(pools), app=backend.app)
    start = time.monotonic()
    server.start()
    server.wait_log("pool bad (", timeout=30)
    figure(f"{backend.figure}wrong password: first error logged after gunicorn was started", time.monotonic() - start)
    assert time.monotonic() - start < 5 + 3  # + gunicorn's own start-up on a busy box
    server.wait_log("pool service(s) ready", count=2)
    opened = [line for line in server.log().splitlines() if "pool default (" in line and "opened 1 conn" in line]
    assert len(opened) == 2, "the healthy pool did not open in every worker"
    t = time.monotonic()
    status, body = server.get("/q/bad")
    figure(f"{backend.figure}wrong password: error answer to a request", time.monotonic() - t)
    assert status == 502 and body["error"] == "ConnectError", body
    assert time.monotonic() - t < 5
    for _ in range(10):
        status, body = server.get("/q/default")
        assert status == 200, body
    assert server.alive()
    log = server.log()
    assert "pool bad (" in log and backend.auth_error in log
    assert f"{backend.adapter}://{login.name}:***@" in log
    assert_no_secret(server, login.password, wrong)


@pytest.mark.parametrize("where", ["dict", "url"])
def test_typo_in_pool_option_refuses_startup(backend, db_user, gunicorn, where):
    """A misspelled option stops gunicorn at start-up, naming the option and the pool."""
    if where == "dict":
        pools: dict[str, Any] = {"default": db_user.config(max_sise=4)}
    else:
        pools = {"default": db_user.url(max_sise=4)}
    server = gunicorn(pool_conf(pools), app=backend.app)
    server.start(wait=False)
    assert server.proc is not None
    code = server.proc.wait(30)
    figure("typo: gunicorn exit code", code, "")
    assert code != 0
    log = server.log()
    assert "unknown option 'max_sise'" in log and "pool 'default'" in log, log[-2000:]
    assert_no_secret(server, db_user.password)
