"""Real gunicorn, real MariaDB: one pool set per worker, opened at boot."""

from __future__ import annotations

import time

import pytest
from backends import MYSQL, check_one_session_per_worker

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {url!r}}}), name="db")
worker_class = {worker!r}
workers = {workers}
{extra}
"""

HOOKS = """
from gunicorn_pool import hooks

def post_worker_init(worker):
    hooks.post_worker_init(worker)
    # the user's own hook runs after the pools are open, and can use them
    with gunicorn_pool.get("db").connection() as conn:
        conn.cursor().execute("SELECT 1")
    worker.log.info("user post_worker_init ran in %s", worker.pid)

def worker_exit(server, worker):
    hooks.worker_exit(server, worker)
"""


def _conf(url: str, worker: str, workers: int = 3, extra: str = "") -> str:
    return CONF.format(url=url, worker=worker, workers=workers, extra=extra)


def test_worker_opens_one_connection_per_worker_before_first_request(gunicorn, mysql_user):
    server = gunicorn(_conf(mysql_user.url(), "gunicorn_pool.Worker"))
    check_one_session_per_worker(server, mysql_user, MYSQL, 3)


def test_stock_sync_worker_with_hooks_and_chained_user_hook(gunicorn, mysql_user):
    server = gunicorn(_conf(mysql_user.url(), "sync", extra=HOOKS))
    check_one_session_per_worker(server, mysql_user, MYSQL, 3)
    assert server.log().count("user post_worker_init ran") == 3


def test_worker_with_threads_runs_threaded_not_unpooled(gunicorn, mysql_user):
    server = gunicorn(_conf(mysql_user.url(), "gunicorn_pool.Worker", workers=1, extra="threads = 4"))
    server.start(workers_ready=1)
    assert "running gunicorn_pool.ThreadWorker" in server.log()
    assert "(thread worker)" in server.log()
    assert "max=4" in server.log()
    status, body = server.get("/conn")
    assert status == 200, body


def test_unreachable_pool_does_not_halt_server(gunicorn, mysql_user):
    """A wrong password: the master lives, the log names pool and host, never the password."""
    bad = mysql_user.url().replace(mysql_user.password, "wrong-" + mysql_user.password[3:])
    server = gunicorn(_conf(bad, "gunicorn_pool.Worker", workers=2))
    start = time.monotonic()
    server.start(workers_ready=2)
    status, body = server.get("/conn")
    assert status == 502 and body["error"] == "ConnectError", body
    assert time.monotonic() - start < 10
    assert server.alive()
    log = server.log()
    assert "pool default" in log and "Access denied" in log
    assert "wrong-" not in log and mysql_user.password not in log
