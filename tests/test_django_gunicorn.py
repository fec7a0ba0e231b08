"""A small Django project (tests/apps/djangoproj) in real gunicorn workers, on real MariaDB and PostgreSQL.

The project's settings come from GP_DJ_* variables (see its settings.py); its
table is the test's scratch table. Each test has its own login, so the
server-side session counts are exactly the test's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional

import pytest
from support import (
    APPS,
    MYSQL_DB,
    MYSQL_HOST,
    MYSQL_PORT,
    PG_DB,
    PG_HOST,
    PG_PORT,
    ROOT,
    concurrent_with_peak,
    wait_until,
)

from gunicorn_pool.stats import KEYS as STATS_KEYS

APP = "djangoproj.wsgi:application"
CONF = """
import gunicorn_pool
gunicorn_pool.configure(stats_interval=0.5)
worker_class = {worker!r}
workers = {workers}
{extra}
"""
WORKERS = {"sync": ("gunicorn_pool.Worker", ""), "gthread": ("gunicorn_pool.ThreadWorker", "threads = 4"),
           "gevent": ("gunicorn_pool.GeventWorker", "")}  # fmt: skip


def conf(kind: str = "sync", workers: int = 2, extra: str = "") -> str:
    worker, kind_extra = WORKERS[kind]
    return CONF.format(worker=worker, workers=workers, extra="\n".join(x for x in (kind_extra, extra) if x))


def mysql_env(user: Any, table: str, pool: Optional[dict[str, Any]] = None, **extra: str) -> dict[str, str]:
    env = {"DJANGO_SETTINGS_MODULE": "djangoproj.settings", "GP_DJ_ENGINE": "ours", "GP_DJ_NAME": MYSQL_DB,
           "GP_DJ_USER": user.name, "GP_DJ_PASSWORD": user.password, "GP_DJ_HOST": MYSQL_HOST,
           "GP_DJ_PORT": str(MYSQL_PORT), "GP_DJ_TABLE": table}  # fmt: skip
    if pool is not None:
        env["GP_DJ_POOL"] = json.dumps(pool)
    env.update(extra)
    return env


def get(server: Any, path: str, timeout: float = 20.0) -> tuple[int, Any]:
    """GET *path*: (status, JSON body, or the text of a non-JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("latin1")


def rows(table: str) -> int:
    from support import admin_connect

    with admin_connect().cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def stop_and_check_no_session(server: Any, user: Any) -> None:
    assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    wait_until(lambda: user.count() == 0, 10, what="no session left after SIGTERM")
    assert user.password not in server.log()


# -- MySQL: our backend ----------------------------------------------------------------------------


DRIVERS = ["pymysql", "mysqlclient"]


@pytest.mark.mysql
@pytest.mark.parametrize("driver", DRIVERS)
def test_sync_workers_open_their_sessions_before_the_first_request_and_close_them_at_exit(
    gunicorn, mysql_user, scratch_table, driver
):
    env = mysql_env(mysql_user, scratch_table, {"driver": driver})
    server = gunicorn(conf("sync", workers=2), app=APP, env=env)
    check_two_sync_workers(server, mysql_user, "mysql")


def check_two_sync_workers(server: Any, login: Any, scheme: str) -> dict[str, int]:
    """Start *server* (2 sync workers): 2 sessions of *login* before any request, each worker's
    requests on its own session opened at boot, the alias's stats under every pool's names, the
    masked DSN in the log, no session after SIGTERM. Returns the alias's stats."""
    server.start(workers_ready=2)
    wait_until(lambda: login.count() == 2, 10, what="2 sessions before any request")
    before = set(login.session_ids())
    seen: dict[int, set[int]] = {}
    for _ in range(40):
        status, body = get(server, "/conn/")
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body["conn_id"])
    assert all(len(ids) == 1 for ids in seen.values()), seen  # one session per worker, every request
    assert set().union(*seen.values()) <= before, "a request opened a session the boot did not"
    assert login.count() == 2
    status, body = get(server, "/stats/")
    assert status == 200 and set(body["stats"]) == {"default"}
    figures: dict[str, int] = body["stats"]["default"]
    assert list(figures) == list(STATS_KEYS)
    assert figures["pool_max"] == 1 and figures["connections_num"] == 1
    log = server.log()
    assert log.count("opened 1 connection(s)") == 2 and f"{scheme}://{login.name}:***@" in log
    stop_and_check_no_session(server, login)
    return figures


@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_fifty_concurrent_requests_stay_within_max_size(gunicorn, mysql_user, scratch_table, kind):
    """50 requests at once on 2 workers with max_size=3: never more than 3 sessions per worker
    (stock Django under gevent opens one per greenlet); each request succeeds or gets a clean
    503 from PoolErrorMiddleware when the pool's timeout passes."""
    pool = {"max_size": 3, "timeout": 1.5}
    server = gunicorn(conf(kind, workers=2), app=APP, env=mysql_env(mysql_user, scratch_table, pool))
    server.start(workers_ready=2)
    wait_until(lambda: mysql_user.count() == 2, 10, what="min_size sessions per worker")
    results, peak = concurrent_with_peak([lambda: get(server, "/sleep/0.1/", 30)] * 50, mysql_user.count)
    assert len(results) == 50
    statuses = sorted({status for status, _ in results})
    assert set(statuses) <= {200, 503}, results
    assert all("PoolTimeout" in body for status, body in results if status == 503)
    per_pid: dict[int, set[int]] = {}
    for status, body in results:
        if status == 200:
            per_pid.setdefault(body["pid"], set()).add(body["conn_id"])
    assert per_pid and all(len(ids) <= 3 for ids in per_pid.values()), per_pid
    assert peak <= 6, f"{peak} sessions for 2 workers with max_size=3"
    assert sum(status == 200 for status, _ in results) >= 10
    print(f"FIGURE django {kind}: {sum(s == 200 for s, _ in results)} ok, {statuses}, peak {peak} sessions")
    stop_and_check_no_session(server, mysql_user)


@pytest.mark.mysql
def test_pool_timeout_is_a_clean_503(gunicorn, mysql_user, scratch_table):
    """One connection, many greenlets each holding it 0.5 s: those that wait past the pool's
    timeout get 503 with Retry-After (PoolErrorMiddleware), the others 200; none hangs or 500s."""
    server = gunicorn(conf("gevent", workers=1), app=APP,
                      env=mysql_env(mysql_user, scratch_table, {"max_size": 1, "timeout": 0.3}))  # fmt: skip
    server.start(workers_ready=1)
    results: list[tuple[int, Any]] = []
    threads = [threading.Thread(target=lambda: results.append(get(server, "/sleep/0.5/", 30)), daemon=True)
               for _ in range(6)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = [status for status, _ in results]
    assert len(results) == 6 and set(statuses) == {200, 503}, results
    assert all("PoolTimeout" in body for status, body in results if status == 503)
    with pytest.raises(urllib.error.HTTPError) as caught:  # the header, on one more timed-out request
        holders = [threading.Thread(target=get, args=(server, "/sleep/0.8/", 30), daemon=True) for _ in range(2)]
        for t in holders:
            t.start()
        time.sleep(0.2)
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/conn/", timeout=10)
    assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "1"
    for t in holders:
        t.join(30)
    assert mysql_user.count() == 1
    stop_and_check_no_session(server, mysql_user)


@pytest.mark.mysql
@pytest.mark.parametrize("driver", DRIVERS)
def test_transactions_behave_as_django_documents(gunicorn, mysql_user, scratch_table, driver):
    """Autocommit by default (a view that fails after writing keeps the row), atomic() rolls back
    on an exception, and ATOMIC_REQUESTS=True makes the whole view one transaction."""
    pool = {"driver": driver}
    plain = gunicorn(conf("sync", workers=1), app=APP, env=mysql_env(mysql_user, scratch_table, pool)).start(
        workers_ready=1
    )
    assert get(plain, "/atomic-fail/")[0] == 500
    assert rows(scratch_table) == 0
    assert get(plain, "/create-fail/")[0] == 500
    assert rows(scratch_table) == 1  # autocommit: the write before the failure stays
    status, body = get(plain, "/autocommit/")
    assert status == 200 and body["django"] is True and body["session"] == 1 and body["in_atomic"] is False
    stop_and_check_no_session(plain, mysql_user)

    atomic_env = mysql_env(mysql_user, scratch_table, pool, GP_DJ_ATOMIC="1")
    atomic = gunicorn(conf("sync", workers=1), app=APP, env=atomic_env).start(workers_ready=1)
    assert get(atomic, "/create-fail/")[0] == 500
    assert rows(scratch_table) == 1  # the whole view was rolled back
    status, body = get(atomic, "/create/")
    assert status == 200 and body["rows"] == 2
    assert rows(scratch_table) == 2  # committed when the view returned
    status, body = get(atomic, "/autocommit/")
    assert body["django"] is False and body["session"] == 0 and body["in_atomic"] is True
    status, after = get(atomic, "/getvar/")  # the next request: autocommit is the pool's again
    assert status == 200 and after["conn_id"] == body.get("conn_id", after["conn_id"])
    assert mysql_user.count() == 1
    stop_and_check_no_session(atomic, mysql_user)


@pytest.mark.mysql
def test_session_variable_does_not_leak_to_the_next_request(gunicorn, mysql_user, scratch_table):
    server = gunicorn(conf("sync", workers=1), app=APP, env=mysql_env(mysql_user, scratch_table))
    server.start(workers_ready=1)
    status, first = get(server, "/setvar/")
    assert status == 200
    status, second = get(server, "/getvar/")
    assert status == 200 and second["value"] is None, "a session variable reached the next request"
    assert second["conn_id"] == first["conn_id"]  # the same session, reset on return
    status, body = get(server, "/stats/")
    assert body["stats"]["default"]["connections_reset"] >= 1
    stop_and_check_no_session(server, mysql_user)


@pytest.mark.mysql
def test_preload_master_connection_is_never_used_by_workers(gunicorn, mysql_user, scratch_table):
    """--preload and a query while the app loads: the master holds a session; the workers use their
    own, and neither use nor end the master's."""
    env = mysql_env(mysql_user, scratch_table, GP_DJ_QUERY_AT_IMPORT="1")
    server = gunicorn(conf("sync", workers=2), "--preload", app=APP, env=env)
    server.start(workers_ready=2)
    line = next(x for x in server.log().splitlines() if "GP-DJ-IMPORT-CONN" in x)
    master_conn = int(line.rsplit("conn=", 1)[1])
    assert int(line.split("pid=")[1].split()[0]) == server.pid
    wait_until(lambda: mysql_user.count() == 3, 10, what="the master's session + 1 per worker")
    used = set()
    for _ in range(300):  # the kernel may hand many accepts in a row to one worker: ask until both answered
        status, body = get(server, "/conn/")
        assert status == 200, body
        used.add(body["conn_id"])
        if len(used) >= 2 and _ >= 20:
            break
    assert master_conn not in used and len(used) == 2, (master_conn, used)
    assert master_conn in mysql_user.connection_ids(), "a worker ended the master's session"
    stop_and_check_no_session(server, mysql_user)


@pytest.mark.mysql
def test_statsd_reports_each_alias_under_service_django(gunicorn, mysql_user, scratch_table):
    """statsd names; requests_num counts the alias's checkouts, and a sync worker's Django keeps
    its connection across requests: 5 clean requests are at most one checkout."""
    from test_metrics import StatsdListener

    statsd = StatsdListener()
    try:
        server = gunicorn(conf("sync", workers=1), "--statsd-host", f"127.0.0.1:{statsd.port}", app=APP,
                          env=mysql_env(mysql_user, scratch_table))  # fmt: skip
        server.start(workers_ready=1)
        for _ in range(5):
            assert get(server, "/conn/")[0] == 200
        base = "gunicorn_pool.django.default."
        wait_until(lambda: set(statsd.gauges(base + "pool_size")) == {1}, 15, what="pool_size of alias default")
        wait_until(lambda: statsd.counter_sum(base + "requests_num") >= 1, 15, what="requests_num of alias default")
        status, body = get(server, "/stats/")
        assert body["stats"]["default"]["requests_num"] <= 2  # the boot's server-data read, the first request
        stop_and_check_no_session(server, mysql_user)
    finally:
        statsd.close()


@pytest.mark.mysql
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_a_sync_worker_keeps_its_clean_connection_across_requests(gunicorn, mysql_user, scratch_table, kind, driver):
    """Sync: Django keeps the connection lent across requests, as CONN_MAX_AGE=None would: 30
    requests on the boot's session and one checkout for all of them. gthread: one lease per
    request (the pool's connections serve more requests than threads: a request may start
    before the previous one gave its connection back, and take another)."""
    server = gunicorn(conf(kind, workers=1), app=APP, env=mysql_env(mysql_user, scratch_table, {"driver": driver}))
    check_kept_across_requests(server, mysql_user, kind)


def check_kept_across_requests(server: Any, login: Any, kind: str) -> None:
    """Start *server* (one worker of *kind*), send 30 requests: in a sync worker all on the boot's
    session and one checkout for all; otherwise one checkout per request. No session after SIGTERM."""
    server.start(workers_ready=1)
    wait_until(lambda: login.count() == 1, 10, what="the boot's session")
    (boot,) = login.session_ids()
    first = get(server, "/stats/")[1]["stats"]["default"]["requests_num"]
    used = set()
    for _ in range(30):
        status, body = get(server, "/conn/")
        assert status == 200, body
        used.add(body["conn_id"])
    stats = get(server, "/stats/")[1]["stats"]["default"]
    if kind == "sync":
        assert used == {boot}
        assert stats["requests_num"] == first + 1, stats  # the first /conn/ took it; the rest kept it
        assert stats["usage_ms"] < 10_000  # time in requests, not the idle time between them
    else:
        assert stats["requests_num"] >= first + 30, stats
    stop_and_check_no_session(server, login)


@pytest.mark.mysql
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_request_that_leaves_a_transaction_or_a_session_change_gives_the_connection_back(
    gunicorn, mysql_user, scratch_table, driver
):
    """A request that leaves a transaction open, or a session change, ends its lease at its end:
    the next request gets the same session rolled back or reset (one checkout each), never the
    leftover; a clean request after that keeps the connection again."""
    server = gunicorn(conf("sync", workers=1), app=APP, env=mysql_env(mysql_user, scratch_table, {"driver": driver}))
    server.start(workers_ready=1)
    session = get(server, "/conn/")[1]["conn_id"]
    before = get(server, "/stats/")[1]["stats"]["default"]
    status, body = get(server, "/begin/")
    assert status == 200 and body["conn_id"] == session
    status, body = get(server, "/rows/")
    assert status == 200 and body["rows"] == 0, "the open transaction's row reached the next request"
    assert rows(scratch_table) == 0
    assert get(server, "/setvar/")[0] == 200
    status, body = get(server, "/getvar/")
    assert status == 200 and body["value"] is None and body["conn_id"] == session
    after = get(server, "/stats/")[1]["stats"]["default"]
    assert after["requests_num"] == before["requests_num"] + 2  # taken again after /begin/ and /setvar/
    assert after["connections_reset"] >= before["connections_reset"] + 1  # SET @gp_leak: reset
    assert mysql_user.count() == 1
    stop_and_check_no_session(server, mysql_user)


@pytest.mark.mysql
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_killed_session_is_replaced_before_the_next_requests_first_query(
    gunicorn, mysql_user, scratch_table, driver
):
    """The server ends the session a sync worker's Django keeps between requests: the next
    request's first query finds it dead (its socket polled, then pinged), drops it and runs on a
    new session; the request succeeds."""
    server = gunicorn(conf("sync", workers=1), app=APP, env=mysql_env(mysql_user, scratch_table, {"driver": driver}))
    check_a_dead_kept_session_is_replaced(server, mysql_user)


def check_a_dead_kept_session_is_replaced(server: Any, login: Any) -> None:
    """Start *server* (one sync worker), end the session its Django keeps from the server side
    (*login*'s ``kill``): the next request succeeds on a new session, the log says why."""
    server.start(workers_ready=1)
    first = get(server, "/conn/")[1]["conn_id"]
    login.kill(first)
    wait_until(lambda: first not in login.session_ids(), 5, what="the session ended by the server")
    status, body = get(server, "/conn/")
    assert status == 200 and body["conn_id"] != first, body
    assert "dropping dead connection" in server.log()
    stop_and_check_no_session(server, login)


@pytest.mark.mysql
def test_configuration_error_stops_the_first_start(gunicorn, mysql_user, scratch_table):
    env = mysql_env(mysql_user, scratch_table, GP_DJ_CONN_MAX_AGE="none")
    server = gunicorn(conf("sync", workers=1), app=APP, env=env)
    server.start(wait=False)
    wait_until(lambda: not server.alive(), 30, what="gunicorn halted")
    log = server.log()
    assert "Pooling doesn't support persistent connections" in log and "CONN_MAX_AGE" in log
    assert mysql_user.password not in log


@pytest.mark.mysql
def test_gunicorn_pool_check_lists_the_django_aliases(tmp_path, mysql_user, scratch_table):
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(conf("gthread", workers=3))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]),
               **mysql_env(mysql_user, scratch_table, {"max_size": 2}))  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", "-c", str(path), "--json"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path))  # fmt: skip
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = report["pools"]
    assert (row["service"], row["pool"], row["adapter"], row["max_size"]) == ("django", "default", "mysql", 2)
    assert row["per_host"] == 6 and row["connect"]["ok"]
    assert mysql_user.password not in out.stdout + out.stderr


# -- PostgreSQL: Django's own psycopg pool --------------------------------------------------------------


@pytest.mark.postgresql
def test_postgresql_pool_opens_min_size_per_worker_before_the_first_request(gunicorn, pg_user):
    env = {"DJANGO_SETTINGS_MODULE": "djangoproj.settings", "GP_DJ_ENGINE": "postgresql", "GP_DJ_NAME": PG_DB,
           "GP_DJ_USER": pg_user.name, "GP_DJ_PASSWORD": pg_user.password, "GP_DJ_HOST": PG_HOST,
           "GP_DJ_PORT": str(PG_PORT), "GP_DJ_POOL": json.dumps({"min_size": 2, "max_size": 3})}  # fmt: skip
    server = gunicorn(conf("sync", workers=2), app=APP, env=env)
    server.start(workers_ready=2)
    wait_until(lambda: pg_user.count() == 4, 15, what="min_size=2 sessions per worker before any request")
    before = set(pg_user.backend_pids())
    for _ in range(10):
        status, body = get(server, "/sleep/0/")
        assert status == 200, body
        assert body["conn_id"] in before
    status, body = get(server, "/stats/")
    assert status == 200 and body["stats"]["default"]["pool_min"] == 2
    assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    wait_until(lambda: pg_user.count() == 0, 15, what="no session left after SIGTERM")
    assert pg_user.password not in server.log()


@pytest.mark.postgresql
def test_postgresql_preload_master_pool_is_never_used_by_workers(gunicorn, pg_user):
    """--preload and a query while the app loads: the master opened Django's psycopg pool (2
    sessions, one of them held by its DatabaseWrapper). Each worker drops both without a word to
    the server and opens its own pool; the master's sessions live on."""
    env = {"DJANGO_SETTINGS_MODULE": "djangoproj.settings", "GP_DJ_ENGINE": "postgresql", "GP_DJ_NAME": PG_DB,
           "GP_DJ_USER": pg_user.name, "GP_DJ_PASSWORD": pg_user.password, "GP_DJ_HOST": PG_HOST,
           "GP_DJ_PORT": str(PG_PORT), "GP_DJ_POOL": json.dumps({"min_size": 2, "max_size": 2}),
           "GP_DJ_QUERY_AT_IMPORT": "1"}  # fmt: skip
    server = gunicorn(conf("sync", workers=2), "--preload", app=APP, env=env)
    server.start(workers_ready=2)
    line = next(x for x in server.log().splitlines() if "GP-DJ-IMPORT-CONN" in x)
    master_held = int(line.rsplit("conn=", 1)[1])
    wait_until(lambda: pg_user.count() == 6, 15, what="the master's 2 sessions + 2 per worker")
    master = set(pg_user.backend_pids())
    used = set()
    for _ in range(20):
        status, body = get(server, "/sleep/0/")
        assert status == 200, body
        used.add(body["conn_id"])
    assert master_held not in used
    assert pg_user.count() == 6 and master <= set(pg_user.backend_pids()), "a worker ended a master's session"
    assert server.log().count("Django's psycopg pool was opened before the fork") == 2
    assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    wait_until(lambda: pg_user.count() == 0, 15, what="no session left after SIGTERM")
