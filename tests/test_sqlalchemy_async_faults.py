"""Faults under SQLAlchemy async engines in real gunicorn (``-k gunicorn_pool.AsgiWorker``): the
FastAPI app tests/apps/fastapi_sa_async_app.py, its ``create_async_engine()`` engine adopted
(``gunicorn_pool.sqlalchemy.adopt(engine)``), on PostgreSQL (psycopg's AsyncConnection, asyncpg)
and MariaDB (aiomysql); then ``gunicorn-pool check`` on ``EnginePool(..., asyncio=True)`` and on
an app with an adopted async engine.

The server goes down while workers respawn, every pooled session is killed while idle, the server
is blackholed at boot (tests/proxy.py), a worker is SIGKILLed. Sessions are counted on the server
for a login of the test's own; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import test_sqlalchemy_async_gunicorn as sa_gunicorn
from support import ROOT, each_request_fails_within, fail_while_respawning, figure, poll_until_ok, wait_until
from test_asgi_async_pools import boot_blackholed
from test_sqlalchemy_async_gunicorn import CONF, async_url, started

APP = "fastapi_sa_async_app:app"
ASGI = "gunicorn_pool.AsgiWorker"
#: The servers behind a fault proxy: which proxy fixture, and the driver's connect timeout keyword.
PROXIES = {"postgresql": "pg_proxy", "asyncpg": "pg_proxy", "mysql": "tcp_proxy"}
CONNECT_TIMEOUT = {"postgresql": "connect_timeout", "asyncpg": "timeout", "mysql": "connect_timeout"}

database = sa_gunicorn.database  # the fixtures: each server and driver, and a login of the test's own
login = sa_gunicorn.login


@pytest.fixture
def proxy(database: str, request: Any) -> Any:
    return request.getfixturevalue(PROXIES[database])


def faults_conf(login: Any, database: str, *, workers: int = 1, port: int = 0, connect_timeout: float = 0,
                extra: str = "", **options: Any) -> str:  # fmt: skip
    """The app's conf: its engine's URL (through *port*, a proxy's, if given), the driver's
    connect timeout (*connect_timeout* seconds, if given) and adopt()'s *options*."""
    url = async_url(login, database)
    if port:
        url = url.replace(f"@{login.host}:{login.port}/", f"@{login.host}:{port}/", 1)
    if connect_timeout:
        args = {CONNECT_TIMEOUT[database]: connect_timeout}
        extra = f"os.environ['SA_ASYNC_CONNECT_ARGS'] = {json.dumps(args)!r}\n{extra}"
    return CONF.format(url=url, options=json.dumps(options), worker=ASGI, workers=workers, extra=extra)


@pytest.mark.timeout(90)
def test_server_down_during_respawns_never_halts_the_master_and_requests_heal(login, proxy, database, gunicorn):
    """Workers recycled by max_requests while the server refuses every connect: each boots anyway
    (the lifespan logs "warm-up failed" and serves), requests answer 500 or 503 without hanging,
    the master lives; the server back, 5 requests in a row succeed within 10 s."""
    conf = faults_conf(login, database, workers=2, port=proxy.port, connect_timeout=1, timeout=2,
                       extra="max_requests = 2")  # fmt: skip
    server = started(gunicorn(conf, app=APP), 2)
    assert server.get("/conn")[0] == 200
    slowest = fail_while_respawning(server, proxy, within=30)
    figure(f"SA async {database}: slowest failed request with the server refusing", slowest)
    assert slowest < 5.0, slowest
    proxy.forward()
    healed = poll_until_ok(server, "/conn", 10.0, streak=5)
    figure(f"SA async {database}: 5 straight 200s after the server returned", healed)
    assert server.alive()
    assert login.password not in server.log()


@pytest.mark.timeout(60)
def test_every_idle_session_killed_is_replaced_before_a_request_uses_it(login, database, gunicorn):
    """min_size = max_size = 2 in 2 workers: the 4 idle sessions are killed on the server
    (KILL / pg_terminate_backend); every next request succeeds: the checkout probe saw each dead
    session and the pool opened another."""
    conf = faults_conf(login, database, workers=2, min_size=2, max_size=2)
    server = started(gunicorn(conf, app=APP), 2)
    wait_until(lambda: login.count() == 4, 10, what="4 sessions")
    before = set(login.session_ids())
    assert login.kill_all() == 4
    wait_until(lambda: not set(login.session_ids()) & before, 5, what="the killed sessions gone on the server")
    time.sleep(0.2)  # the goodbye reaches the workers' sockets
    seen = set()
    for _ in range(20):
        status, body = server.get("/conn")
        assert status == 200, body  # never a failed request
        seen.add(body["session"])
    assert not seen & before, (seen, before)
    assert "dropping dead connection" in server.log(), server.log()[-3000:]


def established_to(port: int) -> int:
    """TCP connections of this machine to 127.0.0.1:*port* still open from the client's side
    (/proc/net/tcp: the remote port, state ESTABLISHED)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == f"0100007F:{port:04X}" and row[3] == "01")


@pytest.mark.timeout(60)
def test_a_server_blackholed_at_boot_bounds_the_boot_and_the_requests_then_heals(login, proxy, database, gunicorn):
    """The proxy accepts TCP and never answers; the driver's connect timeout is 1 s: the worker
    boots within 8 s (warm-up failed, connect on demand), each request fails within 4 s, and
    once the blackhole lifts 5 requests in a row succeed within 10 s."""
    proxy.blackhole()
    conf = faults_conf(login, database, port=proxy.port, connect_timeout=1, timeout=1)
    server = gunicorn(conf, app=APP)
    boot_blackholed(server, f"SA async {database}")
    took = each_request_fails_within(server, "/conn", 4.0, (500, 503))
    figure(f"SA async {database}: slowest request with the server blackholed", max(took))
    # every connect that timed out closed its socket (the proxy holds its side open)
    wait_until(lambda: established_to(proxy.port) == 0, 5, what="no socket left open to the blackhole")
    proxy.forward()
    healed = poll_until_ok(server, "/conn", 10.0, streak=5)
    figure(f"SA async {database}: 5 straight 200s after the blackhole lifted", healed)
    assert login.password not in server.log()


@pytest.mark.timeout(60)
def test_sigkill_of_a_worker_its_sessions_end_and_its_replacement_opens_its_own(login, database, gunicorn):
    conf = faults_conf(login, database, workers=2, min_size=1)
    server = started(gunicorn(conf, app=APP), 2)
    wait_until(lambda: login.count() == 2, 10, what="2 sessions")
    before = set(login.session_ids())
    start = time.monotonic()
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    server.wait_log("asyncio pool service(s) ready", count=3, timeout=15)
    wait_until(lambda: login.count() == 2 and len(set(login.session_ids()) - before) == 1, 15,
               what="the killed worker's session gone, its replacement's open")  # fmt: skip
    figure(f"SA async {database}: SIGKILL to the killed worker's session replaced on the server",
           time.monotonic() - start)  # fmt: skip
    for _ in range(10):
        status, body = server.get("/conn")
        assert status == 200, body


# -- gunicorn-pool check -----------------------------------------------------------------------------

ASYNC_APP = """
import gunicorn_pool.sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine({url!r})
gunicorn_pool.sqlalchemy.adopt(engine, name="sa", max_size=4)


async def app(scope, receive, send):
    pass
"""


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", *args], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "HOME": str(cwd)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.timeout(120)
def test_check_budgets_async_engines_of_engine_pool_and_of_an_adopted_app(login, database, tmp_path):
    """``gunicorn-pool check`` on a gunicorn.conf.py with ``EnginePool({...}, asyncio=True)`` and
    on an app with an adopted async engine (``--app mod:app -k gunicorn_pool.AsgiWorker -w 2``):
    a row per engine with the asyncio worker's sizes (1/10, or adopt()'s max_size), the DSN
    masked, the server probed, exit 0, the password printed nowhere (table or JSON)."""
    url = async_url(login, database)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(textwrap.dedent(f"""
        import gunicorn_pool
        from gunicorn_pool.sqlalchemy import EnginePool
        gunicorn_pool.register(EnginePool({{"default": {url!r}, "capped": {{"url": {url!r}, "max_size": 3}}}},
                                          asyncio=True), name="orm")
        worker_class = "gunicorn_pool.AsgiWorker"
        workers = 3
        """))  # fmt: skip
    app_dir = tmp_path / "src"  # no gunicorn.conf.py there: gunicorn's flags alone
    app_dir.mkdir()
    (app_dir / "saasync.py").write_text(ASYNC_APP.format(url=url))
    runs = {
        "conf": (["-c", str(conf)], tmp_path),
        "app": (["--app", "saasync:app", "-k", "gunicorn_pool.AsgiWorker", "-w", "2"], app_dir),
    }
    for what, (args, cwd) in runs.items():
        table = _check(*args, cwd=cwd)
        proc = _check(*args, "--json", cwd=cwd)
        for run in (table, proc):
            assert run.returncode == 0, (what, run.stdout + run.stderr)
            assert login.password not in run.stdout + run.stderr, what
        report = json.loads(proc.stdout)
        rows = {(row["service"], row["pool"]): row for row in report["pools"]}
        assert report["ok"] and report["servers"], (what, report)
        assert all(server["fits"] and server["max_connections"] for server in report["servers"]), (what, report)
        assert not [w for w in report.get("warnings", []) if "not checked" in w], (what, report)
        for row in rows.values():
            assert row["adapter"] == login.scheme and row["user"] == login.name, (what, row)
            assert f"{login.name}:***@" in row["dsn"], (what, row)  # masked
            assert row["dsn"] in table.stdout, (what, row["dsn"], table.stdout)
        if what == "conf":
            assert set(rows) == {("orm", "default"), ("orm", "capped")}, rows
            assert (rows["orm", "default"]["min_size"], rows["orm", "default"]["max_size"]) == (1, 10), rows
            assert rows["orm", "default"]["per_host"] == 30 and rows["orm", "capped"]["per_host"] == 9, rows
        else:
            assert set(rows) == {("sa", "default")}, rows
            assert (rows["sa", "default"]["min_size"], rows["sa", "default"]["max_size"]) == (1, 4), rows
            assert rows["sa", "default"]["per_host"] == 8, rows
