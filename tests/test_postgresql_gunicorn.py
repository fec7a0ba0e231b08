"""The PostgreSQL adapter in real gunicorn servers: one pool per worker, opened at boot, and the
rows of the failure table (docs/failure.md) made for real against PostgreSQL.

Sessions are counted in pg_stat_activity for a login of the test's own
(``pg_user``); faults come from tests/proxy.py (refuse, blackhole),
pg_terminate_backend and SIGKILL. Measured figures are printed as
``FIGURE ...`` lines (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from typing import Any

import pytest
import servers
from support import WORKER_CLASSES, assert_no_secret, figure, poll_until_ok, pool_conf, wait_until

pytestmark = pytest.mark.postgresql

pg_scram = servers.pg_scram  # a server that checks passwords (the machine's trusts every login)

APP = "pg_app:app"
KINDS = list(WORKER_CLASSES)


def pg_config(user: Any, **extra: Any) -> dict[str, Any]:
    """The dict form of a pool of *user*, with the ``pgsql`` spelling of the adapter."""
    config = user.config(**extra)
    config["adapter"] = "pgsql"
    return config


@pytest.mark.parametrize("kind", KINDS)
def test_each_worker_opens_its_own_session_before_the_first_request(pg_user, gunicorn, kind):
    workers = 3
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, kind=kind, workers=workers), app=APP)
    server.start(workers_ready=workers)
    # Exactly W server sessions before any request.
    wait_until(lambda: pg_user.count() == workers, 10, what="W sessions")
    before = set(pg_user.backend_pids())
    assert len(server.worker_pids()) == workers
    seen: dict[int, set[int]] = {}
    for _ in range(60):
        status, body = server.get("/conn")
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body["backend_pid"])
    assert all(len(backends) == 1 for backends in seen.values()), seen  # each worker on its own session
    used = [next(iter(backends)) for backends in seen.values()]
    assert len(set(used)) == len(used), "two workers shared a session"
    assert set(used) <= before, "a request opened a session the boot did not"
    assert pg_user.count() == workers
    code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()[-2000:]
    wait_until(lambda: pg_user.count() == 0, 5, what="0 sessions after SIGTERM")
    log = server.log()
    assert log.count("opened 1 connection(s)") == workers
    assert f"postgresql://{pg_user.name}:***@" in log
    assert_no_secret(server, pg_user.password)


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_a_kept_reference_used_in_a_later_request_fails_without_touching_the_session(pg_user, gunicorn, kind):
    server = gunicorn(pool_conf({"default": pg_config(pg_user, max_size=1, timeout=2)}, kind=kind, workers=1),
                      app=APP)  # fmt: skip
    server.start(workers_ready=1)
    status, kept = server.get("/keep")
    assert status == 200, kept
    for _ in range(5):
        status, body = server.get("/use-kept")
        assert status == 500 and body["error"] == "LeaseError", body
        status, body = server.get("/conn")
        assert status == 200 and body["backend_pid"] == kept["backend_pid"], body


# -- faults ---------------------------------------------------------------------------------------


def test_server_refused_while_workers_respawn(pg_user, pg_proxy, gunicorn):
    """Respawns (max_requests=3) while connects are refused: the master lives, service heals."""
    server = gunicorn(pool_conf({"default": pg_config(pg_user, port=pg_proxy.port)}, extra="max_requests = 3"),
                      app=APP)  # fmt: skip
    server.start(workers_ready=2)
    assert server.get("/conn")[0] == 200
    pg_proxy.refuse()
    pg_proxy.cut()
    boots_before = server.log().count("Booting worker")
    for _ in range(14):
        status, body = server.get("/conn", timeout=15)
        assert server.alive(), server.log()[-3000:]
        assert status in (500, 502), body  # the server is really gone; never a hang
    assert server.log().count("Booting worker") - boots_before >= 3
    assert "warm-up failed, will connect on demand" in server.log()
    pg_proxy.forward()
    # Slower to heal than MySQL's 5 s limit allows on a busy machine: a worker respawns every 3
    # requests here and each one imports psycopg itself (0.35 s on this machine; gunicorn-pool never
    # imports it in the master, where gevent has not patched yet).
    healed = poll_until_ok(server, "/conn", limit=10.0, streak=10)
    figure("pg refused: 10 straight 200s after the server returned", healed)
    assert server.alive() and "Connection refused" in server.log()
    assert_no_secret(server, pg_user.password)


@pytest.mark.parametrize("kind", KINDS)
def test_pg_terminate_backend_of_every_pooled_session(pg_user, gunicorn, kind):
    """pg_terminate_backend() of every pooled session: the next 20 requests all succeed."""
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, kind=kind), app=APP)
    server.start(workers_ready=2)
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    terminated = set(pg_user.backend_pids())
    assert len(terminated) == 2
    assert pg_user.terminate_all() == 2
    wait_until(lambda: not terminated & set(pg_user.backend_pids()), 5, what="sessions terminated")
    results = [server.get("/conn") for _ in range(20)]
    assert not [r for r in results if r[0] != 200], results
    assert not terminated & {body["backend_pid"] for _, body in results}
    assert "dropping dead connection" in server.log()
    assert_no_secret(server, pg_user.password)


def test_sigkill_of_a_worker_brings_the_count_back_to_w(pg_user, gunicorn):
    workers = 3
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, workers=workers), app=APP)
    server.start(workers_ready=workers)
    wait_until(lambda: pg_user.count() == workers, 10, what="W sessions")
    before = set(pg_user.backend_pids())
    victim = server.worker_pids()[0]
    start = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        pids = set(pg_user.backend_pids())
        return len(pids) == workers and pids != before

    wait_until(replaced, 10, what="count back to W with a new session")
    figure("pg SIGKILL: count back to W", time.monotonic() - start)
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    assert pg_user.count() == workers
    assert_no_secret(server, pg_user.password)


def test_blackholed_server_at_boot_is_bounded_by_connect_timeout(pg_user, pg_proxy, gunicorn):
    """A server that accepts and never answers: the first answer within connect_timeout (a
    fraction: psycopg alone would wait 2 s), 502, then service once it answers again."""
    timeout = 1.5
    pg_proxy.blackhole()
    pools = {"default": pg_config(pg_user, port=pg_proxy.port, connect_timeout=timeout)}
    server = gunicorn(pool_conf(pools), app=APP)
    server.start()
    start = time.monotonic()
    status, body = server.get("/conn", timeout=30)
    first = time.monotonic() - start
    figure("pg blackhole: first HTTP answer after the request was sent", first)
    assert status == 502 and body["error"] == "ConnectError", body
    assert first < timeout + 5
    assert "timed out after 1.5s" in server.log()
    pg_proxy.forward()
    healed = poll_until_ok(server, "/conn", limit=10.0, streak=10)
    figure("pg blackhole: 10 straight 200s after the blackhole lifted", healed)
    assert server.alive()
    assert_no_secret(server, pg_user.password)


def test_preload_app_querying_at_import_never_lends_the_masters_session(pg_user, gunicorn):
    workers = 3
    conf = f"worker_class = 'gunicorn_pool.Worker'\nworkers = {workers}\npreload_app = True\n"
    server = gunicorn(conf, app="pg_preload_app:app", env={"GP_PRELOAD_URL": pg_user.url()})
    server.start(workers_ready=workers)
    status, master = server.get("/master")
    assert status == 200 and master["import_pid"] == server.pid, master
    seen: dict[int, set[int]] = {}
    for _ in range(90):
        status, body = server.get("/conn")
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body["backend_pid"])
    assert len(seen) == workers and all(len(b) == 1 for b in seen.values()), seen
    used = {next(iter(b)) for b in seen.values()}
    assert len(used) == workers, "two workers shared a session"
    assert master["backend_pid"] not in used, "a worker used the master's session"
    # The workers dropped their inherited copy without a word: the master's session lives on.
    assert master["backend_pid"] in pg_user.backend_pids()
    assert server.log().count(f"inherited from pid {server.pid}") == workers
    assert_no_secret(server, pg_user.password)


def test_wrong_password_beside_a_healthy_pool(pg_scram, gunicorn):
    """On a server that checks passwords: the master lives, the bad pool's error is logged
    within seconds, the healthy pool serves, and neither password reaches the log."""
    login = pg_scram.create_user(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    wrong = "wrong-" + login.password[3:]
    pools = {"default": pg_config(login), "bad": pg_config(login, password=wrong)}
    server = gunicorn(pool_conf(pools), app=APP)
    start = time.monotonic()
    server.start()
    server.wait_log("pool bad (", timeout=30)
    figure("pg wrong password: first error logged after gunicorn was started", time.monotonic() - start)
    assert time.monotonic() - start < 5 + 3
    server.wait_log("pool service(s) ready", count=2)
    t = time.monotonic()
    status, body = server.get("/q/bad")
    assert status == 502 and body["error"] == "ConnectError", body
    assert time.monotonic() - t < 5
    for _ in range(10):
        status, body = server.get("/q/default")
        assert status == 200, body
    assert server.alive()
    log = server.log()
    assert "password authentication failed" in log and f"postgresql://{login.name}:***@" in log
    assert_no_secret(server, login.password, wrong)
