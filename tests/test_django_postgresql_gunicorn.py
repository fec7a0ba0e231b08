"""Django on PostgreSQL in real gunicorn workers (the project in tests/apps/djangoproj): the pooled
backend ``gunicorn_pool.django.postgresql`` on psycopg2 (psycopg 3 made unimportable in the
project, as where only psycopg2 is installed) and on psycopg 3, and Django's own psycopg pool
sized per worker type.

Each test has its own login, so the server-side session counts are exactly the test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from support import APPS, PG_DB, PG_HOST, PG_PORT, ROOT, concurrent_with_peak, wait_until
from test_django_gunicorn import (
    APP,
    check_a_dead_kept_session_is_replaced,
    check_kept_across_requests,
    check_two_sync_workers,
    conf,
    get,
    stop_and_check_no_session,
)

pytestmark = pytest.mark.postgresql


@pytest.fixture
def table(pg_user: Any) -> Any:
    yield from pg_user.scratch_table(with_id=True)


def pg_env(user: Any, engine: str, pool: Any = None, table: str = "", *,
           psycopg2: bool = False, **extra: str) -> dict[str, str]:  # fmt: skip
    env = {"DJANGO_SETTINGS_MODULE": "djangoproj.settings", "GP_DJ_ENGINE": engine, "GP_DJ_NAME": PG_DB,
           "GP_DJ_USER": user.name, "GP_DJ_PASSWORD": user.password, "GP_DJ_HOST": PG_HOST,
           "GP_DJ_PORT": str(PG_PORT), "GP_DJ_TABLE": table or "gp_dj_item"}  # fmt: skip
    if pool is not None:
        env["GP_DJ_POOL"] = json.dumps(pool)
    if psycopg2:
        env["GP_DJ_HIDE_PSYCOPG"] = "1"
    env.update(extra)
    return env


# -- gunicorn_pool.django.postgresql ----------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sync_workers_open_their_sessions_before_the_first_request_and_close_them_at_exit(gunicorn, pg_user,
                                                                                         table, driver):  # fmt: skip
    server = gunicorn(conf("sync", workers=2), app=APP,
                      env=pg_env(pg_user, "pg-ours", table=table, psycopg2=driver == "psycopg2"))  # fmt: skip
    figures = check_two_sync_workers(server, pg_user, "postgresql")
    assert figures["connections_reset"] == 0  # Django's autocommit, set on every connect, costs nothing


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_a_sync_worker_keeps_its_clean_connection_across_requests(gunicorn, pg_user, table, kind, driver):
    """Sync: Django keeps the connection lent across requests, as CONN_MAX_AGE=None would: 30
    requests on the boot's session and one checkout for all of them. gthread: one lease per
    request."""
    env = pg_env(pg_user, "pg-ours", table=table, psycopg2=driver == "psycopg2")
    check_kept_across_requests(gunicorn(conf(kind, workers=1), app=APP, env=env), pg_user, kind)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_request_that_leaves_a_transaction_or_a_session_change_gives_the_connection_back(
    gunicorn, pg_user, table, driver
):
    """A sync worker keeps a clean connection, but a request that leaves a transaction open or a
    session change ends its lease at its end: the next request gets the same session rolled back
    or reset (DISCARD ALL), never the leftover."""
    env = pg_env(pg_user, "pg-ours", table=table, psycopg2=driver == "psycopg2")
    server = gunicorn(conf("sync", workers=1), app=APP, env=env)
    server.start(workers_ready=1)
    session = get(server, "/conn/")[1]["conn_id"]
    before = get(server, "/stats/")[1]["stats"]["default"]
    status, body = get(server, "/begin/")
    assert status == 200 and body["conn_id"] == session, server.log()[-3000:]
    status, body = get(server, "/rows/")
    assert status == 200 and body["rows"] == 0, "the open transaction's row reached the next request"
    assert get(server, "/setvar/")[0] == 200
    status, body = get(server, "/getvar/")
    assert status == 200 and body["value"] is None and body["conn_id"] == session, body
    after = get(server, "/stats/")[1]["stats"]["default"]
    assert after["requests_num"] == before["requests_num"] + 2  # taken again after /begin/ and /setvar/
    assert after["connections_reset"] >= before["connections_reset"] + 1  # SET gp.leak: DISCARD ALL
    assert pg_user.count() == 1
    stop_and_check_no_session(server, pg_user)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_terminated_session_is_replaced_before_the_next_requests_first_query(gunicorn, pg_user, table, driver):
    """pg_terminate_backend() of the session a sync worker's Django keeps between requests: the
    next request's first query finds it dead (its socket polled, then pinged), drops it and runs
    on a new session; the request succeeds."""
    env = pg_env(pg_user, "pg-ours", table=table, psycopg2=driver == "psycopg2")
    check_a_dead_kept_session_is_replaced(gunicorn(conf("sync", workers=1), app=APP, env=env), pg_user)


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_psycopg2_fifty_concurrent_requests_stay_within_max_size(gunicorn, pg_user, table, kind):
    """50 requests at once on 2 workers with max_size=3, Django on psycopg2: never more than 3
    sessions per worker (under gevent psycopg2 waits through the wait callback the worker set);
    each request succeeds or gets a clean 503 when the pool's timeout passes."""
    env = pg_env(pg_user, "pg-ours", {"max_size": 3, "timeout": 1.5}, table, psycopg2=True)
    server = gunicorn(conf(kind, workers=2), app=APP, env=env)
    server.start(workers_ready=2)
    wait_until(lambda: pg_user.count() == 2, 10, what="min_size sessions per worker")
    results, peak = concurrent_with_peak([lambda: get(server, "/sleep/0.1/", 30)] * 50, pg_user.count)
    statuses = sorted({status for status, _ in results})
    assert len(results) == 50 and set(statuses) <= {200, 503}, results
    per_pid: dict[int, set[int]] = {}
    for status, body in results:
        if status == 200:
            per_pid.setdefault(body["pid"], set()).add(body["conn_id"])
    assert per_pid and all(len(ids) <= 3 for ids in per_pid.values()), per_pid
    assert peak <= 6, f"{peak} sessions for 2 workers with max_size=3"
    ok = sum(status == 200 for status, _ in results)
    assert ok >= 40 if kind == "gevent" else ok >= 10, (ok, statuses)
    print(f"FIGURE django psycopg2 {kind}: {ok} ok, {statuses}, peak {peak} sessions")
    stop_and_check_no_session(server, pg_user)


def test_psycopg2_preload_master_connection_is_never_used_by_workers(gunicorn, pg_user, table):
    env = pg_env(pg_user, "pg-ours", table=table, psycopg2=True, GP_DJ_QUERY_AT_IMPORT="1")
    server = gunicorn(conf("sync", workers=2), "--preload", app=APP, env=env)
    server.start(workers_ready=2)
    line = next(x for x in server.log().splitlines() if "GP-DJ-IMPORT-CONN" in x)
    master = int(line.rsplit("conn=", 1)[1])
    wait_until(lambda: pg_user.count() == 3, 10, what="the master's session + 1 per worker")
    used = set()
    for n in range(300):  # ask until both workers answered
        status, body = get(server, "/conn/")
        assert status == 200, body
        used.add(body["conn_id"])
        if len(used) >= 2 and n >= 20:
            break
    assert master not in used and len(used) == 2, (master, used)
    assert master in pg_user.backend_pids(), "a worker ended the master's session"
    stop_and_check_no_session(server, pg_user)


# -- Django's own psycopg pool, sized per worker -----------------------------------------------------


@pytest.mark.parametrize("kind, sizes", [("sync", (1, 1)), ("gthread", (1, 4)), ("gevent", (1, 10))])
def test_djangos_own_pool_is_sized_by_the_worker_type(gunicorn, pg_user, kind, sizes):
    """psycopg_pool opens 4 per worker by default: two sync workers held 8 sessions where the MySQL
    backend held 2. Unless OPTIONS["pool"] sets the sizes, they follow the worker type."""
    server = gunicorn(conf(kind, workers=2), app=APP, env=pg_env(pg_user, "postgresql", True))
    server.start(workers_ready=2)
    wait_until(lambda: pg_user.count() == 2, 15, what="min_size=1 session per worker before any request")
    status, body = get(server, "/stats/")
    assert status == 200 and (body["stats"]["default"]["pool_min"], body["stats"]["default"]["pool_max"]) == sizes
    assert pg_user.count() == 2
    stop_and_check_no_session(server, pg_user)


def test_gunicorn_pool_check_shows_the_sizes_that_open(tmp_path, pg_user):
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(conf("gthread", workers=3))
    rows = {}
    for engine in ("postgresql", "pg-ours"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]), **pg_env(pg_user, engine, True))
        out = subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", "-c", str(path), "--json"], env=env,
                             capture_output=True, text=True, timeout=60, cwd=str(tmp_path))  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        (rows[engine],) = json.loads(out.stdout)["pools"]
        assert pg_user.password not in out.stdout + out.stderr
    for row in rows.values():
        assert (row["service"], row["pool"], row["adapter"]) == ("django", "default", "postgresql")
        assert (row["min_size"], row["max_size"], row["per_host"]) == (1, 4, 12), row


def test_gunicorn_pool_check_names_the_engine_to_use_on_psycopg2(tmp_path, pg_user):
    """Before: a traceback of Django's ImproperlyConfigured out of the command; now exit 2 (a
    configuration error) with the message."""
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(conf("sync", workers=2))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]),
               **pg_env(pg_user, "postgresql", True, psycopg2=True))  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", "-c", str(path)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path))  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "set ENGINE to 'gunicorn_pool.django.postgresql'" in out.stdout and "Traceback" not in out.stderr
    assert pg_user.password not in out.stdout + out.stderr


def test_djangos_pool_on_psycopg2_stops_the_first_start_naming_the_engine_to_use(gunicorn, pg_user):
    server = gunicorn(conf("sync", workers=1), app=APP, env=pg_env(pg_user, "postgresql", True, psycopg2=True))
    server.start(wait=False)
    wait_until(lambda: not server.alive(), 30, what="gunicorn halted")
    log = server.log()
    assert "needs psycopg 3" in log and "set ENGINE to 'gunicorn_pool.django.postgresql'" in log, log[-3000:]
    assert pg_user.password not in log
