"""gunicorn's dirty workers (gunicorn >= 25: ``dirty_apps``, separate processes for heavy tasks)
get their own pools through ``hooks.dirty_worker_init``: opened at the dirty worker's start,
before its first task, sized for ``dirty_threads``, and closed when it exits.

Real gunicorn and MariaDB; the dirty worker's pool has a login of its own, so its sessions are
counted exactly.
"""

from __future__ import annotations

import signal

import pytest
from support import wait_until

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
from gunicorn_pool import hooks
gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {pool!r}}}), name="dirty_db")
workers = 1
dirty_workers = {dirty_workers}
dirty_threads = {threads}
dirty_apps = ["dirty_app:QueryApp"]
dirty_worker_init = hooks.dirty_worker_init
dirty_worker_exit = hooks.dirty_worker_exit
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("threads", [1, 3])
def test_a_dirty_worker_opens_its_pool_at_start_and_closes_it_at_exit(mysql_user, gunicorn, threads):
    conf = CONF.format(pool=mysql_user.config(min_size=1, timeout=5), dirty_workers=2, threads=threads)
    server = gunicorn(conf, app="dirty_app:app")
    server.start()
    server.wait_log("dirty worker, ", count=2, timeout=30)
    # Both dirty workers opened their pool before any task ran (the HTTP worker registered the
    # same service but opens nothing: it is a stock worker without post_worker_init).
    wait_until(lambda: mysql_user.count() == 2, 10, what="2 dirty-worker sessions")
    seen = {}
    for _ in range(12):
        status, body = server.get("/dirty")
        assert status == 200, body
        seen[body["dirty_pid"]] = body
    assert mysql_user.count() == 2  # tasks used the pooled sessions: no connect per task
    for body in seen.values():
        assert body["stats"]["pool_max"] == threads, body["stats"]  # sized for dirty_threads
        assert body["stats"]["connections_num"] == 1, body["stats"]
    log = server.log()
    assert f"dirty worker, {threads} thread(s)" in log
    server.stop(signal.SIGTERM)
    wait_until(lambda: mysql_user.count() == 0, 10, what="the dirty workers' sessions closed")
    assert "closed 1 connection(s)" in server.log()
