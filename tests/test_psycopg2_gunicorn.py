"""psycopg2 pools (``driver: psycopg2``) in real gunicorn servers: one session per worker opened
before the first request and none left after SIGTERM, on sync, gthread and gevent workers;
psycopg2's wait callback in gevent workers only; psycopg2 imported once, in the master. A kept
reference refused in a later request: tests/test_postgresql_gunicorn.py, once per driver.

The rows of the failure table run on psycopg2 too (tests/test_faults.py, the ``psycopg2`` backend).
"""

from __future__ import annotations

import threading
import time

import pytest
from backends import PSYCOPG2, check_one_session_per_worker
from support import WORKER_CLASSES, assert_no_secret, pool_conf

pytestmark = pytest.mark.postgresql

APP = PSYCOPG2.app
KINDS = list(WORKER_CLASSES)


@pytest.mark.parametrize("kind", KINDS)
def test_each_worker_opens_its_own_session_before_the_first_request(pg2_user, gunicorn, kind):
    workers = 3
    server = gunicorn(pool_conf({"default": pg2_user.config()}, kind=kind, workers=workers), app=APP)
    check_one_session_per_worker(server, pg2_user, PSYCOPG2, workers)
    assert_no_secret(server, pg2_user.password)


@pytest.mark.parametrize("kind", KINDS)
def test_the_wait_callback_is_set_in_gevent_workers_only_and_psycopg2_comes_from_the_master(pg2_user, gunicorn,
                                                                                           kind):  # fmt: skip
    """psycopg2 refuses COPY while a wait callback is set: sync and gthread workers never get one.
    psycopg2 picks nothing at import, so even gevent workers inherit it from the master."""
    server = gunicorn(pool_conf({"default": pg2_user.config()}, kind=kind, workers=1), app=APP)
    server.start(workers_ready=1)
    status, body = server.get("/green")
    assert status == 200 and body["callback"] == ("gunicorn_pool" if kind == "gevent" else None), body
    status, body = server.get("/imported")
    assert status == 200 and body["psycopg2_before_app"] is True and body["psycopg"] is False, body
    assert server.get("/conn")[0] == 200


def test_a_gevent_worker_serves_slow_queries_at_once_on_its_pool(pg2_user, gunicorn):
    """8 requests of pg_sleep(0.5) at once on one gevent worker with max_size 4: two waves (about
    1 s), not eight queries one after another (4 s): the hub runs while psycopg2 waits."""
    server = gunicorn(pool_conf({"default": pg2_user.config(min_size=4, max_size=4)}, kind="gevent", workers=1),
                      app=APP)  # fmt: skip
    server.start(workers_ready=1)
    results: list[int] = []
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(server.get("/sleep/0.5", timeout=20)[0]))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    took = time.monotonic() - start
    assert results == [200] * 8 and took < 2.5, (results, took)
    assert pg2_user.count() == 4
