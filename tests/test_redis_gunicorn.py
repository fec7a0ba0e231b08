"""RedisPool in real gunicorn against the real Redis: one pool per worker, opened before the first
request and closed at exit, in sync, gthread and gevent workers; every pooled connection killed
mid-traffic costs no request."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from support import WORKER_CLASSES, wait_until

pytestmark = pytest.mark.redis

APP = "redis_app:app"
SECRET = "Zq9-s3cr3t-Xw"
# POOLS on a line of its own: a failing RedisPool(...) makes gunicorn print the traceback
# with the source line of the call.
CONF = """
import gunicorn_pool
POOLS = {pools!r}
gunicorn_pool.register(gunicorn_pool.RedisPool(POOLS), name="redis")
worker_class = {worker!r}
workers = {workers}
{extra}
"""


def conf(pools: dict[str, Any], *, kind: str = "sync", workers: int = 3, extra: str = "") -> str:
    worker, kind_extra = WORKER_CLASSES[kind]
    return CONF.format(pools=pools, worker=worker, workers=workers,
                       extra="\n".join(x for x in (kind_extra, extra) if x))  # fmt: skip


@pytest.mark.parametrize("kind", list(WORKER_CLASSES))
def test_each_worker_opens_its_pool_before_the_first_request_and_closes_it_at_exit(gunicorn, redis_clients, kind):
    workers = 3
    server = gunicorn(conf({"default": redis_clients.url()}, kind=kind, workers=workers), app=APP)
    server.start(workers_ready=workers)
    # Exactly one connection per worker before any request (min_size 1 in every worker kind).
    wait_until(lambda: redis_clients.count() == workers, 10, what=f"{workers} connections")
    before = set(redis_clients.ids())
    seen: dict[int, set[int]] = {}
    for _ in range(45):
        status, body = server.get("/conn")
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body["client_id"])
    used = set().union(*seen.values())
    assert used <= before, "a request opened a connection the boot did not"
    assert all(len(ids) == 1 for ids in seen.values()), seen  # one worker, one connection
    assert len(used) == len(seen), "two workers shared a connection"
    status, body = server.get("/incr")
    assert status == 200 and body["value"] >= 1, body
    assert redis_clients.count() == workers
    assert server.stop(signal.SIGTERM) == 0, server.log()[-2000:]
    wait_until(lambda: redis_clients.count() == 0, 5, what="0 connections after SIGTERM")
    log = server.log()
    assert log.count("pool default (redis://127.0.0.1:") >= workers and "opened 1 connection(s)" in log


@pytest.mark.parametrize("kind", list(WORKER_CLASSES))
def test_client_kill_of_every_pooled_connection_fails_no_request(gunicorn, redis_clients, kind):
    workers = 2
    server = gunicorn(conf({"default": redis_clients.url()}, kind=kind, workers=workers), app=APP)
    server.start(workers_ready=workers)
    for _ in range(10):
        assert server.get("/conn")[0] == 200
    killed = set(redis_clients.ids())
    assert len(killed) == workers
    assert redis_clients.kill_all() == workers
    results = [server.get("/conn") for _ in range(20)]
    bad = [r for r in results if r[0] != 200]
    assert not bad, bad
    assert not killed & {body["client_id"] for _, body in results}
    assert "dropping dead connection" in server.log()


def test_a_wrong_password_does_not_halt_the_server_and_never_reaches_the_log(gunicorn, redis_clients):
    """The test server has no password: AUTH with one fails. The master lives, the log names
    the pool and the host, requests get 502, the password is nowhere."""
    url = redis_clients.url().replace("redis://", f"redis://:{SECRET}@")
    server = gunicorn(conf({"default": url}, workers=2), app=APP)
    server.start(workers_ready=2)
    status, body = server.get("/conn")
    assert status == 502 and body["error"] == "ConnectError", body
    assert SECRET not in body["message"]
    assert server.alive()
    log = server.log()
    assert "pool default (redis://:***@127.0.0.1:" in log and "warm-up failed, will connect on demand" in log
    assert SECRET not in log


def test_a_typo_in_a_redis_option_refuses_startup(gunicorn, redis_clients):
    server = gunicorn(conf({"default": redis_clients.url(max_sise=4)}), app=APP)
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(30) != 0
    log = server.log()
    assert "unknown option 'max_sise'" in log and "pool 'default'" in log, log[-2000:]
