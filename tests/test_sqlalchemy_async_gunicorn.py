"""SQLAlchemy async engines in real gunicorn: a FastAPI app (tests/apps/fastapi_sa_async_app.py) whose
``create_async_engine()`` engine is adopted (``gunicorn_pool.sqlalchemy.adopt(engine)``), or built
by ``EnginePool(..., asyncio=True)``, under ``-k gunicorn_pool.AsgiWorker`` and
``gunicorn_pool.UvicornWorker``, on PostgreSQL (psycopg's AsyncConnection, asyncpg) and MariaDB (aiomysql).

Sessions are counted on the server for a login of the test's own.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from support import concurrent_with_peak, figure, wait_until
from test_asgi_async_pools import WORKERS, _hang_up_after, check_a_burst_stays_within_max_size

APP = "fastapi_sa_async_app:app"
#: The servers: (login fixture, asyncio driver, marker).
DATABASES = {
    "postgresql": ("pg_user", "postgresql+psycopg", pytest.mark.postgresql),
    "asyncpg": ("pg_user", "postgresql+asyncpg", pytest.mark.postgresql),
    "mysql": ("mysql_user", "mysql+aiomysql", pytest.mark.mysql),
}

CONF = """
import os
os.environ["SA_ASYNC_URL"] = {url!r}
os.environ["SA_ASYNC_OPTIONS"] = {options!r}
{extra}
worker_class = {worker!r}
workers = {workers}
graceful_timeout = 10
"""


@pytest.fixture(params=[pytest.param(name, marks=mark) for name, (_, _, mark) in DATABASES.items()])
def database(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def login(database: str, request: Any) -> Any:
    return request.getfixturevalue(DATABASES[database][0])


def async_url(login: Any, database: str) -> str:
    return str(login.url()).replace(f"{login.scheme}://", f"{DATABASES[database][1]}://", 1)


def sa_conf(login: Any, database: str, *, worker: str, workers: int = 1, extra: str = "", **options: Any) -> str:
    return CONF.format(url=async_url(login, database), options=json.dumps(options), worker=worker, workers=workers,
                       extra=extra)  # fmt: skip


def started(server: Any, workers: int) -> Any:
    """Start *server*; return once every worker's lifespan opened its asyncio pools."""
    server.start()
    server.wait_log("asyncio pool service(s) ready", count=workers)
    return server


def busy(server: Any, service: str = "sa") -> int:
    """Connections out (lent or opening) in the worker that answers /stats."""
    status, body = server.get("/stats")
    assert status == 200, body
    figures = body[service]["default"]
    return int(figures["pool_size"] - figures["pool_available"])


def each_worker_answers(server: Any, workers: int) -> dict[int, set[int]]:
    """Sessions seen by each worker pid over /conn calls sent 8 at a time (one after another, an
    idle asyncio worker can win every accept)."""
    seen: dict[int, set[int]] = {}
    for _ in range(30):
        results, _peak = concurrent_with_peak([lambda: server.get("/conn")] * 8, lambda: 0, timeout=30)
        for status, body in results:
            assert status == 200, body
            seen.setdefault(body["pid"], set()).add(body["session"])
        if len(seen) == workers:
            break
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_adopted_async_engine_each_worker_opens_its_own_session_before_the_first_request_none_after_sigterm(
    login, database, gunicorn, worker
):
    workers = 2
    conf = sa_conf(login, database, worker=WORKERS[worker], workers=workers, max_size=1)
    server = started(gunicorn(conf, app=APP), workers)
    wait_until(lambda: login.count() == workers, 10, what="W sessions before any request")
    before = set(login.session_ids())
    seen = each_worker_answers(server, workers)
    assert len(seen) == workers and all(len(ids) == 1 for ids in seen.values()), seen
    used = [next(iter(ids)) for ids in seen.values()]
    assert len(set(used)) == workers and set(used) <= before, "two workers shared a session, or one opened late"
    assert login.count() == workers
    assert server.stop(signal.SIGTERM) == 0
    wait_until(lambda: login.count() == 0, 5, what="0 sessions after SIGTERM")
    log = server.log()
    assert log.count("closed 1 connection(s)") == workers, log[-3000:]  # politely, in the lifespan shutdown
    assert login.password not in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_concurrent_requests_never_exceed_max_size_and_checkouts_wait_at_most_timeout(
    login, database, gunicorn, worker
):
    """max_size 3, 60 requests at once, each holding a connection 0.3 s, timeout 1 s: at most 3
    sessions at any time; the requests that could not get one in time answer 503 (SQLAlchemy's
    TimeoutError) after about 1 s; none hangs."""
    conf = sa_conf(login, database, worker=WORKERS[worker], max_size=3, timeout=1.0)
    server = started(gunicorn(conf, app=APP), 1)
    check_a_burst_stays_within_max_size(server, login, busy, requests=60, max_size=3, slowest=5.0,
                                        label=f"SA async {database} {worker}")  # fmt: skip


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_a_leaked_async_session_is_reclaimed_when_its_request_ends_and_the_log_names_the_line(
    login, database, gunicorn, worker
):
    conf = sa_conf(login, database, worker=WORKERS[worker], max_size=1, timeout=2)
    server = started(gunicorn(conf, app=APP), 1)
    for attempt in (1, 2):  # the first leak turns line recording on: the second names the line
        status, body = server.get("/leak")
        assert status == 200, body
        server.wait_log("was not given back by the end of its request (/leak)", count=attempt)
    assert "fastapi_sa_async_app.py:" in server.log()
    for _ in range(5):
        status, body = server.get("/conn")
        assert status == 200, body  # max_size 1: the capacity came back
    assert body["session"] in login.session_ids()
    assert busy(server) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_clients_gone_mid_query_leave_no_connection_out(login, database, gunicorn, worker):
    """30 clients send a request whose query sleeps 1 s on the server and hang up after 0.1 s; the
    endpoint sees the disconnect and cancels its query task (mid-query for the few holding a
    connection, in the pool's queue for the rest). A connection SQLAlchemy invalidated is dropped
    and its capacity freed; one the driver left usable (asyncpg may finish the cancel itself) may
    serve again: either way nothing stays out, and the next requests get answers with no error.
    How many connections were opened is a figure, not a rule (a CI run under load saw 3: no
    connection dropped)."""
    conf = sa_conf(login, database, worker=WORKERS[worker], max_size=3, timeout=5)
    server = started(gunicorn(conf, app=APP), 1)
    results, peak = concurrent_with_peak([lambda: _hang_up_after(server.port, "/sleep-watch?s=1", 0.1)] * 30,
                                         login.count)  # fmt: skip
    figure(f"SA async {database} {worker}: most server sessions during 30 hang-ups (max_size 3)", peak, "")
    wait_until(lambda: login.count() <= 3, 10, what="the dropped sessions ended on the server")
    wait_until(lambda: busy(server) == 0, 10, what="no connection out after the hang-ups")
    for _ in range(10):
        status, body = server.get("/conn")
        assert status == 200, body
    status, body = server.get("/stats")
    opened = body["sa"]["default"]["connections_num"]
    figure(f"SA async {database} {worker}: connections opened over 30 hang-ups", opened, "")
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.timeout(90)
def test_engine_pool_asyncio_true_under_the_asgi_worker(login, database, gunicorn):
    workers = 2
    extra = (
        "import gunicorn_pool\nfrom gunicorn_pool.sqlalchemy import EnginePool\n"
        "os.environ['SA_ASYNC_SERVICE'] = 'orm'\n"
        "gunicorn_pool.register(EnginePool({'default': {'url': os.environ['SA_ASYNC_URL'], 'max_size': 2}},"
        " asyncio=True), name='orm')"
    )
    conf = sa_conf(login, database, worker=WORKERS["AsgiWorker"], workers=workers, extra=extra)
    server = started(gunicorn(conf, app=APP), workers)
    wait_until(lambda: login.count() == workers, 10, what="W sessions before any request (min_size 1)")
    seen = each_worker_answers(server, workers)
    assert len(seen) == workers, seen
    status, body = server.get("/stats")
    assert body["orm"]["default"]["pool_max"] == 2
    assert server.stop(signal.SIGTERM) == 0
    wait_until(lambda: login.count() == 0, 5, what="0 sessions after SIGTERM")
