"""ASGI workers and the hooks on ASGI apps: a FastAPI app under gunicorn_pool.AsgiWorker and
gunicorn_pool.UvicornWorker, and under the README's hooks with gunicorn's ``asgi`` worker and
uvicorn's. Real gunicorn and MariaDB (a login per test, so its sessions count exactly).

Before, the hooks wrapped an ASGI app in the WSGI middleware: every request under uvicorn's
worker answered 500 (``RequestScopeMiddleware.__call__() missing ... 'start_response'``), and
under ``-k asgi`` no request ran in a scope (a leak stayed out).
"""

from __future__ import annotations

import re
import signal

import pytest
from support import pool_conf, wait_until

pytestmark = pytest.mark.mysql

WORKERS = {
    "AsgiWorker": ("gunicorn_pool.AsgiWorker", ""),
    "UvicornWorker": ("gunicorn_pool.UvicornWorker", ""),
    "hooks, -k asgi": ("asgi", "post_worker_init = hooks.post_worker_init\nworker_exit = hooks.worker_exit"),
    "hooks, uvicorn's worker": ("uvicorn_worker.UvicornWorker",
                                "post_worker_init = hooks.post_worker_init\nworker_exit = hooks.worker_exit"),
}  # fmt: skip


def _conf(user, worker: str, hooks: str, workers: int = 2) -> str:
    extra = f"from gunicorn_pool import hooks\n{hooks}"
    return pool_conf({"default": user.config(timeout=2)}, worker=worker, workers=workers, extra=extra)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", list(WORKERS))
def test_each_asgi_worker_opens_its_pools_before_the_first_request_and_reclaims_leaks(mysql_user, gunicorn, name):
    worker, hooks = WORKERS[name]
    server = gunicorn(_conf(mysql_user, worker, hooks), app="fastapi_app:app")
    server.start(workers_ready=2)
    wait_until(lambda: mysql_user.count() == 2, 10, what="one session per worker before any request")
    seen: dict[int, int] = {}
    for _ in range(40):
        status, body = server.get("/sync")
        assert status == 200, body  # before, with the hooks under uvicorn: 500 on every request
        assert body["lifespan"] == 1, body  # the app's own lifespan still ran, once
        seen.setdefault(body["pid"], body["conn_id"])
        if len(seen) == 2:
            break
    assert mysql_user.count() == 2
    # Each worker's pool logs its first leak without the line (reading the taking frame of every lease
    # costs) and records lines from then on: its next leak names fastapi_app.py.
    for attempt in range(1, 7):
        status, body = server.get("/leak")
        assert status == 200, body
        server.wait_log("was not given back by the end of its request (/leak)", count=attempt)
        if re.search(r"taken at \S*fastapi_app\.py:\d+ was not given back", server.log()):
            break
    else:
        raise AssertionError(server.log()[-3000:])
    for _ in range(3):
        assert server.get("/sync")[0] == 200  # the capacity came back (max_size 10: asyncio default)
    server.stop(signal.SIGTERM)
    wait_until(lambda: mysql_user.count() == 0, 10, what="every session closed at exit")


@pytest.mark.timeout(60)
def test_a_synchronous_lease_on_the_event_loop_thread_is_refused(mysql_user, gunicorn):
    server = gunicorn(_conf(mysql_user, "gunicorn_pool.AsgiWorker", "", workers=1), app="fastapi_app:app")
    server.start(workers_ready=1)
    status, body = server.get("/on-loop")
    assert status == 200 and body["refused"] is True, body
    assert "AsyncDatabasePool" in body["message"] and "event loop" in body["message"]
    status, body = server.get("/stats")
    assert body["stats"]["default"]["pool_max"] == 10, body  # asyncio worker: 1/10
