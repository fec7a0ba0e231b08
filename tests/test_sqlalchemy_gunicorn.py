"""A Flask-SQLAlchemy app (tests/apps/flask_sa_app.py) pooled by ``adopt(db)`` in real gunicorn
servers, against real MariaDB and PostgreSQL: sessions open before the first request and
gone after SIGTERM, at most max_size per worker under concurrency, --preload never using the
master's connection, rollbacks that leave no row, leaks reclaimed at the end of a request.
"""

from __future__ import annotations

import secrets
import signal
import statistics
import time
from typing import Any

import pytest
import test_sqlalchemy
from sqlalchemy import create_engine
from support import WORKER_CLASSES, assert_no_secret, concurrent_with_peak, figure, wait_until
from test_sqlalchemy import Server, driver_url, model

APP = "flask_sa_app:app"
CONF = """
worker_class = {worker!r}
workers = {workers}
{extra}
"""

pytestmark = pytest.mark.timeout(120)

server = test_sqlalchemy.server  # assigned, not imported: no F811 on the arguments


@pytest.fixture
def mysql(mysql_user: Any) -> Server:
    return Server("mysql", mysql_user)


def start(gunicorn: Any, server: Server, *args: str, kind: str = "sync", workers: int = 2, extra: str = "",
          env: Any = None) -> tuple[Any, str]:  # fmt: skip
    """A gunicorn of the Flask app on a fresh table of *server*; returns (gunicorn, table)."""
    table = f"gp_fsa_{secrets.token_hex(4)}"
    engine = create_engine(driver_url(server.url()))
    model(table).__table__.create(engine)
    engine.dispose()
    worker, kind_extra = WORKER_CLASSES[kind]
    conf = CONF.format(worker=worker, workers=workers, extra="\n".join(x for x in (kind_extra, extra) if x))
    environ = {"GP_SA_URL": driver_url(server.url()), "GP_SA_TABLE": table, **(env or {})}
    proc = gunicorn(conf, *args, app=APP, env=environ)
    proc.start(workers_ready=workers)
    return proc, table


def test_sync_workers_open_their_sessions_at_boot_and_close_them_at_exit(server: Server, gunicorn: Any) -> None:
    proc, _ = start(gunicorn, server)
    wait_until(lambda: server.sessions() == 2, 10, what="2 sessions before the first request")
    before = set(server.server_ids())
    seen: dict[int, set[int]] = {}
    served: dict[int, int] = {}
    took = []
    for _ in range(30):
        asked = time.perf_counter()
        status, body = proc.get("/conn")
        took.append(time.perf_counter() - asked)
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body["session"])
        served[body["pid"]] = served.get(body["pid"], 0) + 1
    warm = statistics.median(took[10:])
    figure(f"flask-sqlalchemy {server.kind} first request / warm median", took[0] / warm, "x")
    assert all(len(sessions) == 1 for sessions in seen.values()), seen
    used = {next(iter(sessions)) for sessions in seen.values()}
    assert used <= before and len(used) == len(seen), "a worker used a session the boot did not open"
    assert server.sessions() == 2
    # Two sync workers: the one that answers /stats may have served no /conn (one worker can take
    # all 30). Ask until a worker that did answers; its count covers every /conn it served.
    for _ in range(40):
        status, stats = proc.get("/stats")
        assert status == 200, stats
        if stats["pid"] in served:
            break
    else:
        pytest.fail(f"no /stats answer from a worker that served /conn: {served}")
    pool = stats["pools"]["default"]
    assert pool["requests_num"] >= served[stats["pid"]] and pool["connections_num"] == 1, (pool, served)
    assert proc.stop(signal.SIGTERM) == 0, proc.log()[-2000:]
    wait_until(lambda: server.sessions() == 0, 10, what="0 sessions after SIGTERM")
    log = proc.log()
    assert log.count("pool default (") >= 2 and "opened 1 connection(s)" in log
    assert_no_secret(proc, server.user.password)


@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_concurrent_requests_never_exceed_max_size(server: Server, gunicorn: Any, kind: str) -> None:
    cap = 4 if kind == "gthread" else 10  # gthread: --threads 4; gevent: the default max_size
    proc, _ = start(gunicorn, server, kind=kind, workers=1, extra="worker_connections = 100")
    wait_until(lambda: server.sessions() == 1, 10, what="1 session before the first request")
    results, peak = concurrent_with_peak([lambda: proc.get("/sleep?s=0.3", timeout=30)[0]] * 40, server.sessions)
    assert results == [200] * 40
    assert 1 < peak <= cap, peak
    status, stats = proc.get("/stats")
    assert stats["pools"]["default"]["pool_max"] == cap
    if kind == "gevent":  # 40 greenlets for 10 connections: the rest queued in the pool
        assert stats["pools"]["default"]["requests_queued"] > 0


def test_preload_never_uses_the_masters_connection(server: Server, gunicorn: Any) -> None:
    proc, _ = start(gunicorn, server, "--preload", env={"GP_SA_QUERY_AT_IMPORT": "1"})
    status, master = proc.get("/master")
    assert status == 200 and master["session"] is not None
    assert master["pid"] == proc.pid
    wait_until(lambda: server.sessions() == 3, 10, what="the master's session and one per worker")
    used = set()
    for _ in range(20):
        status, body = proc.get("/conn")
        assert status == 200, body
        used.add(body["session"])
    assert master["session"] not in used
    assert master["session"] in server.server_ids(), "a worker ended the master's session"
    assert server.sessions() == 3


def test_rollback_and_failed_view_leave_no_row(server: Server, gunicorn: Any) -> None:
    proc, _ = start(gunicorn, server, workers=1)
    assert proc.get("/rollback") == (200, {"rows": 0})
    status, _ = proc.get("/raise")
    assert status == 500
    assert proc.get("/count") == (200, {"rows": 0})
    assert proc.get("/commit")[0] == 200
    assert proc.get("/count") == (200, {"rows": 1})


@pytest.mark.mysql
def test_session_left_open_is_reclaimed_at_request_end(mysql: Server, gunicorn: Any) -> None:
    proc, _ = start(gunicorn, mysql, workers=1)
    assert proc.get("/leak")[0] == 200
    status, stats = proc.get("/stats")
    assert stats["pools"]["default"]["connections_leaked"] == 1
    assert proc.get("/conn")[0] == 200  # the capacity came back (sync: max_size 1)
    assert "was not given back by the end of its request" in proc.log()


@pytest.mark.mysql
def test_app_walk_adopts_a_flask_sqlalchemy_app_with_no_line_of_ours(mysql: Server, gunicorn: Any) -> None:
    conf = CONF.format(worker=WORKER_CLASSES["sync"][0], workers=2, extra="")
    proc = gunicorn(conf, app="flask_sa_plain:app", env={"GP_SA_URL": driver_url(mysql.url())})
    proc.start(workers_ready=2)
    wait_until(lambda: mysql.sessions() == 2, 10, what="2 sessions before the first request")
    before = set(mysql.server_ids())
    for _ in range(10):
        status, body = proc.get("/conn")
        assert status == 200 and body["pool"] == "GunicornPool" and body["session"] in before, body
    assert proc.log().count("1 pool service(s) ready") == 2


def test_engine_pool_builds_engines_in_each_worker(server: Server, gunicorn: Any) -> None:
    conf = CONF.format(worker=WORKER_CLASSES["gthread"][0], workers=2, extra=(
        "threads = 4\nimport gunicorn_pool, sys\nfrom gunicorn_pool.sqlalchemy import EnginePool\n"
        f"gunicorn_pool.register(EnginePool({{'default': {{'url': {server.url()!r}, 'min_size': 2}}}}), name='orm')\n"
    ))  # fmt: skip
    proc = gunicorn(conf, app="sa_engine_app:app")
    proc.start(workers_ready=2)
    wait_until(lambda: server.sessions() == 4, 10, what="min_size 2 sessions per worker before the first request")
    before = set(server.server_ids())
    for _ in range(10):
        status, body = proc.get("/")
        assert status == 200 and body["session"] in before, body
        assert body["stats"]["default"]["pool_min"] == 2 and body["stats"]["default"]["pool_max"] == 4
    assert proc.stop(signal.SIGTERM) == 0
    wait_until(lambda: server.sessions() == 0, 10, what="0 sessions after SIGTERM")
    assert_no_secret(proc, server.user.password)
