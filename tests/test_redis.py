"""RedisPool at pool level: configs, bounded FIFO waits, pipelines and PubSub through redis-py's own
client, dead and dirty connections, fork, gevent. Real Redis (``redis_clients`` counts this test's own
connections by their client name); the config cases need no server."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from support import REDIS_HOST, REDIS_PORT, ROOT, figure, wait_until

import gunicorn_pool
from gunicorn_pool import ConfigError, ConnectError, PoolClosed, PoolStartupError, PoolTimeout, TooManyRequests
from gunicorn_pool.base import WorkerProfile, set_profile
from gunicorn_pool.redis import RedisPool, parse_redis_config

SECRET = "Zq9-s3cr3t-Xw"
GEVENT_SCRIPT = Path(__file__).resolve().parent / "scripts" / "gevent_redis.py"
MakeService = Callable[..., RedisPool]


@pytest.fixture
def make_service(redis_clients: Any) -> Iterator[MakeService]:
    """Factory: an opened RedisPool whose one pool "default" carries this test's client name."""
    made: list[RedisPool] = []

    def make(**query: Any) -> RedisPool:
        service = RedisPool({"default": redis_clients.url(**query)}, name="test-redis")
        made.append(service)
        service.init_pool()
        return service

    try:
        yield make
    finally:
        for service in made:
            service.close_pool()


@pytest.fixture
def sync_profile() -> Iterator[None]:
    set_profile(WorkerProfile())
    yield
    set_profile(WorkerProfile())


def start_threads(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=a, daemon=True) for a in args]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a thread did not finish"


# -- configs (no server) ---------------------------------------------------------------------


def test_url_and_dict_configs_parse_to_the_same_settings():
    url = parse_redis_config("c", f"redis://app:{SECRET}@cache.internal:6380/3?max_size=4&socket_timeout=2.5")
    cfg = parse_redis_config("c", {"host": "cache.internal", "port": 6380, "db": 3, "username": "app",
                                   "password": SECRET, "max_size": 4, "socket_timeout": 2.5})  # fmt: skip
    assert url == cfg
    assert (cfg.host, cfg.port, cfg.db, cfg.max_size, cfg.socket_timeout) == ("cache.internal", 6380, 3, 4, 2.5)
    assert cfg.socket_connect_timeout == 5.0 and not cfg.owner_check
    assert cfg.dsn == "redis://app:***@cache.internal:6380/3"
    assert SECRET not in repr(cfg) and SECRET not in repr(RedisPool({"c": cfg}))
    tls = parse_redis_config("t", f"rediss://:{SECRET}@h/0?ssl_cert_reqs=none")
    assert tls.ssl and tls.ssl_cert_reqs == "none" and tls.dsn == "rediss://:***@h:6379/0"
    unix = parse_redis_config("u", f"unix://:{SECRET}@/run/redis/redis.sock?db=2")
    assert (unix.path, unix.db, unix.dsn) == ("/run/redis/redis.sock", 2, "unix://:***@/run/redis/redis.sock?db=2")
    assert parse_redis_config("d", {}).address == "127.0.0.1:6379"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"max_sise": 4}, "unknown option 'max_sise'"),
        ("redis://h/0?max_sise=4", "unknown option 'max_sise'"),
        ({"port": "sixty"}, "port must be"),
        ({"db": -1}, "db must be >= 0"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"socket_timeout": "nan"}, "socket_timeout must be"),
        ({"protocol": 4}, "protocol must be"),
        ({"min_size": 5, "max_size": 2}, "min_size (5) is larger than max_size (2)"),
        ({"ssl_ca_certs": "/ca.pem"}, "'ssl_ca_certs' does not apply to redis:// without TLS"),
        ({"path": "/s.sock", "port": 1}, "'port' does not apply to a unix socket"),
        ({"owner_check": False}, "'owner_check' does not apply to Redis"),
        ({"reset_session": False}, "'reset_session' does not apply to Redis"),
        ("redis://h/zero", "database number"),
        ("mysql://h/0", "redis://, rediss:// or unix://"),
        ("unix://host/s.sock", "names no host"),
    ],
)
def test_a_bad_key_or_value_is_a_config_error_naming_pool_and_key(value, words):
    with pytest.raises(ConfigError) as info:
        RedisPool({"cache": value})
    assert "'cache'" in str(info.value) and words in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:se/cr{SECRET}@cache.internal:6379/0",
        f"redis://:4321#{SECRET}@cache.internal/0",
        f"redis://:p?{SECRET}@cache.internal/0",
        f"redis://:[{SECRET}]@cache.internal/0",
        f"redis://:p@{SECRET}@cache.internal/0",
        f"rediss://app:x/{SECRET}@cache.internal/0",
    ],
)
def test_unencoded_special_characters_in_the_password_are_refused_without_a_trace_of_it(url):
    with pytest.raises(ConfigError) as info:
        parse_redis_config("cache", url)
    text = str(info.value)
    assert "percent-encode" in text and "'cache'" in text, text
    for part in (SECRET, SECRET[:6], SECRET[-6:]):
        assert part not in text


def test_secrets_are_never_described(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        parse_redis_config("c", {"password": 12345})
    assert "12345" not in str(info.value) and "password must be" in str(info.value)
    monkeypatch.setenv("GP_TEST_REDIS_PW", SECRET)
    assert parse_redis_config("c", {"password_env": "GP_TEST_REDIS_PW"}).password == SECRET
    (tmp_path / "pw").write_text(SECRET + "\n")
    cfg = parse_redis_config("c", f"redis://h/0?password_file={tmp_path / 'pw'}")
    assert cfg.password == SECRET and cfg.dsn == "redis://:***@h:6379/0"
    with pytest.raises(ConfigError, match="give the password once"):
        parse_redis_config("c", {"password": "x", "password_env": "GP_TEST_REDIS_PW"})


def test_importing_gunicorn_pool_does_not_import_redis():
    code = ("import sys, gunicorn_pool; assert 'redis' not in sys.modules; gunicorn_pool.RedisPool;"
            " print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


# -- redis-py through the pool ----------------------------------------------------------------


@pytest.mark.redis
def test_commands_pipelines_and_transactions_run_on_pooled_connections(make_service, redis_clients):
    service = make_service(min_size=1, max_size=2)
    assert redis_clients.count() == 1  # opened by init_pool(), before any command
    r = service.client()
    assert service.client() is r and isinstance(r, redis.Redis)
    key = f"gunicorn_pool:test:{redis_clients.name}"
    try:
        r.set(key, 1)
        with r.pipeline() as pipe:
            assert pipe.incr(key).incr(key).get(key).execute() == [2, 3, b"3"]

        def bump(pipe: Any) -> None:
            value = int(pipe.get(key))
            pipe.multi()
            pipe.set(key, value * 10)

        assert r.transaction(bump, key) == [True]  # WATCH ... MULTI/EXEC on one connection
        assert r.get(key) == b"30"
    finally:
        r.delete(key)
    stats = service.stats()["default"]
    assert stats["pool_size"] == 1 and stats["pool_available"] == 1 and stats["connections_num"] == 1
    assert stats["requests_num"] >= 5
    assert redis_clients.count() == 1  # every command gave its connection back


@pytest.mark.redis
def test_select_is_refused_on_the_pooled_client_and_reset_after_a_single_connection_client(make_service):
    """On the pooled client SELECT would only move the connection of that one command (and the
    next request's): refused, raw or not. A single-connection client keeps its connection for
    the block: SELECT works there, and the connection is reset when it goes back."""
    service = make_service(max_size=1)
    r = service.client()
    first = r.client_id()
    for select in (r.select, lambda n: r.execute_command("SELECT", n), lambda n: r.execute_command(b"select", n)):
        with pytest.raises(redis.RedisError, match="one named pool per database"):
            select(5)
    with r.client() as single:
        assert single.select(5) is True and single.client_info()["db"] == 5
    info = r.client_info()
    assert (info["id"], info["db"]) == (first, 0)
    assert service.stats()["default"]["connections_reset"] == 1


@pytest.mark.redis
def test_multi_through_execute_command_never_leaves_the_next_user_queuing(make_service, redis_clients):
    """``execute_command("MULTI")`` left the connection queuing: every later user's GET returned
    b'QUEUED'. Refused on the pooled client; through a single-connection client (or a pipeline,
    or the connection itself) the connection is reset when it goes back."""
    service = make_service(max_size=1)
    r = service.client()
    key = f"gunicorn_pool:test:{redis_clients.name}"
    r.set(key, "value")
    try:
        with pytest.raises(redis.RedisError, match="MULTI on the pooled client"):
            r.execute_command("MULTI")
        assert r.get(key) == b"value"
        with r.client() as single:
            assert single.execute_command("MULTI") == b"OK"
            assert single.get(key) == b"QUEUED"  # the server queues: the block never EXECs
            start = time.perf_counter()
        figure("redis return with RESET and the handshake", (time.perf_counter() - start) * 1000, "ms")
        assert r.get(key) == b"value" and r.get(key) == b"value"
        assert service.stats()["default"]["connections_reset"] == 1
    finally:
        r.delete(key)


@pytest.mark.redis
def test_a_command_waits_in_turn_and_times_out_with_pool_timeout(make_service, redis_clients):
    service = make_service(max_size=1, timeout=0.5)
    r = service.client()
    holder = r.client()  # a single-connection client holds the pool's only connection
    holder.ping()
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        r.get("gunicorn_pool:test:x")
    elapsed = time.monotonic() - start
    assert 0.495 <= elapsed < 1.5, elapsed
    assert "0.5s" in str(info.value)
    holder.close()  # gives the connection back
    assert r.ping() is True
    stats = service.stats()["default"]
    assert stats["requests_timeouts"] == 1 and stats["requests_waiting"] == 0
    assert redis_clients.count() == 1


@pytest.mark.redis
def test_max_waiting_turns_a_command_away_at_once(make_service):
    service = make_service(max_size=1, max_waiting=1, timeout=10)
    r = service.client()
    holder = r.client()
    holder.ping()
    waiter = start_threads(lambda: r.ping(), [()])
    wait_until(lambda: service.stats()["default"]["requests_waiting"] == 1, 5, what="1 waiter")
    start = time.monotonic()
    with pytest.raises(TooManyRequests):
        r.ping()
    assert time.monotonic() - start < 0.2
    holder.close()
    join_all(waiter)
    assert service.stats()["default"]["requests_errors"] == 1


@pytest.mark.redis
def test_waiting_commands_are_served_in_arrival_order(make_service, redis_clients):
    """12 threads queue on max_size=2 one after another; they are served in that order. The
    test controls every hand-over: each connection given back lets exactly one waiter in."""
    count = 12
    service = make_service(min_size=2, max_size=2, timeout=30)
    r = service.client()
    held = [r.client(), r.client()]
    for h in held:
        h.ping()
    granted: queue.Queue[int] = queue.Queue()
    release = [threading.Event() for _ in range(count)]
    adapter = service.connection_pool()

    def user(i: int) -> None:
        conn = adapter.get_connection()
        try:
            granted.put(i)
            conn.send_command("PING")
            conn.read_response()
            release[i].wait(20)
        finally:
            adapter.release(conn)

    threads = []
    for i in range(count):  # arrival order is well defined: i queues once i-1 is queued
        threads += start_threads(user, [(i,)])
        wait_until(lambda n=i + 1: service.stats()["default"]["requests_waiting"] == n, 5, what=f"{i + 1} waiters")
    order: list[int] = []
    for h in held:
        h.close()
        order.append(granted.get(timeout=5))
    for k in range(count):
        release[order[k]].set()  # one connection comes back: exactly one waiter gets it
        if len(order) < count:
            order.append(granted.get(timeout=5))
    join_all(threads)
    assert order == list(range(count)), order
    assert redis_clients.count() == 2


@pytest.mark.redis
def test_pubsub_works_and_its_connection_is_dropped_when_it_closes(make_service, redis_clients):
    service = make_service(min_size=1, max_size=2)
    r = service.client()
    channel = f"gunicorn_pool:test:{redis_clients.name}"
    pubsub = r.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    assert r.publish(channel, "hi") == 1  # the client's own commands use the other connection
    assert pubsub.get_message(timeout=2)["data"] == b"hi"
    assert redis_clients.count() == 2
    pubsub.close()  # redis-py disconnects it before giving it back: never lent again
    wait_until(lambda: redis_clients.count() == 1, 5, what="the PubSub connection closed")
    stats = service.stats()["default"]
    assert stats["pool_size"] == 1 and stats["connections_num"] == 2
    assert r.publish(channel, "nobody") == 0


@pytest.mark.redis
def test_a_connection_killed_with_client_kill_is_replaced_on_checkout(make_service, redis_clients):
    service = make_service(max_size=1)
    r = service.client()
    before = r.client_id()
    assert redis_clients.kill_all() == 1
    wait_until(lambda: redis_clients.count() == 0, 5, what="killed")
    time.sleep(0.01)  # idle for more than probe_after
    after = r.client_id()  # the checkout's socket poll saw EOF: a new connection, no error
    assert after != before
    stats = service.stats()["default"]
    assert stats["connections_lost"] == 1 and stats["connections_num"] == 2 and stats["requests_errors"] == 0


@pytest.mark.redis
def test_an_unread_reply_is_never_read_by_the_next_command(make_service, redis_clients):
    """A connection given back with a reply nobody read (low-level use). The stale reply is
    "PONG": the checkout's PING would take it for its own answer and leave its own PONG for
    the next command. The checkout finds bytes on the idle socket and replaces it instead."""
    service = make_service(max_size=1)
    r = service.client()
    key = f"gunicorn_pool:test:{redis_clients.name}"
    r.set(key, "value")
    adapter = service.connection_pool()
    conn = adapter.get_connection()
    conn.send_command("PING")
    adapter.release(conn)
    time.sleep(0.05)  # the reply arrives; idle for more than probe_after
    try:
        assert r.get(key) == b"value"
        assert r.get(key) == b"value"
    finally:
        r.delete(key)
    assert service.stats()["default"]["connections_lost"] == 1


@pytest.mark.redis
def test_a_command_interrupted_by_a_base_exception_drops_its_connection(make_service, redis_clients):
    service = make_service(max_size=1)
    r = service.client()
    first = r.client_id()
    r.set_response_callback("ECHO", lambda response, **options: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        r.echo("x")
    assert r.client_id() != first
    assert service.stats()["default"]["connections_num"] == 2


@pytest.mark.redis
def test_a_pubsub_left_open_by_a_request_is_reclaimed_and_never_reconnects(make_service, redis_clients, caplog):
    service = make_service(max_size=2)
    r = service.client()
    with gunicorn_pool.request_scope("GET /subscribe"):
        pubsub = r.pubsub()
        pubsub.subscribe("gunicorn_pool:test:leak")
        pubsub.get_message(timeout=2)
        assert redis_clients.count() == 1  # the pool's one idle connection, now the PubSub's
    wait_until(lambda: redis_clients.count() == 0, 5, what="the leaked PubSub connection closed")
    assert service.stats()["default"]["connections_leaked"] == 1
    assert "was not given back by the end of its request" in caplog.text
    with pytest.raises(redis.ConnectionError, match="closed by its pool"):
        pubsub.subscribe("again")  # redis-py would reconnect it behind the pool's back
    pubsub.close()
    time.sleep(0.1)
    assert redis_clients.count() == 0
    assert r.ping() is True and redis_clients.count() == 1  # the capacity came back


@pytest.mark.redis
def test_socket_timeout_applies_after_the_handshake_and_the_checkout_ping(make_service):
    """The handshake runs under socket_connect_timeout, the connection under socket_timeout:
    a 1 s BLPOP after a checkout ping (check_interval=0) outlasts the connect timeout."""
    service = make_service(socket_connect_timeout=0.3, socket_timeout=5, check_interval=0)
    r = service.client()
    start = time.monotonic()
    assert r.blpop("gunicorn_pool:test:missing", timeout=1) is None
    assert time.monotonic() - start >= 0.95
    service2 = make_service(socket_timeout=0.3)
    with pytest.raises(redis.TimeoutError):
        service2.client().blpop("gunicorn_pool:test:missing", timeout=2)
    assert service2.stats()["default"]["pool_size"] == 0  # a timed-out connection is dropped


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_server_that_accepts_and_never_answers_costs_socket_connect_timeout(silent_server, caplog, sync_profile):
    caplog.set_level(logging.INFO, logger="gunicorn_pool")
    service = RedisPool({"hung": f"redis://:{SECRET}@127.0.0.1:{silent_server}/0?socket_connect_timeout=0.5"})
    start = time.monotonic()
    service.init_pool()  # never raises for an unreachable server
    assert time.monotonic() - start < 3
    assert f"pool hung (redis://:***@127.0.0.1:{silent_server}/0)" in caplog.text
    start = time.monotonic()
    with pytest.raises(ConnectError) as info:
        time.sleep(2.2)  # past the reconnect back-off (2 s max)
        start = time.monotonic()
        service.client("hung").get("x")
    assert time.monotonic() - start < 3
    assert f"127.0.0.1:{silent_server}" in str(info.value)
    assert SECRET not in caplog.text and SECRET not in str(info.value)
    service.close_pool()


def test_unreachable_server_logs_pool_and_host_and_strict_fails_the_first_start(caplog, sync_profile):
    port = _free_port()
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0?socket_connect_timeout=1"
    service = RedisPool({"default": url})
    service.init_pool()
    assert f"pool default (redis://:***@127.0.0.1:{port}/0)" in caplog.text and "Connection refused" in caplog.text
    assert SECRET not in caplog.text
    with pytest.raises(ConnectError):
        service.client().ping()
    service.close_pool()
    set_profile(WorkerProfile(first_boot=True))
    strict = RedisPool({"default": url + "&strict=true"})
    with pytest.raises(PoolStartupError):
        strict.init_pool()
    set_profile(WorkerProfile(first_boot=False))
    RedisPool({"default": url + "&strict=true"}).init_pool()  # a respawn never fails


@pytest.mark.redis
def test_use_after_close_pool_raises_pool_closed(make_service, redis_clients):
    service = make_service()
    r = service.client()
    r.ping()
    service.close_pool()
    wait_until(lambda: redis_clients.count() == 0, 5, what="closed")
    with pytest.raises(PoolClosed):
        r.ping()
    with pytest.raises(PoolClosed):
        service.client()
    service.init_pool()  # opened again: the same client works again
    assert r.ping() is True and redis_clients.count() == 1


# -- fork ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_forked_child_drops_the_inherited_connection_without_cutting_the_parents(make_service, redis_clients):
    """The child's first command adopts the process: it drops the inherited connection (the
    socket is closed, never shut down: a shutdown would end the parent's connection too) and
    opens its own. The parent's connection lives on."""
    service = make_service(max_size=1)
    r = service.client()
    parent_id = r.client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            signal.alarm(10)
            child_id = r.client_id()
            stats = service.stats()["default"]
            os.write(write, json.dumps({"id": child_id, "num": stats["connections_num"]}).encode())
            service.close_pool()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = json.loads(os.read(read, 4096) or b"{}")
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert child["id"] != parent_id and child["num"] == 1
    time.sleep(0.05)  # idle past probe_after: the parent's checkout polls its socket
    assert r.client_id() == parent_id  # not cut by the child
    stats = service.stats()["default"]
    assert stats["connections_lost"] == 0 and stats["connections_num"] == 1
    wait_until(lambda: redis_clients.count() == 1, 5, what="the child's connection closed")


# -- gevent ----------------------------------------------------------------------------------


def run_gevent(redis_clients: Any, *args: str, **config: Any) -> dict[str, Any]:
    cfg = {"host": REDIS_HOST, "port": REDIS_PORT, "client_name": redis_clients.name, **config}
    proc = subprocess.run([sys.executable, str(GEVENT_SCRIPT), *args], input=json.dumps(cfg), capture_output=True,
                          text=True, timeout=90, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.redis
def test_gevent_greenlets_share_few_connections_in_turn_without_blocking_the_hub(redis_clients):
    """40 greenlets BLPOP 50 ms each on 2 connections (a pool built before patch_all()): never
    more than 2 at once, served in spawn order, and a ticker greenlet runs inside the waits."""
    count, block, size = 40, 0.05, 2
    out = run_gevent(redis_clients, str(count), str(block), min_size=size, max_size=size, timeout=30)
    assert out["patched"] and out["ok"] == count, out
    assert out["stats"]["connections_num"] == size
    waves = [sorted(out["served"][i : i + size]) for i in range(0, count, size)]
    assert waves == [list(range(i, i + size)) for i in range(0, count, size)], out["served"]
    assert out["elapsed"] >= count * block / size * 0.98, out["elapsed"]
    assert out["covered"] >= 0.9 * count, out


@pytest.mark.redis
def test_gevent_hub_check_detects_blocking_without_patching(redis_clients):
    """Control for the test above: unpatched sockets block the hub and the tick check sees it."""
    out = run_gevent(redis_clients, "6", "0.05", "--no-patch", min_size=2, max_size=2, timeout=30)
    assert not out["patched"] and out["ok"] == 6
    assert out["covered"] == 0, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
