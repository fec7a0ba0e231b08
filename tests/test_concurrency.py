"""Real gunicorn: ThreadWorker and GeventWorker keep their pools bounded and fair.

Every server is a real gunicorn master (tests/apps/webapp.py) against the real
MariaDB, logging in as a dedicated user so PROCESSLIST counts exactly the
pools' sessions. Server-side peaks are sampled from a background thread
(tests/sampling.py) while the test fires a burst of HTTP requests.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sampling import PeakSampler
from support import admin_connect, wait_until

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {url!r}}}), name="db")
worker_class = {worker!r}
workers = {workers}
threads = {threads}
graceful_timeout = 5
"""

GEVENT, THREAD = "gunicorn_pool.GeventWorker", "gunicorn_pool.ThreadWorker"


def start(gunicorn: Any, user: Any, worker: str, workers: int = 1, threads: int = 1,
          env: dict[str, str] | None = None, **pool: Any) -> Any:  # fmt: skip
    """Start a server whose "default" pool takes *pool* as URL options; wait for its workers."""
    conf = CONF.format(url=user.url(**pool), worker=worker, workers=workers, threads=threads)
    server = gunicorn(conf, env=env)
    server.start(workers_ready=workers)
    wait_until(lambda: user.count() == workers, 10, what="one warm connection per worker")
    return server


def burst(server: Any, path: str, count: int, concurrency: int, timeout: float = 30.0) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        return list(ex.map(lambda _: server.get(path, timeout=timeout), range(count)))


def in_background(server: Any, path: str, count: int) -> tuple[list[tuple[int, dict]], list[threading.Thread]]:
    """Fire *count* requests to *path* from threads; results land in the list as they finish."""
    results: list[tuple[int, dict]] = []

    def one() -> None:
        results.append(server.get(path, timeout=20))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return results, threads


def join(threads: list[threading.Thread], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)


def stats(server: Any) -> dict[str, int]:
    status, body = server.get("/stats")
    assert status == 200, body
    return body["stats"]["default"]


# -- bounded bursts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "worker, threads, max_size, expected_max",
    [(GEVENT, 1, 4, 4), (THREAD, 6, None, 6)],
    ids=["gevent-max4", "gthread-threads6"],
)
def test_burst_of_40_stays_under_workers_x_max_size(gunicorn, mysql_user, worker, threads, max_size, expected_max):
    """40 concurrent /sleep/0.2 on 2 workers: all succeed; the server never sees more than 2 x max_size."""
    workers = 2
    pool = {"max_size": max_size} if max_size else {}  # gthread: the default, max_size = threads
    server = start(gunicorn, mysql_user, worker, workers, threads, timeout=20, **pool)
    assert server.log().count(f"[min=1 max={expected_max}]") == workers
    cap = workers * expected_max
    with PeakSampler(mysql_user.name) as sampler:
        results = burst(server, "/sleep/0.2", 40, 40)
    assert [s for s, _ in results] == [200] * 40, [b for s, b in results if s != 200][:3]
    assert sampler.samples >= 20
    assert expected_max <= sampler.peak <= cap, f"server-side peak {sampler.peak}, cap {cap}"
    # Per worker, the distinct server sessions that served requests never exceed max_size.
    per_worker: dict[int, set[int]] = {}
    for _, body in results:
        per_worker.setdefault(body["pid"], set()).add(body["conn_id"])
    assert set(per_worker) <= set(server.worker_pids())
    assert all(len(ids) <= expected_max for ids in per_worker.values()), per_worker
    assert mysql_user.count() <= cap
    assert mysql_user.password not in server.log()


# -- timeout and max_waiting -----------------------------------------------------------


@pytest.mark.parametrize("worker, threads", [(GEVENT, 1), (THREAD, 4)], ids=["gevent", "gthread"])
def test_pool_timeout_answers_503_within_half_to_one_second(gunicorn, mysql_user, worker, threads):
    """Both connections held by /hold/3; the next request gets PoolTimeout after 0.5-1.0 s."""
    server = start(gunicorn, mysql_user, worker, 1, threads, max_size=2, timeout=0.5)
    holds, threads_ = in_background(server, "/hold/3", 2)
    wait_until(lambda: (lambda st: st["pool_size"] == 2 and st["pool_available"] == 0)(stats(server)), 5,
               what="both connections held")  # fmt: skip
    started = time.monotonic()
    status, body = server.get("/conn")
    wall = time.monotonic() - started
    assert status == 503 and body["error"] == "PoolTimeout", body
    assert 0.495 <= body["elapsed"] < 1.0, body  # measured in the worker around the request
    assert wall < 2.0, wall
    join(threads_)
    assert [s for s, _ in holds] == [200, 200], holds
    assert server.get("/conn")[0] == 200  # the pool recovered
    assert stats(server)["requests_timeouts"] == 1


def test_max_waiting_rejects_at_once_with_429_on_gevent(gunicorn, mysql_user):
    server = start(gunicorn, mysql_user, GEVENT, 1, max_size=1, max_waiting=2, timeout=10)
    holds, hold_threads = in_background(server, "/hold/2", 1)
    wait_until(lambda: stats(server)["pool_available"] == 0, 5, what="the connection held")
    waiting, wait_threads = in_background(server, "/conn", 2)
    wait_until(lambda: stats(server)["requests_waiting"] == 2, 5, what="two requests waiting")
    status, body = server.get("/conn")
    assert status == 429 and body["error"] == "TooManyRequests", body
    assert body["elapsed"] < 0.1, body  # turned away at once, not after the 10 s timeout
    join(hold_threads + wait_threads)
    assert [s for s, _ in holds + waiting] == [200] * 3, holds + waiting
    assert stats(server)["requests_errors"] == 1


# -- gevent.Timeout mid-query ------------------------------------------------------------


@pytest.fixture
def poison_table(scratch_table: str) -> str:
    return scratch_table


def test_greenlet_killed_mid_query_does_not_poison_the_pool(gunicorn, mysql_user, poison_table):
    """/poison: INSERT in a transaction, then gevent.Timeout kills the greenlet during SELECT SLEEP(1).

    The connection must be discarded, not returned: a reused one would carry the
    open transaction (its own row visible to the next user, count 1) and an
    unread result (protocol errors). Then 100 requests all succeed and see 0 rows.
    """
    server = start(gunicorn, mysql_user, GEVENT, 1, env={"GP_POISON_TABLE": poison_table}, max_size=4, timeout=10)
    poisoned = set()
    for _ in range(3):
        status, body = server.get("/poison/0.3")
        assert status == 200 and body["timed_out"] is True, body
        poisoned.add(body["conn_id"])
    assert len(poisoned) == 3, "an interrupted connection was lent again"
    results = burst(server, "/rows", 100, 8)
    assert [s for s, _ in results] == [200] * 100, [b for s, b in results if s != 200][:3]
    assert {b["rows"] for _, b in results} == {0}
    assert not poisoned & {b["conn_id"] for _, b in results}
    # The server ends each poisoned session once its SLEEP(1) is over (socket closed, rolled back).
    wait_until(lambda: not poisoned & set(mysql_user.connection_ids()), 10, what="poisoned sessions gone")
    assert mysql_user.count() <= 4
    admin = admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {poison_table}")
            assert cur.fetchone()[0] == 0
    finally:
        admin.close()


# -- sizing defaults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "worker, threads, kind, expected_max",
    [(THREAD, 6, "thread", 6), (GEVENT, 1, "gevent", 10)],
    ids=["gthread-threads6", "gevent"],
)
def test_sizing_defaults_in_boot_log(gunicorn, mysql_user, worker, threads, kind, expected_max):
    server = start(gunicorn, mysql_user, worker, 1, threads)
    log = server.log()
    assert f"({kind} worker)" in log
    assert "opened 1 connection(s)" in log and f"[min=1 max={expected_max}]" in log, log[-2000:]
    st = stats(server)
    assert (st["pool_min"], st["pool_max"]) == (1, expected_max)
