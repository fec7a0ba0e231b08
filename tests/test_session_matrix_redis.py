"""The Redis session matrix: whatever a lease's commands leave on their connection, the next user's
commands get the right answer, from the configured database, under the configured name.

The pool has one connection (``db=3``, a client name of this test's own).
A first look takes a snapshot of the fresh connection (``CLIENT INFO``: id,
name, db, flags, subscriptions, MULTI state, user, protocol; ``CLIENT
TRACKINGINFO``; a key's value in db 3). Then a lease sends a session-changing
command by one of the ways redis-py lends a connection for several commands
(a single-connection client, also one whose block raises; a pipeline without
MULTI; the connection itself), the admin connection writes the key (a WATCH
left behind would then abort the next transaction), and the next user must
find: the same snapshot, the key's value from db 3 (not ``QUEUED``), and its
own MULTI/EXEC transaction applied. The same connection (``CLIENT ID``) when
the pool reset it with RESET and the handshake, a new one when the command
leaves a connection only closing cures (subscriptions, MONITOR, tracking,
CLIENT REPLY, QUIT). Through the pooled client itself, every such command
is refused before anything is sent.

Every command is bounded by ``socket_timeout`` (the pool's, and the admin
client's); a throwaway redis-server (a port and directory of its own) plays
the server that requires a password, and the one without RESET (Redis < 6.2:
``--rename-command RESET ""``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import servers
import test_redis
from support import free_port, redis_admin, wait_until

from gunicorn_pool.redis import RedisPool

pytestmark = pytest.mark.redis

DB = 3
BOUNDS = {"min_size": 1, "max_size": 1, "timeout": 5, "socket_timeout": 5, "socket_connect_timeout": 3}


@dataclasses.dataclass(frozen=True)
class Case:
    """*commands* are sent in one lease. *outcome*: ``reset`` (the same connection, RESET and the
    handshake) or ``drop`` (closed; the next user gets a new one). *paths*: the ways the case
    runs (some commands cannot be read back by redis-py: CLIENT REPLY OFF). *error*: the server
    refuses the command (READONLY without cluster mode): tracked all the same."""

    commands: tuple[tuple[Any, ...], ...]
    outcome: str = "reset"
    paths: tuple[str, ...] = ("single", "single, raises", "pipeline", "connection")
    error: bool = False


def cmds(*commands: Any) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(c.split()) if isinstance(c, str) else c for c in commands)


CASES: dict[str, Case] = {
    "MULTI": Case(cmds("MULTI")),
    "MULTI, a queued SET": Case(cmds("MULTI", ("SET", "{key}", "queued"))),
    # (a pipeline's WATCH without EXEC is redis-py's own watch(): it sends UNWATCH itself)
    "WATCH": Case(cmds(("WATCH", "{key}")), paths=("single", "single, raises", "connection")),
    "SELECT": Case(cmds("SELECT 1")),
    "select, lower case, bytes": Case(cmds((b"select", b"1"))),
    "CLIENT SETNAME": Case(cmds("CLIENT SETNAME someone-else")),
    "CLIENT NO-EVICT": Case(cmds("CLIENT NO-EVICT ON"), outcome="drop"),
    "READONLY": Case(cmds("READONLY"), error=True),
    "AUTH": Case(cmds("AUTH default any-password")),  # the default user has nopass: it accepts any
    "RESET": Case(cmds("RESET")),
    "SUBSCRIBE": Case(cmds("SUBSCRIBE gp-matrix-channel"), outcome="drop"),
    "PSUBSCRIBE": Case(cmds("PSUBSCRIBE gp-matrix-*"), outcome="drop"),
    "SSUBSCRIBE": Case(cmds("SSUBSCRIBE gp-matrix-shard"), outcome="drop"),
    "CLIENT TRACKING": Case(cmds("CLIENT TRACKING ON"), outcome="drop"),
    "CLIENT REPLY OFF": Case(cmds("CLIENT REPLY OFF"), outcome="drop", paths=("connection, unread",)),
    "MONITOR": Case(cmds("MONITOR"), outcome="drop"),
    "HELLO 2": Case(cmds("HELLO 2")),
    "HELLO 3": Case(cmds("HELLO 3"), outcome="drop", paths=("connection, unread",)),
    "QUIT": Case(cmds("QUIT"), outcome="drop", paths=("connection",)),
}


def _fill(command: tuple[Any, ...], key: str) -> tuple[Any, ...]:
    return tuple(key if part == "{key}" else part for part in command)


def _send_single(r: Any, commands: list[tuple[Any, ...]], raises: bool, error: bool) -> None:
    with r.client() as single:
        for command in commands:
            try:
                single.execute_command(*command)
            except redis.ResponseError:
                assert error
        if raises:
            raise RuntimeError("the view failed after changing the session")


def _send_pipeline(r: Any, commands: list[tuple[Any, ...]], error: bool) -> None:
    with r.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        for reply in pipe.execute(raise_on_error=False):
            assert error or not isinstance(reply, Exception), reply


def _send_connection(service: RedisPool, commands: list[tuple[Any, ...]], read: bool) -> None:
    adapter = service.connection_pool()
    conn = adapter.get_connection()
    try:
        for command in commands:
            conn.send_command(*command)
            if read:
                with contextlib.suppress(redis.ResponseError):
                    conn.read_response()
    finally:
        adapter.release(conn)


def send(path: str, service: RedisPool, commands: list[tuple[Any, ...]], case: Case) -> None:
    r = service.client()
    if path.startswith("single"):
        with contextlib.suppress(RuntimeError):
            _send_single(r, commands, raises=path.endswith("raises"), error=case.error)
    elif path == "pipeline":
        _send_pipeline(r, commands, case.error)
    else:
        _send_connection(service, commands, read=not path.endswith("unread"))


def snapshot(r: Any, key: str) -> dict[str, Any]:
    """What the next user of the one connection finds (its CLIENT INFO id apart)."""
    with r.client() as single:
        info = single.client_info()
        tracking = single.execute_command("CLIENT", "TRACKINGINFO")
        value = single.get(key)
    fields = ("name", "db", "flags", "sub", "psub", "ssub", "multi", "user", "resp")
    return {"id": info["id"], "info": {f: info.get(f) for f in fields}, "tracking": tracking, "value": value}


def transaction_applies(r: Any, key: str) -> bool:
    """The next user's own MULTI/EXEC runs (a WATCH left behind would abort it: WatchError)."""
    with r.pipeline() as pipe:
        return pipe.set(key + ":tx", "done").get(key + ":tx").execute() == [True, b"done"]


# The factory of tests/test_redis.py (assigned, not imported: no F811 on the arguments).
make_service = test_redis.make_service


@contextlib.contextmanager
def opened(url: str) -> Iterator[RedisPool]:
    """A RedisPool on *url* (a server of this test's own), closed after."""
    service = RedisPool({"default": url}, name="redis-matrix")
    service.init_pool()
    try:
        yield service
    finally:
        service.close_pool()


@pytest.fixture
def key(redis_clients: Any) -> Iterator[str]:
    name = f"gunicorn_pool:matrix:{redis_clients.name}"
    admin = redis_admin()
    admin.select(DB)  # the admin client's own connection, not a pooled one
    admin.set(name, "from-db-3")
    yield name
    admin.delete(name, name + ":tx")
    admin.close()


CASE_PATHS = [(name, path) for name, case in CASES.items() for path in case.paths]


@pytest.mark.parametrize("name, path", CASE_PATHS, ids=[f"{n}-{p}" for n, p in CASE_PATHS])
def test_the_next_user_gets_the_configured_db_and_name(make_service, redis_clients, key, name, path):
    case = CASES[name]
    service = make_service(db=DB, **BOUNDS)
    r = service.client()
    fresh = snapshot(r, key)
    assert fresh["info"]["db"] == DB and fresh["info"]["name"] == redis_clients.name
    send(path, service, [_fill(c, key) for c in case.commands], case)
    admin = redis_admin()
    try:
        admin.select(DB)
        admin.set(key, "from-db-3")  # touches a key a WATCH left behind would watch
    finally:
        admin.close()
    after = snapshot(r, key)
    assert after["info"] == fresh["info"] and after["tracking"] == fresh["tracking"], name
    assert after["value"] == b"from-db-3", after["value"]
    assert transaction_applies(r, key)
    stats = service.stats()["default"]
    if case.outcome == "reset":
        assert after["id"] == fresh["id"] and stats["connections_reset"] == 1, (after["id"], stats)
    else:
        assert after["id"] != fresh["id"] and stats["connections_reset"] == 0, (after["id"], stats)
    assert stats["pool_size"] == 1 and redis_clients.count() == 1


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if n not in ("QUIT",)])
def test_the_pooled_client_refuses_a_session_command_before_sending_it(make_service, redis_clients, key, name):
    """On the pooled client a command's connection goes back right after it: MULTI, SELECT,
    SUBSCRIBE... can only reach the next request. They raise, naming what to use instead."""
    service = make_service(db=DB, **BOUNDS)
    r = service.client()
    fresh = snapshot(r, key)
    for command in CASES[name].commands:
        command = _fill(command, key)
        if command[0] in ("SET",):
            continue
        with pytest.raises(redis.RedisError, match="goes back to the pool right after the command: use"):
            r.execute_command(*command)
    after = snapshot(r, key)
    assert after == fresh  # nothing was sent: the same connection, untouched, never reset
    assert service.stats()["default"]["connections_reset"] == 0


def test_pipelines_watch_flows_and_pubsub_work_as_before_and_cost_no_reset(make_service, redis_clients, key):
    service = make_service(db=DB, **{**BOUNDS, "max_size": 2})
    r = service.client()
    first = r.client_id()
    with r.pipeline() as pipe:  # MULTI ... EXEC in one batch
        assert pipe.set(key, "a").get(key).execute() == [True, b"a"]

    def bump(pipe: Any) -> None:
        value = pipe.get(key)
        pipe.multi()
        pipe.set(key, value + b"b")

    assert r.transaction(bump, key) == [True]  # WATCH, GET, MULTI ... EXEC
    with r.pipeline() as pipe:
        pipe.watch(key)  # WATCH, then the block ends without EXEC: redis-py sends UNWATCH
    with r.client() as single:
        single.execute_command("MULTI")
        single.execute_command("SET", key, "c")
        assert single.execute_command("EXEC") == [b"OK"]
    assert r.get(key) == b"c" and r.client_id() == first
    assert service.stats()["default"]["connections_reset"] == 0
    pubsub = r.pubsub()
    pubsub.subscribe("gp-matrix-channel")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    pubsub.close()  # disconnected by redis-py, dropped by the pool, as before
    wait_until(lambda: redis_clients.count() == 0, 5, what="the PubSub connection closed")
    assert service.stats()["default"]["connections_reset"] == 0 and r.ping()


# -- servers of this test's own ------------------------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")


@contextlib.contextmanager
def private_redis(*options: str) -> Iterator[int]:
    """A throwaway redis-server on a free port, started and stopped by pid (tests/servers.py)."""
    servers._need(REDIS_SERVER)
    directory = servers.make_dir("redis")
    port = free_port()
    args = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(directory), *options]  # fmt: skip
    process = servers._Process("redis-server", args, directory / "redis.log", directory).start()
    try:
        password = options[options.index("--requirepass") + 1] if "--requirepass" in options else None
        client = redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2)
        servers._wait_ready(process, lambda: _pings(client), 10, f"redis-server on port {port}")
        client.close()
        yield port
    finally:
        process.stop(timeout=10)
        servers.remove_dir(directory)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_reset_authenticates_again_with_the_pools_password():
    password = "pw-" + secrets.token_hex(6)
    url = f"redis://:{password}@127.0.0.1:{{port}}/2?client_name=gp-auth&min_size=1&max_size=1&socket_timeout=5"
    with private_redis("--requirepass", password) as port, opened(url.format(port=port)) as service:
        r = service.client()
        r.set("k", "from-db-2")
        first = r.client_id()
        with r.client() as single:
            assert single.execute_command("RESET") == "RESET"  # logged out, db 0, no name
        info = r.client_info()  # the next user: authenticated again, db 2, its name
        assert (info["id"], info["db"], info["name"]) == (first, 2, "gp-auth") and r.get("k") == b"from-db-2"
        assert service.stats()["default"]["connections_reset"] == 1


def test_a_server_without_reset_gets_the_connection_closed_instead(caplog):
    caplog.set_level(logging.INFO, logger="gunicorn_pool")
    url = "redis://127.0.0.1:{port}/2?client_name=gp-old&min_size=1&max_size=1&socket_timeout=5"
    with private_redis("--rename-command", "RESET", '""') as port, opened(url.format(port=port)) as service:
        r = service.client()
        for _ in range(2):
            first = r.client_id()
            with r.client() as single:
                single.execute_command("SELECT", 5)
            info = r.client_info()
            assert info["id"] != first and (info["db"], info["name"]) == (2, "gp-old")
        stats = service.stats()["default"]
        assert stats["connections_reset"] == 0 and stats["connections_num"] == 3
        assert caplog.text.count("does not know RESET") == 1  # asked once, then closed without asking
