"""PostgreSQL pools with ``pgbouncer=true`` through a real PgBouncer in transaction pooling mode.

Each test starts its own PgBouncer (tests/servers.py, a few tens of ms) in
front of the machine's PostgreSQL, so SHOW CLIENTS/SERVERS count only its own
connections. What is shown: no prepared-statement errors however often a
statement repeats (and the error the option avoids, with it off), no
``DISCARD ALL`` from the pool, ``SET LOCAL`` kept inside its transaction, in
real gunicorn sync, gthread and gevent workers; and what transaction pooling
cannot guarantee (a session-level ``SET`` reaches the next client of that
server connection) with PgBouncer's own cure for it (``server_reset_query_always``).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import psycopg
import pytest
import servers
from support import WORKER_CLASSES, bound_psycopg_waits, figure, pool_conf

from gunicorn_pool import DatabasePool

pytestmark = pytest.mark.postgresql

pgbouncer = servers.pgbouncer

APP = "pg_app:app"


@pytest.fixture(autouse=True)
def _bounded_queries(monkeypatch: Any) -> None:
    """A query of a test here (a pool's, the admin console's) fails after support.QUERY_BOUND if
    its answer never comes, instead of hanging until pytest-timeout."""
    bound_psycopg_waits(monkeypatch)


def bouncer_config(bouncer: servers.PgBouncer, **extra: Any) -> dict[str, Any]:
    return bouncer.config(pgbouncer=True, **extra)


def clients(bouncer: servers.PgBouncer) -> list[dict[str, Any]]:
    return [c for c in bouncer.show("CLIENTS") if c["database"] == bouncer.dbname]


@pytest.mark.parametrize("flag", [True, False], ids=["pgbouncer=true", "pgbouncer=false"])
def test_a_statement_repeated_past_prepare_threshold_runs_on_any_server_connection(pgbouncer, flag):
    """Client A runs one statement 8 times (psycopg prepares it on the 6th, on server connection
    S1); client B then holds S1 in a transaction, so A's next run lands on S2. With
    ``pgbouncer=false`` that fails: S2 never saw the PREPARE."""
    db = DatabasePool({"default": pgbouncer.config(pgbouncer=flag, min_size=2, max_size=2)}, name="prep")
    pool = db.pool()
    a, b = pool.getconn(), pool.getconn()
    try:
        for i in range(8):
            assert a.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        with b.transaction():
            b.execute("SELECT 1")
            if flag:
                assert a.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
                with a.cursor() as cur:  # a pipeline of 10, past the threshold too
                    cur.executemany("SELECT %s::int + 1", [(i,) for i in range(10)], returning=True)
                    assert cur.fetchone() == (1,)
            else:
                with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                    a.execute("SELECT %s::int + 1", (41,))
    finally:
        pool.putconn(a)
        pool.putconn(b)
    assert len(pgbouncer.show("SERVERS")) == 2
    db.close_pool()


@pytest.mark.parametrize("reset_always", [False, True], ids=["default", "server_reset_query_always"])
def test_session_set_outside_a_transaction_reaches_the_next_client_unless_pgbouncer_resets(reset_always):
    """What transaction pooling cannot guarantee: a ``SET`` outside a transaction stays on the
    server connection, and the next client that gets it (another pooled connection here; another
    worker or host in production) sees it. The pool sends no ``DISCARD ALL`` (it would run on
    whatever server connection PgBouncer picks for it); PgBouncer's ``server_reset_query_always
    = 1`` runs it after every transaction on the right one."""
    settings = {"server_reset_query_always": "1"} if reset_always else {}
    with servers.PgBouncer(default_pool_size=1, settings=settings) as bouncer:
        db = DatabasePool({"default": bouncer_config(bouncer, min_size=2, max_size=2)}, name="leak")
        pool = db.pool()
        a, b = pool.getconn(), pool.getconn()
        try:
            a.execute("SET statement_timeout = '1234ms'")
            pool.putconn(a)
            seen = b.execute("SHOW statement_timeout").fetchone()[0]
        finally:
            pool.putconn(b)
        assert seen == ("0" if reset_always else "1234ms")
        assert len(bouncer.show("SERVERS")) == 1
        assert pool.stats()["connections_reset"] == 0
        db.close_pool()


def hammer(server: Any, path: str, requests: int, parallel: int) -> list[tuple[int, dict[str, Any]]]:
    with concurrent.futures.ThreadPoolExecutor(parallel) as executor:
        return list(executor.map(lambda _: server.get(path, timeout=20), range(requests)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(WORKER_CLASSES))
def test_gunicorn_workers_through_pgbouncer_in_transaction_mode(pgbouncer, gunicorn, kind):
    """2 workers, up to 3 pooled connections each (6 PgBouncer clients) over PgBouncer's 5 server
    connections: 120 requests, 8 at a time, each running one parameterised statement 8 times and
    a SET LOCAL in a transaction. Every request succeeds, the SET LOCAL stays in its transaction,
    psycopg never prepares, the pool never resets a session, and the server sees at most
    default_pool_size connections."""
    workers, max_size = 2, 3
    config = bouncer_config(pgbouncer, min_size=1, max_size=max_size, timeout=10)
    server = gunicorn(pool_conf({"default": config}, kind=kind, workers=workers), app=APP)
    server.start(workers_ready=workers)
    start = time.monotonic()
    results = hammer(server, "/bouncer", 120, 8)
    wall = time.monotonic() - start
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:3]
    for _, body in results:
        assert (body["total"], body["inside"], body["after"], body["prepare_threshold"]) == (36, "4321ms", "0", None)
    assert len(pgbouncer.show("SERVERS")) <= 5
    assert 1 <= len(clients(pgbouncer)) <= workers * max_size
    stats = [server.get("/stats")[1]["stats"] for _ in range(6)]
    assert all(s["default"]["connections_reset"] == 0 for s in stats), stats
    log = server.log()
    assert "prepared statement" not in log and "DISCARD" not in log
    assert "prepared statement" not in pgbouncer.log()
    figure(f"pgbouncer {kind}: 120 requests (11 statements each), 8 at a time", wall)
    assert server.stop() == 0, server.log()[-2000:]
