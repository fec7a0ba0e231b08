"""AsyncDatabasePool and AsyncRedisPool in real gunicorn: a FastAPI app (tests/apps/fastapi_async_app.py)
under ``-k gunicorn_pool.AsgiWorker`` and ``gunicorn_pool.UvicornWorker``, on real servers.

Sessions are counted on the server for a login of the test's own (PostgreSQL's pg_stat_activity,
MariaDB's PROCESSLIST, Redis's CLIENT LIST by client name). The faults come from tests/proxy.py.
"""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import pytest
from support import (
    concurrent_with_peak,
    each_request_fails_within,
    fail_while_respawning,
    figure,
    http_get,
    poll_until_ok,
    wait_until,
)

APP = "fastapi_async_app:app"
WORKERS = {"AsgiWorker": "gunicorn_pool.AsgiWorker", "UvicornWorker": "gunicorn_pool.UvicornWorker"}
#: The servers AsyncDatabasePool is tested on here: (id, login fixture, proxy fixture, marker).
DATABASES = {
    "postgresql": ("pg_user", "pg_proxy", pytest.mark.postgresql),
    "mysql": ("mysql_user", "tcp_proxy", pytest.mark.mysql),
}

CONF = """
import gunicorn_pool
gunicorn_pool.register(gunicorn_pool.AsyncDatabasePool({pools!r}), name="adb")
{redis}
worker_class = {worker!r}
workers = {workers}
graceful_timeout = 10
{extra}
"""


def async_conf(pools: dict[str, Any], *, worker: str, workers: int = 2, redis: str = "", extra: str = "") -> str:
    line = f"gunicorn_pool.register(gunicorn_pool.AsyncRedisPool({redis!r}), name='aredis')" if redis else ""
    return CONF.format(pools=pools, worker=worker, workers=workers, redis=line, extra=extra)


@pytest.fixture(params=[pytest.param(name, marks=mark) for name, (_, _, mark) in DATABASES.items()])
def database(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def login(database: str, request: Any) -> Any:
    return request.getfixturevalue(DATABASES[database][0])


@pytest.fixture
def proxy(database: str, request: Any) -> Any:
    return request.getfixturevalue(DATABASES[database][1])


def started(server: Any, workers: int) -> Any:
    """Start *server*; return once every worker's lifespan opened its asyncio pools."""
    server.start()
    server.wait_log("asyncio pool service(s) ready", count=workers)
    return server


def busy(server: Any) -> int:
    """Connections out (lent or opening) in the worker that answers /stats."""
    status, body = server.get("/stats")
    assert status == 200, body
    figures = body["adb"]["default"]
    return int(figures["pool_size"] - figures["pool_available"])


@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_each_worker_opens_its_own_sessions_before_the_first_request_and_none_is_left_after_sigterm(
    login, redis_clients, gunicorn, worker
):
    workers = 2
    # max_size 1: the requests below go out 8 at a time, and each worker must keep the one session it opened
    conf = async_conf({"default": login.config(max_size=1)}, worker=WORKERS[worker], workers=workers,
                      redis={"default": redis_clients.url(max_size=1)})  # fmt: skip
    server = started(gunicorn(conf, app=APP), workers)
    wait_until(lambda: login.count() == workers, 10, what="W database sessions before any request")
    wait_until(lambda: redis_clients.count() == workers, 10, what="W Redis connections before any request")
    before = set(login.session_ids())
    seen: dict[int, set[int]] = {}
    redis_seen: dict[int, set[int]] = {}
    # Requests go out 8 at a time: one after another, an asyncio worker that is idle in epoll_wait can
    # win every accept, so the other worker might never answer (a real CI run saw 80 of 80 on one).
    for _ in range(30):
        calls = [lambda: server.get("/conn"), lambda: server.get("/redis")] * 4
        results, _peak = concurrent_with_peak(calls, lambda: 0, timeout=30)
        for status, body in results:
            assert status == 200, body
            if "session" in body:
                seen.setdefault(body["pid"], set()).add(body["session"])
            else:
                redis_seen.setdefault(body["pid"], set()).add(body["client_id"])
        if len(seen) == workers and len(redis_seen) == workers:
            break
    assert len(seen) == workers and all(len(ids) == 1 for ids in seen.values()), seen
    used = [next(iter(ids)) for ids in seen.values()]
    assert len(set(used)) == workers and set(used) <= before, "two workers shared a session, or one opened late"
    assert all(len(ids) == 1 for ids in redis_seen.values()), redis_seen
    assert login.count() == workers and redis_clients.count() == workers
    assert server.stop(signal.SIGTERM) == 0
    wait_until(lambda: login.count() == 0, 5, what="0 database sessions after SIGTERM")
    wait_until(lambda: redis_clients.count() == 0, 5, what="0 Redis connections after SIGTERM")
    log = server.log()
    assert log.count("closed 1 connection(s)") == 2 * workers, log[-3000:]  # politely, in the lifespan shutdown
    assert login.password not in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_200_concurrent_requests_never_exceed_max_size_and_time_out_on_time(login, database, gunicorn, worker):
    """max_size 5, 200 requests at once, each holding a connection 0.3 s, timeout 1 s: at most 5
    sessions at any time, the requests that could not get a connection in time answer 503 after
    about 1 s, none hangs."""
    conf = async_conf({"default": login.config(max_size=5, timeout=1.0)}, worker=WORKERS[worker], workers=1)
    server = started(gunicorn(conf, app=APP), 1)
    check_a_burst_stays_within_max_size(server, login, busy, requests=200, max_size=5, slowest=6.0,
                                        label=f"{database} {worker}")  # fmt: skip


def check_a_burst_stays_within_max_size(server: Any, login: Any, busy: Any, *, requests: int, max_size: int,
                                        slowest: float, label: str) -> None:  # fmt: skip
    """*requests* GET /sleep?s=0.3 at once against a pool of *max_size* and timeout 1 s: at most
    *max_size* sessions at any time, the requests that got no connection in time answer 503 within
    *slowest* seconds (1 s of wait, plus the queueing of the clients on 2 cores), none hangs, and
    nothing stays out (*busy*: connections out in the worker)."""

    def call() -> tuple[int, float]:
        start = time.monotonic()
        status, _ = http_get(server.port, "/sleep?s=0.3", timeout=15)
        return status, time.monotonic() - start

    results, peak = concurrent_with_peak([call] * requests, login.count)
    statuses = [status for status, _ in results]
    assert len(results) == requests and set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= max_size and statuses.count(503) > 0
    slowest_503 = max(took for status, took in results if status == 503)
    figure(f"{label}: {requests} requests, max_size {max_size}, peak sessions", peak, "")
    figure(f"{label}: slowest 503 (timeout 1 s)", slowest_503)
    assert peak <= max_size, peak
    assert slowest_503 < slowest, slowest_503
    assert busy(server) == 0 and server.get("/conn")[0] == 200


def _hang_up_after(port: int, path: str, seconds: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        time.sleep(seconds)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_clients_gone_mid_query_leave_no_connection_out_and_no_protocol_error(login, database, gunicorn, worker):
    """40 clients send a request whose query sleeps 1 s on the server and hang up after 0.1 s; the
    endpoint sees the disconnect and cancels its query task. Then 20 requests under
    asyncio.wait_for(0.1). Every cancelled lease is dropped; nothing stays out, the next requests
    get answers on sessions in a clean state.

    PostgreSQL: psycopg asks the server to cancel the query, so the server's sessions never
    exceed max_size. MariaDB: aiomysql only closes its socket; the server ends the session when
    the statement ends (SLEEP's second here), so for that long the server counts a dropped
    session beside its replacement: the count goes back to at most max_size once they end."""
    conf = async_conf({"default": login.config(max_size=5, timeout=5)}, worker=WORKERS[worker], workers=1)
    server = started(gunicorn(conf, app=APP), 1)
    results, peak = concurrent_with_peak([lambda: _hang_up_after(server.port, "/sleep-watch?s=1", 0.1)] * 40,
                                         login.count)  # fmt: skip
    figure(f"{database} {worker}: most server sessions during 40 hang-ups (max_size 5)", peak, "")
    if database == "postgresql":
        assert peak <= 5, peak
    wait_until(lambda: login.count() <= 5, 10, what="the dropped sessions ended on the server")
    for _ in range(20):
        status, body = server.get("/sleep-timeout?s=1&limit=0.1")
        assert status == 504, body
    wait_until(lambda: busy(server) == 0, 10, what="no connection out after the storm")
    for _ in range(10):
        status, body = server.get("/conn")
        assert status == 200, body
    log = server.log()
    assert "Traceback" not in log and "protocol" not in log.lower(), log[-3000:]
    status, body = server.get("/stats")
    dropped = body["adb"]["default"]["connections_num"]
    figure(f"{database} {worker}: connections opened over 40 hang-ups and 20 timeouts", dropped, "")
    assert dropped > 5  # the cancelled leases were dropped, not kept


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_a_leaked_getconn_is_reclaimed_when_its_request_ends(login, gunicorn, worker):
    conf = async_conf({"default": login.config(max_size=1, timeout=2)}, worker=WORKERS[worker], workers=1)
    server = started(gunicorn(conf, app=APP), 1)
    for attempt in (1, 2):  # the first leak turns line recording on: the second names the line
        status, body = server.get("/leak")
        assert status == 200, body
        server.wait_log("was not given back by the end of its request (/leak)", count=attempt)
    assert "fastapi_async_app.py:" in server.log()
    for _ in range(5):
        status, body = server.get("/conn")
        assert status == 200, body  # max_size 1: the capacity came back
    assert body["session"] in login.session_ids()


def websocket_message(port: int, path: str, timeout: float = 10.0) -> dict[str, Any]:
    """Open a WebSocket on 127.0.0.1:*port* (RFC 6455 handshake over a plain socket), return the
    first text message as JSON, then answer the server's close. Every read is bounded."""
    import base64
    import json
    import os

    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())  # fmt: skip
        stream = sock.makefile("rb")
        status = stream.readline()
        assert b" 101 " in status, status
        while stream.readline() not in (b"\r\n", b""):
            pass
        head = stream.read(2)
        assert head[0] & 0x0F == 1, head  # a text frame
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(stream.read(2), "big")
        message = json.loads(stream.read(length))
        sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # our close frame (masked, empty)
        return dict(message)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", list(WORKERS))
def test_a_websocket_runs_in_a_request_scope_and_its_leak_is_reclaimed(login, gunicorn, worker):
    """A WebSocket call is a request too: the connection its handler took and never gave back is
    reclaimed when the call ends (logged with its path), and the capacity comes back (max_size 1)."""
    conf = async_conf({"default": login.config(max_size=1, timeout=2)}, worker=WORKERS[worker], workers=1)
    server = started(gunicorn(conf, app=APP), 1)
    message = websocket_message(server.port, "/ws-leak")
    server.wait_log("was not given back by the end of its request (/ws-leak)")
    for _ in range(3):
        status, body = server.get("/conn")
        assert status == 200, body  # max_size 1: the capacity came back
    # A reclaimed connection is closed (its holder may still use the object): the next is a new session.
    assert body["session"] != message["session"]
    wait_until(lambda: message["session"] not in login.session_ids(), 5, what="the leaked session closed")
    assert login.password not in server.log()


# -- faults -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_server_down_during_respawns_never_halts_the_master(login, proxy, database, gunicorn):
    """Workers recycled by max_requests while the server refuses every connect: each boots anyway
    (the lifespan startup logs and serves), requests answer 503 or 500, the master lives; the
    server back, requests succeed. (UvicornWorker: gunicorn 27's asgi worker logs "Autorestarting
    worker" at max_requests and keeps serving.)"""
    conf = async_conf({"default": login.config(port=proxy.port, connect_timeout=1, timeout=2)},
                      worker=WORKERS["UvicornWorker"], workers=2, extra="max_requests = 2")  # fmt: skip
    server = started(gunicorn(conf, app=APP), 2)
    assert server.get("/conn")[0] == 200
    fail_while_respawning(server, proxy)
    proxy.forward()
    healed = poll_until_ok(server, "/conn", 10.0, streak=5)
    figure(f"{database} uvicorn: 5 straight 200s after the DB returned", healed)
    assert login.password not in server.log()


@pytest.mark.timeout(90)
def test_every_session_killed_is_replaced_before_the_next_request_uses_it(login, gunicorn):
    conf = async_conf({"default": login.config(min_size=2, max_size=2)}, worker=WORKERS["AsgiWorker"], workers=2)
    server = started(gunicorn(conf, app=APP), 2)
    wait_until(lambda: login.count() == 4, 10, what="4 sessions")
    assert login.kill_all() == 4
    time.sleep(0.3)
    for _ in range(20):
        status, body = server.get("/conn")
        assert status == 200, body  # the probe saw each dead session: replaced, never a failed request
    assert "dropping dead connection" in server.log()


def boot_blackholed(server: Any, what: str, bound: float = 8.0) -> float:
    """Start *server* (one worker) with its database blackholed and a connect timeout of 1 s: its
    lifespan is ready within *bound* seconds, the warm-up's failure logged. Returns the seconds."""
    start = time.monotonic()
    started(server, 1)
    booted = time.monotonic() - start
    figure(f"{what}: boot with the server blackholed (connect timeout 1 s)", booted)
    assert booted < bound, booted
    assert "warm-up failed, will connect on demand" in server.log()
    return booted


@pytest.mark.timeout(90)
def test_a_server_blackholed_at_boot_bounds_the_boot_and_the_requests(login, proxy, database, gunicorn):
    proxy.blackhole()
    conf = async_conf({"default": login.config(port=proxy.port, connect_timeout=1, timeout=1)},
                      worker=WORKERS["AsgiWorker"], workers=1)  # fmt: skip
    server = gunicorn(conf, app=APP)
    boot_blackholed(server, f"{database} asgi")
    each_request_fails_within(server, "/conn", 3.0, (503,))
    proxy.forward()
    healed = poll_until_ok(server, "/conn", 10.0, streak=5)
    figure(f"{database} asgi: 5 straight 200s after the blackhole lifted", healed)


@pytest.mark.timeout(90)
def test_sigkill_of_a_worker_its_sessions_end_and_its_replacement_opens_its_own(login, gunicorn):
    conf = async_conf({"default": login.config()}, worker=WORKERS["AsgiWorker"], workers=2)
    server = started(gunicorn(conf, app=APP), 2)
    wait_until(lambda: login.count() == 2, 10, what="2 sessions")
    victim = server.worker_pids()[0]
    before = set(login.session_ids())
    import os

    os.kill(victim, signal.SIGKILL)
    server.wait_log("asyncio pool service(s) ready", count=3)
    wait_until(lambda: login.count() == 2 and set(login.session_ids()) != before, 15,
               what="the killed worker's session gone, its replacement's open")  # fmt: skip
    for _ in range(10):
        assert server.get("/conn")[0] == 200


# -- gunicorn-pool check -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_check_budgets_the_async_pools_of_an_asgi_worker(login, database, redis_clients, tmp_path):
    """``gunicorn-pool check`` lists an AsyncDatabasePool's pools with the asyncio worker's sizes
    (1/10: ``worker_connections`` tasks share them) and probes their server; before, it said
    "is not a DatabasePool: not checked" and budgeted nothing."""
    import subprocess
    import sys

    from support import ROOT

    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(async_conf({"default": login.config(), "capped": login.config(max_size=3)},
                               worker="gunicorn_pool.AsgiWorker", workers=3,
                               redis={"default": redis_clients.url()}))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", "-c", str(conf), "--json"], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    report = json.loads(proc.stdout)
    pools = {row["pool"]: row for row in report["pools"]}
    assert (pools["default"]["min_size"], pools["default"]["max_size"]) == (1, 10)
    assert pools["default"]["per_host"] == 30 and pools["capped"]["per_host"] == 9
    assert report["ok"] and all(server["fits"] and server["max_connections"] for server in report["servers"])
    assert login.password not in proc.stdout + proc.stderr


# -- figures: statsd and OpenTelemetry ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_asyncio_pools_report_to_statsd_and_opentelemetry(login, database, gunicorn):
    """The reporters read every service's figures, the asyncio ones included; OpenTelemetry's
    histograms are fed by the pools' observer, attached once the lifespan opened the asyncio
    pools (before, they were attached at boot, when those pools did not exist yet: no histogram)."""
    from test_metrics import StatsdListener

    statsd = StatsdListener()
    try:
        conf = async_conf({"default": login.config(max_size=3)}, worker=WORKERS["AsgiWorker"], workers=1,
                          extra="gunicorn_pool.configure(stats_interval=0.2)")  # fmt: skip
        server = started(gunicorn(conf, "--statsd-host", f"127.0.0.1:{statsd.port}", "--statsd-prefix", "shop",
                                  app="fastapi_otel_app:app"), 1)  # fmt: skip
        for _ in range(5):
            assert server.get("/conn")[0] == 200
        base = "shop.gunicorn_pool.adb.default."
        wait_until(lambda: statsd.counter_sum(base + "requests_num") == 5, 15, what="requests_num == 5 by statsd")
        assert 3 in statsd.gauges(base + "pool_max")
        status, seen = server.get("/otel")
        assert status == 200, seen
        pool = {"db.client.connection.pool.name": "adb.default"}
        uses = [count for attributes, count in seen.get("db.client.connection.use_time", []) if attributes == pool]
        assert uses and uses[0] >= 5, seen.get("db.client.connection.use_time")
        assert [pool, 3] in seen["db.client.connection.max"], seen["db.client.connection.max"]
    finally:
        statsd.close()
