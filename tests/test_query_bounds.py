"""A query hung mid-flight is bounded in every worker model, and SQLite's limits are stated.

gunicorn's ``--timeout`` kills only sync workers; in gthread and gevent
workers a query whose server stopped answering hung its request until
``graceful_timeout``. An unset ``read_timeout`` is now gunicorn's ``timeout``
there.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from support import figure, pool_conf

from gunicorn_pool import DatabasePool
from gunicorn_pool.base import WorkerProfile, current_profile, set_profile


@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_a_query_hung_mid_flight_fails_after_gunicorns_timeout(mysql_user, tcp_proxy, gunicorn, kind):
    config = mysql_user.config(port=tcp_proxy.port, max_size=1, timeout=5, check_interval=60)
    server = gunicorn(pool_conf({"default": config}, kind=kind, workers=1, extra="timeout = 2"))
    server.start(workers_ready=1)
    assert server.get("/conn")[0] == 200
    tcp_proxy.stall()  # the server stops answering mid-query (new connections still flow)
    start = time.monotonic()
    status, body = server.get("/conn", timeout=15)
    elapsed = time.monotonic() - start
    assert status == 500 and body["error"] == "OperationalError", body
    figure(f"query frozen mid-flight ({kind}, timeout = 2): error after", elapsed)
    assert 1.9 <= elapsed < 4.0, elapsed  # before: no answer until graceful_timeout (the client gave up at 15 s)
    assert "read_timeout unset: queries wait at most 2 s (gunicorn's timeout)" in server.log()
    tcp_proxy.forward()
    for _ in range(3):
        assert server.get("/conn")[0] == 200  # the broken connection was dropped, a new one serves


def test_explicit_read_timeout_wins_and_sync_workers_keep_none():
    """The service sizes and bounds each pool for the worker it runs in (the core takes both as values)."""

    def read_timeout(**config: Any) -> Any:
        return DatabasePool({"default": {"host": "h", **config}}).pool().connector.read_timeout()  # type: ignore[attr-defined]

    saved = current_profile()
    try:
        set_profile(WorkerProfile("gevent", timeout=30.0))
        assert read_timeout() == 30.0
        assert read_timeout(read_timeout=5) == 5.0
        set_profile(WorkerProfile("sync", timeout=30.0))
        assert read_timeout() is None
    finally:
        set_profile(saved)


def test_sqlite_memory_pool_connections_share_one_database():
    """sqlite:///:memory: gave each connection of a pool its own empty database."""
    db = DatabasePool({"default": {"adapter": "sqlite", "database": ":memory:", "min_size": 2, "max_size": 2}})
    db.init_pool()
    pool = db.pool()
    first, second = pool.getconn(), pool.getconn()
    first.execute("CREATE TABLE t (a INTEGER)")
    first.execute("INSERT INTO t VALUES (1)")
    assert second.execute("SELECT a FROM t").fetchall() == [(1,)]
    pool.putconn(first)
    pool.putconn(second)
    other = DatabasePool("sqlite:///:memory:")
    with other.connection() as conn:  # another pool has its own database
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone() == (0,)
    db.close_pool()
    other.close_pool()


def test_sqlite_under_gevent_is_warned_about_at_boot(caplog, tmp_path):
    saved = current_profile()
    caplog.set_level(logging.WARNING, logger="gunicorn_pool")
    try:
        set_profile(WorkerProfile("gevent"))
        db = DatabasePool(f"sqlite:///{tmp_path / 'g.db'}")
        db.init_pool()
        assert "SQLite calls block the gevent hub" in caplog.text
        db.close_pool()
    finally:
        set_profile(saved)
