"""boot policy (strict), pools closed on every exit path, secrets kept out.

Real gunicorn, real MariaDB; the DB faults come from tests/proxy.py. The
last tests are unit tests of repr()/str() of configs, pools and errors.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from support import (
    admin_connect,
    assert_no_secret,
    figure,
    free_port,
    poll_until_ok,
    pool_conf,
    refuse_during_respawns,
    wait_until,
)

import gunicorn_pool
from gunicorn_pool import ConnectError, ConnectionPool, DatabasePool, PoolStartupError, parse_config
from gunicorn_pool.connectors import make_connector
from gunicorn_pool.errors import ConfigError

pytestmark = pytest.mark.mysql

APP = "faults_app:app"


# -- strict boot policy ------------------------------------------------------------


def test_strict_pool_fails_the_first_start(mysql_user, gunicorn):
    """strict=True and no server on the first start: the master exits non-zero, naming the pool."""
    pools = {"orders": mysql_user.config(port=free_port(), strict=True)}  # nothing listens there
    server = gunicorn(pool_conf(pools), app=APP)
    start = time.monotonic()
    server.start(wait=False)
    assert server.proc is not None
    code = server.proc.wait(30)
    figure("strict: master exited after", time.monotonic() - start)
    assert code != 0
    log = server.log()
    assert "pool 'orders'" in log and "strict pool, first start" in log and "Connection refused" in log, log[-2000:]
    assert "Worker failed to boot" in log or code == 1  # gunicorn's HaltServer (or its exit-1 race)
    assert_no_secret(server, mysql_user.password)


def test_strict_pool_does_not_halt_a_respawn(mysql_user, tcp_proxy, gunicorn):
    """A strict pool whose DB dies later: respawned workers (max_requests) boot anyway."""
    pools = {"default": mysql_user.config(port=tcp_proxy.port, strict=True)}
    server = gunicorn(pool_conf(pools, extra="max_requests = 2"), app=APP)
    server.start(workers_ready=2)
    assert server.get("/conn")[0] == 200
    assert refuse_during_respawns(server, tcp_proxy, 10) >= 3
    assert "warm-up failed, will connect on demand" in server.log()
    assert "strict pool, first start" not in server.log()
    tcp_proxy.forward()
    figure("strict respawn: 5 straight 200s after the DB returned", poll_until_ok(server, "/conn", 5.0, streak=5))
    assert server.alive()
    assert_no_secret(server, mysql_user.password)


# -- every exit path closes the worker's pools ----------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT], ids=["SIGQUIT", "SIGINT"])
def test_quick_shutdown_closes_pools(mysql_user, gunicorn, sig):
    workers = 2
    server = gunicorn(pool_conf({"default": mysql_user.config()}, workers=workers), app=APP)
    server.start(workers_ready=workers)
    wait_until(lambda: mysql_user.count() == workers, 10, what="W connections")
    for _ in range(6):
        assert server.get("/conn")[0] == 200
    start = time.monotonic()
    assert server.stop(sig) == 0
    wait_until(lambda: mysql_user.count() == 0, 5, what="no session left")
    figure(f"{signal.Signals(sig).name}: sessions gone after", time.monotonic() - start)
    # Closed by the workers themselves (COM_QUIT), not only reaped by the kernel.
    assert server.log().count("closed 1 connection(s)") == workers
    assert_no_secret(server, mysql_user.password)


def test_max_requests_closes_pools(mysql_user, gunicorn):
    workers = 2
    server = gunicorn(pool_conf({"default": mysql_user.config()}, workers=workers, extra="max_requests = 4"), app=APP)
    server.start(workers_ready=workers)
    used = set()
    for _ in range(30):
        status, body = server.get("/conn")
        assert status == 200, body
        used.add(body["conn_id"])
    recycles = server.log().count("Autorestarting worker")
    assert recycles >= 5
    wait_until(lambda: server.log().count("closed 1 connection(s)") >= recycles, 5, what="every recycled pool closed")
    wait_until(lambda: mysql_user.count() == workers, 5, what="count back to W")
    live = set(mysql_user.connection_ids())
    assert len(used - live) >= recycles - workers, "sessions of exited workers are still open"
    assert server.stop() == 0
    wait_until(lambda: mysql_user.count() == 0, 5, what="no session left")
    assert_no_secret(server, mysql_user.password)


def test_sighup_closes_old_pools(mysql_user, gunicorn):
    """SIGHUP: new workers first (the count may double), then the old ones close their pools."""
    workers = 2
    server = gunicorn(pool_conf({"default": mysql_user.config()}, workers=workers), app=APP)
    server.start(workers_ready=workers)
    wait_until(lambda: mysql_user.count() == workers, 10, what="W connections")
    before = set(mysql_user.connection_ids())
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        conn = admin_connect()
        try:
            while not done.is_set():
                peak[0] = max(peak[0], _count(conn, mysql_user.name))
                done.wait(0.01)
        finally:
            conn.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    server.send_signal(signal.SIGHUP)

    def settled() -> bool:
        ids = set(mysql_user.connection_ids())
        return len(ids) == workers and not ids & before

    try:
        wait_until(settled, 15, what="old sessions closed, W new ones")
    finally:
        done.set()
        sampler.join(5)
    figure("SIGHUP: back to W new sessions after", time.monotonic() - start)
    figure("SIGHUP: peak sessions", peak[0], "sessions")
    assert peak[0] <= 2 * workers
    assert server.log().count("closed 1 connection(s)") == workers
    assert server.get("/conn")[0] == 200
    assert server.alive()
    assert_no_secret(server, mysql_user.password)


def _count(conn, user: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        return cur.fetchone()[0]


# -- secrets ---------------------------------------------------------------------------------


def test_password_env_and_password_file(mysql_user, gunicorn, tmp_path):
    secret = tmp_path / "db-password"
    secret.write_text(mysql_user.password + "\n")
    base = mysql_user.config()
    del base["password"]
    pools = {"default": dict(base, password_env="GP_FAULTS_DB_PW"), "filed": dict(base, password_file=str(secret))}
    server = gunicorn(pool_conf(pools), app=APP, env={"GP_FAULTS_DB_PW": mysql_user.password})
    server.start(workers_ready=2)
    for path in ("/q/default", "/q/filed") * 3:
        status, body = server.get(path)
        assert status == 200, body
    assert server.log().count(f"mysql://{mysql_user.name}:***@") >= 4
    assert_no_secret(server, mysql_user.password)


def test_reprs_and_errors_never_show_the_password(mysql_user):
    secret = mysql_user.password
    wrong = "wrong-" + secret[3:]
    url = mysql_user.url()
    cfg = parse_config("default", url)
    db = DatabasePool({"default": url, "other": mysql_user.config(password=wrong)}, name="db")
    pool = db.pool("default")
    texts = [repr(cfg), str(cfg), cfg.dsn, repr(db), str(db), repr(pool), str(pool), repr(db.configs)]
    # A real failed login: the server's error names the user, never the password.
    bad = ConnectionPool(make_connector(parse_config("bad", mysql_user.config(password=wrong))), name="bad")
    with pytest.raises(ConnectError) as failed:
        bad.open()
    assert "Access denied" in str(failed.value)
    texts += [str(failed.value), repr(failed.value), repr(bad)]
    # Config errors quote the URL masked.
    for broken in (url.replace("mysql://", "oracle://"), url.replace(":3306", ":port"), url + "?max_sise=1"):
        with pytest.raises(ConfigError) as error:
            parse_config("default", broken)
        texts += [str(error.value), repr(error.value)]
    texts.append(str(PoolStartupError(f"{failed.value} (strict pool, first start)")))
    texts.append(gunicorn_pool.mask_dsn(url))
    for text in texts:
        assert secret not in text and wrong not in text, text
    pool.close()
    db.close_pool()
