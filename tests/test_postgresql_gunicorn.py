"""The PostgreSQL adapter in real gunicorn servers: one pool per worker, opened at boot, and a
kept reference refused without touching the session.

Sessions are counted in pg_stat_activity for a login of the test's own
(``pg_user``). The rows of the failure table (docs/failure.md) are made for
real against PostgreSQL by tests/test_faults.py, whose tests run on every
backend.
"""

from __future__ import annotations

from typing import Any

import pytest
from backends import POSTGRESQL, PSYCOPG2, check_one_session_per_worker
from support import WORKER_CLASSES, assert_no_secret, pool_conf

pytestmark = pytest.mark.postgresql

APP = "pg_app:app"
KINDS = list(WORKER_CLASSES)


def pg_config(user: Any, **extra: Any) -> dict[str, Any]:
    """The dict form of a pool of *user*, with the ``pgsql`` spelling of the adapter."""
    config = user.config(**extra)
    config["adapter"] = "pgsql"
    return config


@pytest.mark.parametrize("kind", KINDS)
def test_each_worker_opens_its_own_session_before_the_first_request(pg_user, gunicorn, kind):
    workers = 3
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, kind=kind, workers=workers), app=APP)
    check_one_session_per_worker(server, pg_user, POSTGRESQL, workers)
    assert_no_secret(server, pg_user.password)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_a_kept_reference_used_in_a_later_request_fails_without_touching_the_session(request, gunicorn, kind,
                                                                                      driver):  # fmt: skip
    login = request.getfixturevalue("pg_user" if driver == "psycopg" else "pg2_user")
    app = APP if driver == "psycopg" else PSYCOPG2.app
    server = gunicorn(pool_conf({"default": pg_config(login, max_size=1, timeout=2)}, kind=kind, workers=1),
                      app=app)  # fmt: skip
    server.start(workers_ready=1)
    status, kept = server.get("/keep")
    assert status == 200, kept
    for _ in range(5):
        status, body = server.get("/use-kept")
        assert status == 500 and body["error"] == "LeaseError", body
        status, body = server.get("/conn")
        assert status == 200 and body["backend_pid"] == kept["backend_pid"], body


@pytest.mark.parametrize("kind", KINDS)
def test_psycopg_is_imported_once_in_the_master_unless_gevent_patches_later(pg_user, gunicorn, kind):
    """Sync and gthread workers inherit psycopg from the master (~150-250 ms saved per boot and
    respawn); a gevent worker imports it itself, after patching, or it would block the hub."""
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, kind=kind, workers=1), app=APP)
    server.start(workers_ready=1)
    status, body = server.get("/imported")
    assert status == 200, body
    assert body["psycopg_before_app"] is (kind != "gevent"), body
    status, body = server.get("/conn")
    assert status == 200, body


@pytest.mark.parametrize("worker", ["sync", "gevent"])
def test_stock_workers_with_the_when_ready_hook_inherit_psycopg_unless_gevent(pg_user, gunicorn, worker):
    hooks = (
        "from gunicorn_pool import hooks\n"
        "when_ready = hooks.when_ready\npost_worker_init = hooks.post_worker_init\nworker_exit = hooks.worker_exit\n"
    )
    server = gunicorn(pool_conf({"default": pg_config(pg_user)}, worker=worker, workers=1, extra=hooks), app=APP)
    server.start(workers_ready=1)
    status, body = server.get("/imported")
    assert status == 200 and body["psycopg_before_app"] is (worker == "sync"), body
    status, body = server.get("/conn")
    assert status == 200, body

