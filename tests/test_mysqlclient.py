"""The mysqlclient driver (``driver: mysqlclient``) on the real MariaDB, in this process and in gunicorn.

What is shared with PyMySQL is tested once for both elsewhere: the session
matrix (tests/test_session_matrix_mysql.py), the Django backend
(tests/test_django_backend.py) and the fault rows (tests/test_faults.py, the
``mysqlclient`` backend). Here: the config keys, the rule that says a lease is
clean without a round trip, the lease guard, the bounded ping, fork safety,
one session per worker in sync and gthread workers, and the gevent refusal.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator

import MySQLdb
import pytest
from backends import MYSQLCLIENT, check_one_session_per_worker
from support import database_pools, pool_conf, session_in_forked_child, wait_until

from gunicorn_pool import ConfigError, LeaseError, parse_config

# -- config (no server) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "driver"),
    [
        ("mysql://app@db/shop", "pymysql"),
        ("mysql://app@db/shop?driver=mysqlclient", "mysqlclient"),
        ("mysql+mysqldb://app@db/shop", "mysqlclient"),
        ("mariadb+mysqldb://app@db/shop", "mysqlclient"),
        ("mysql+pymysql://app@db/shop", "pymysql"),
        ({"host": "db", "driver": "mysqlclient"}, "mysqlclient"),
        ({"host": "db", "driver": "pymysql"}, "pymysql"),
    ],
)
def test_the_driver_key_url_option_and_scheme(value, driver):
    config = parse_config("p", value)
    assert config.driver == driver
    from gunicorn_pool.connectors import connector_class

    expected = {"pymysql": "MySQLConnector", "mysqlclient": "MySQLdbConnector"}[driver]
    assert connector_class(config.adapter, config.driver).__name__ == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"host": "db", "driver": "mysqldb"}, "driver must be one of"),
        ("mysql+mysqldb://app@db/shop?driver=pymysql", "option 'driver' given twice"),
        ({"adapter": "postgresql", "driver": "mysqlclient"}, "driver 'mysqlclient' is not one of postgresql's"),
        ({"driver": "mysqlclient", "cursorclass": "pymysql.cursors.DictCursor"}, "a mysqlclient cursor class"),
        ({"cursorclass": "MySQLdb.cursors.DictCursor"}, "a PyMySQL cursor class"),
    ],
)
def test_a_wrong_driver_or_a_cursor_of_the_other_driver_is_refused(value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config("p", value)


def test_a_cursorclass_of_mysqlclient_is_taken():
    config = parse_config("p", {"driver": "mysqlclient", "cursorclass": "MySQLdb.cursors.DictCursor"})
    assert config.cursorclass is MySQLdb.cursors.DictCursor


# -- in this process ---------------------------------------------------------------------------


@pytest.fixture
def make_db(mysqlclient_user: Any) -> Iterator[Callable[..., Any]]:
    yield from database_pools(mysqlclient_user.config, name="mysqlclient")


def _one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return row[0] if row else None


@pytest.mark.mysql
def test_a_clean_lease_is_known_without_a_round_trip(make_db, scratch_table):
    """The rule mysqlclient is read by (it exposes no transaction flag): autocommit on and no
    BEGIN/START/XA/CALL/SET or failed statement since the last clean point: clean; anything
    else makes the return roll back or reset."""
    db = make_db()
    pool = db.pool()
    connector = pool.connector
    raw = pool.getconn()
    try:
        cases = [
            (f"SELECT COUNT(*) FROM {scratch_table}", True),
            (f"INSERT INTO {scratch_table} (v) VALUES (1)", True),  # autocommitted
            ("BEGIN", False),
            ("COMMIT", True),
            ("START TRANSACTION READ ONLY", False),
            ("ROLLBACK", True),
            ("/* a comment first */ SELECT 1", False),  # unreadable first word: may open one
            ("ROLLBACK", True),
            ("SET @x = 1", False),  # a session change: reset at return
        ]
        for sql, clean in cases:
            _one(raw, sql)
            assert connector.is_clean(raw) is clean, sql
    finally:
        pool.putconn(raw)
    assert pool.stats()["connections_reset"] == 1
    raw = pool.getconn()
    try:
        assert connector.is_clean(raw)
        with pytest.raises(MySQLdb.ProgrammingError):
            _one(raw, "SELECT * FROM gp_no_such_table")
        assert not connector.is_clean(raw)  # a failed statement: unsure until the next one ends well
        _one(raw, "SELECT 1")
        assert connector.is_clean(raw)
        raw.autocommit(False)
        assert not connector.is_clean(raw)
        raw.autocommit(True)
        assert connector.is_clean(raw)
    finally:
        pool.putconn(raw)


@pytest.mark.mysql
def test_an_open_transaction_is_rolled_back_on_a_pool_without_autocommit(make_db, scratch_table):
    """autocommit off: any statement may open a transaction; a plain COMMIT ends it (no ROLLBACK
    at return), anything after it opens one again (rolled back at return)."""
    db = make_db(autocommit=False)
    pool = db.pool()
    with db.connection() as conn:
        _one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
        assert not pool.connector.is_clean(conn)
        conn.commit()
        assert pool.connector.is_clean(conn)
        _one(conn, f"INSERT INTO {scratch_table} (v) VALUES (2)")  # the block ends cleanly: committed
    raw = pool.getconn()
    _one(raw, f"INSERT INTO {scratch_table} (v) VALUES (3)")
    pool.putconn(raw)  # putconn: rolled back
    with db.connection() as conn:
        assert _one(conn, f"SELECT GROUP_CONCAT(v ORDER BY v) FROM {scratch_table}") == "1,2"
        assert _one(conn, "SELECT @@autocommit") == 0


@pytest.mark.mysql
def test_a_reference_kept_past_its_lease_sends_nothing(make_db):
    db = make_db()
    with db.connection() as conn:
        session = _one(conn, "SELECT CONNECTION_ID()")
    with pytest.raises(LeaseError, match="used after it was returned"):
        conn.cursor().execute("SET @gp_kept = 1")
    with pytest.raises(LeaseError):
        conn.commit()
    with db.connection() as again:
        assert _one(again, "SELECT CONNECTION_ID()") == session
        assert _one(again, "SELECT @gp_kept") is None
    assert db.pool().stats()["connections_reset"] == 0  # nothing was sent: nothing to reset


@pytest.mark.mysql
def test_the_checkout_ping_is_bounded_by_check_timeout(mysqlclient_user, tcp_proxy):
    """A server that stops answering mid-session (the proxy stalls): the checkout ping gives up
    after check_timeout (0.5 s) although the connection has no read timeout, drops it and opens
    another; the request is served."""
    make = database_pools(functools.partial(mysqlclient_user.config, port=tcp_proxy.port), name="stall")
    db = next(make)(check_interval=0, check_timeout=0.5, read_timeout=8)  # a regression fails, not hangs
    try:
        with db.connection() as conn:
            first = _one(conn, "SELECT CONNECTION_ID()")
        assert tcp_proxy.stall() == 1
        start = time.monotonic()
        with db.connection() as conn:
            second = _one(conn, "SELECT CONNECTION_ID()")
        took = time.monotonic() - start
        assert second != first and took < 3, took
        assert db.pool().stats()["connections_lost"] == 1
    finally:
        tcp_proxy.cut()
        next(make, None)


@pytest.mark.mysql
def test_a_killed_session_is_found_by_the_probe_and_replaced(make_db, mysqlclient_user):
    db = make_db()
    with db.connection() as conn:
        first = _one(conn, "SELECT CONNECTION_ID()")
    mysqlclient_user.kill(first)
    wait_until(lambda: mysqlclient_user.count() == 0, 5, what="session killed")
    time.sleep(0.05)
    with db.connection() as conn:
        assert _one(conn, "SELECT CONNECTION_ID()") != first
    assert db.pool().stats()["connections_lost"] == 1


@pytest.mark.mysql
def test_a_forked_child_never_ends_the_parents_session(make_db, mysqlclient_user):
    """The child drops the inherited connection (its descriptor pointed at /dev/null before the
    library's close) and opens its own; the parent's session lives on and still serves."""
    db = make_db()
    with db.connection() as conn:
        parent = _one(conn, "SELECT CONNECTION_ID()")
    child = session_in_forked_child(db, lambda conn: _one(conn, "SELECT CONNECTION_ID()"))
    assert child != parent
    assert parent in mysqlclient_user.session_ids()
    with db.connection() as conn:
        assert _one(conn, "SELECT CONNECTION_ID()") == parent


# -- gunicorn ------------------------------------------------------------------------------------


@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_workers_open_one_session_each_before_the_first_request_and_none_after_sigterm(
    gunicorn, mysqlclient_user, kind
):
    server = gunicorn(pool_conf({"default": mysqlclient_user.config()}, kind=kind, workers=2), app="webapp:app")
    check_one_session_per_worker(server, mysqlclient_user, MYSQLCLIENT, 2)


@pytest.mark.mysql
def test_gevent_worker_refuses_mysqlclient_on_the_first_start(gunicorn, mysqlclient_user):
    server = gunicorn(pool_conf({"default": mysqlclient_user.config()}, kind="gevent", workers=1), app="webapp:app")
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(30) != 0
    log = server.log()
    assert "mysqlclient is a C library that blocks gevent's hub" in log and "db/default (mysqlclient)" in log
    assert "configuration error, first start" in log
    assert mysqlclient_user.count() == 0
    assert mysqlclient_user.password not in log


def test_a_respawned_gevent_worker_logs_the_refusal_and_boots(monkeypatch, caplog):
    """Not on the first start (a SIGHUP's new workers, a respawn): the worker boots, the refusal
    is logged, and the connector refuses every connect while gevent has patched the process."""
    from gunicorn_pool import DatabasePool, lifecycle
    from gunicorn_pool.base import WorkerProfile
    from gunicorn_pool.connectors import mysqlclient

    db = DatabasePool({"default": "mysql+mysqldb://app@127.0.0.1/shop"}, name="db")
    with caplog.at_level("ERROR", logger="gunicorn_pool"):
        lifecycle._refuse_blocking_drivers([("db", db)], WorkerProfile(kind="gevent", first_boot=False))
    assert "blocks gevent's hub" in caplog.text and "this respawned worker" in caplog.text
    with pytest.raises(Exception, match="first start"):
        lifecycle._refuse_blocking_drivers([("db", db)], WorkerProfile(kind="gevent", first_boot=True))
    monkeypatch.setattr(mysqlclient, "gevent_patched", lambda: True)
    with pytest.raises(MySQLdb.OperationalError, match="use driver pymysql under gevent"):
        db.pool().connector.connect()
