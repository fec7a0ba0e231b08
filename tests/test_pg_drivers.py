"""What both PostgreSQL drivers guarantee the same way, each test once per driver (psycopg 3 and
psycopg2): connections closed or reclaimed are dropped, the owner check, the pool's session
statements re-applied after a reset, transactions settled on return, fork safety, bounded
connects and pings, the socket probe, several hosts, cancel, non-ASCII passwords.

What each driver does its own way (the lease guard's chokepoints, the statement tracking, the
connection object's settings, gevent): tests/test_postgresql.py and tests/test_psycopg2.py. The
helpers here use the DB-API cursor, which both drivers share. Every statement of the pools is
bounded on the server (``statement_timeout``) and psycopg 3's waits on the client too.
"""

from __future__ import annotations

import importlib
import secrets
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
import servers
from support import bound_psycopg_waits, database_pools, figure, session_in_forked_child, statement_bound, wait_until
from support import pg_backend as backend
from support import pg_one as one
from support import pg_run as run

from gunicorn_pool import ConnectError, DatabasePool, LeaseError, request_scope

pytestmark = pytest.mark.postgresql

pg_scram = servers.pg_scram

DRIVERS = ("psycopg", "psycopg2")
STALE = "SELECT 'gp-stale-use'"


@pytest.fixture(autouse=True)
def _bounded_queries(monkeypatch: Any) -> None:
    """psycopg 3's waits without a timeout of their own fail after support.QUERY_BOUND."""
    bound_psycopg_waits(monkeypatch)


@pytest.fixture(params=DRIVERS)
def driver(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def login(driver: str, request: Any) -> Any:
    """A fresh login whose configs name *driver*."""
    return request.getfixturevalue("pg_user" if driver == "psycopg" else "pg2_user")


@pytest.fixture
def make_db(login: Any) -> Any:
    def config(**options: Any) -> dict[str, Any]:
        options.setdefault("options", statement_bound())
        return login.config(**options)

    yield from database_pools(config, name="pgd")


def errors(driver: str) -> Any:
    """The driver's module of SQLSTATE errors (``psycopg.errors`` or ``psycopg2.errors``)."""
    return importlib.import_module(f"{driver}.errors")


# -- connections the pool must not lend again --------------------------------------------------------


def test_connection_the_user_closed_is_dropped_at_return(login, make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        closed = backend(conn)
        conn.close()
    wait_until(lambda: closed not in login.backend_pids(), 5, what="the closed session ended")
    assert pool.stats()["pool_size"] == 0  # dropped, its capacity freed
    conn = pool.getconn()
    assert backend(conn) != closed  # a fresh one, not the closed object
    conn.close()
    pool.putconn(conn)
    assert pool.stats()["pool_size"] == 0
    with pool.connection() as conn:
        assert one(conn, "SELECT 1") == 1
    assert login.count() == 1


def test_a_lease_reclaimed_at_request_end_refuses_its_user_and_its_session_ends(login, make_db):
    pool = make_db(max_size=2).pool()
    with request_scope("GET /leak"):
        leaked = pool.getconn()
        pid = backend(leaked)
    assert pool.stats()["connections_leaked"] == 1
    with pytest.raises(LeaseError, match="closed it"):
        leaked.cursor().execute(STALE)
    wait_until(lambda: pid not in login.backend_pids(), 5, what="the reclaimed session ended")


RUNNING_SLEEP = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active' AND query LIKE %s"


def test_cancel_is_allowed_from_another_thread_during_the_lease(driver, login, make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        pid = backend(conn)

        def cancel_once_running() -> None:  # a cancel that arrives before the query would cancel nothing
            wait_until(lambda: one(login.admin, RUNNING_SLEEP, (pid, "%pg_sleep%")) == 1, 5, what="pg_sleep running")
            conn.cancel()

        timer = threading.Thread(target=cancel_once_running)
        timer.start()
        start = time.monotonic()
        with pytest.raises(errors(driver).QueryCanceled):
            run(conn, "SELECT pg_sleep(10)")
        timer.join(5)
        assert time.monotonic() - start < 5
        assert one(conn, "SELECT 1") == 1


def test_owner_check_off_lets_another_thread_use_and_give_back_the_connection(make_db):
    pool = make_db(owner_check=False).pool()
    conn = pool.getconn()
    failures: list[BaseException] = []

    def other() -> None:
        try:
            run(conn, "SELECT 1")
            pool.putconn(conn)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert not failures and pool.stats()["pool_available"] == 1


# -- sessions and transactions --------------------------------------------------------------------------


def test_reset_re_applies_the_pools_own_session_statements(make_db):
    pool = make_db(session=["SET work_mem = '8MB'"], init_command="SET application_name = 'gp-init'",
                   options=f"{statement_bound()} -c lock_timeout=1234").pool()  # fmt: skip
    with pool.connection() as conn:
        assert (one(conn, "SHOW work_mem"), one(conn, "SHOW application_name")) == ("8MB", "gp-init")
        run(conn, "SET work_mem = '99MB'")
        run(conn, "SET application_name = 'someone'")
        run(conn, "SET lock_timeout = 1")
    with pool.connection() as conn:
        assert one(conn, "SHOW work_mem") == "8MB"
        assert one(conn, "SHOW application_name") == "gp-init"
        assert one(conn, "SHOW lock_timeout") == "1234ms"  # startup options survive DISCARD ALL
    assert pool.stats()["connections_reset"] == 1


@pytest.fixture
def table(login):
    yield from login.scratch_table()


def test_autocommit_off_commits_a_clean_exit_and_rolls_back_an_error_and_putconn(login, make_db, table):
    pool = make_db(autocommit=False).pool()
    with pool.connection() as conn:
        assert conn.autocommit is False
        run(conn, f"INSERT INTO {table} VALUES (1)")
    assert login.rows(table) == 1
    with pytest.raises(RuntimeError):
        with pool.connection() as conn:
            run(conn, f"INSERT INTO {table} VALUES (2)")
            raise RuntimeError("view failed")
    conn = pool.getconn()
    run(conn, f"INSERT INTO {table} VALUES (3)")
    pool.putconn(conn)
    assert login.rows(table) == 1
    with pool.connection() as conn:  # a SELECT opens a transaction too: its snapshot must not pass on
        one(conn, f"SELECT count(*) FROM {table}")
    # rollbacks and commits alone cost no reset; only the failed with-block's one (its
    # exception may have skipped the user's own clean-up of the session)
    assert pool.stats()["connections_reset"] == 1 and pool.stats()["pool_size"] == 1


INERROR = 3  # libpq's PQTRANS_INERROR: psycopg's TransactionStatus.INERROR, psycopg2's TRANSACTION_STATUS_INERROR


def test_a_failed_transaction_is_rolled_back_and_the_connection_reused(driver, make_db):
    pool = make_db(autocommit=False).pool()
    with pool.connection() as conn:
        session = backend(conn)
        with pytest.raises(errors(driver).DivisionByZero):
            run(conn, "SELECT 1 / 0")
        assert conn.info.transaction_status == INERROR
    with pool.connection() as conn:
        assert backend(conn) == session and one(conn, "SELECT 2") == 2


def test_a_failed_commit_reaches_the_user_and_the_connection_is_dropped(driver, login, make_db, table):
    pool = make_db(autocommit=False).pool()
    with login.admin.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} ADD CONSTRAINT gp_c UNIQUE (v) DEFERRABLE INITIALLY DEFERRED")
    with pytest.raises(errors(driver).UniqueViolation):
        with pool.connection() as conn:
            run(conn, f"INSERT INTO {table} VALUES (1), (1)")  # fails only at COMMIT
    assert login.rows(table) == 0
    with pool.connection() as conn:
        assert one(conn, "SELECT 1") == 1


# -- fork ------------------------------------------------------------------------------------------------


def test_a_forked_child_never_uses_or_ends_the_parents_session(login, make_db):
    db = make_db(max_size=2)
    pool = db.pool()
    with pool.connection() as conn:
        parent_session = backend(conn)
    child_session = session_in_forked_child(db, backend)  # drops the inherited connection, opens its own
    assert child_session != parent_session
    wait_until(lambda: child_session not in login.backend_pids(), 5, what="the child's session ended")
    with pool.connection() as conn:  # the child said nothing on the parent's socket
        assert backend(conn) == parent_session and one(conn, "SELECT 1") == 1
    assert parent_session in login.backend_pids()


# -- bounded connect and ping, several hosts, the probe -------------------------------------------------


def test_connect_to_a_server_that_never_answers_is_bounded_by_a_fractional_connect_timeout(driver, login, pg_proxy):
    """Both drivers truncate connect_timeout to whole seconds, at least 2 (psycopg waits its default
    of 130 s for a value below 1): 0.6 must mean 0.6."""
    pg_proxy.blackhole()
    db = DatabasePool({"default": login.config(port=pg_proxy.port, connect_timeout=0.6, max_size=1)}, name="bh")
    start = time.monotonic()
    with pytest.raises(ConnectError, match=r"timed out after 0\.6s"):
        db.pool().getconn()
    took = time.monotonic() - start
    figure(f"{driver}: blackholed connect with connect_timeout=0.6 gave up after", took)
    assert 0.5 < took < 1.5, took
    db.close_pool()


def test_every_host_is_tried_and_target_session_attrs_is_passed_to_libpq(login):
    # Nothing listens on 127.0.0.2: refused, then the next host serves.
    db = DatabasePool({"default": login.config(host="127.0.0.2,127.0.0.1", target_session_attrs="read-write",
                                               max_size=1)}, name="multi")  # fmt: skip
    with db.connection() as conn:
        assert one(conn, "SELECT inet_server_addr()::text").startswith("127.0.0.1")
    db.close_pool()
    standby = DatabasePool({"default": login.config(target_session_attrs="standby", max_size=1)}, name="sb")
    with pytest.raises(ConnectError, match="hot standby|standby|read-only"):
        standby.pool().getconn()
    standby.close_pool()


@pytest.mark.timeout(30, method="thread")  # psycopg2 blocks in C: no signal can end it, this thread can
def test_ping_of_a_connection_whose_server_stopped_answering_is_bounded(driver, login, pg_proxy):
    """psycopg's wait takes a timeout; psycopg2's calls have none: a watchdog shuts its socket down."""
    db = DatabasePool({"default": login.config(port=pg_proxy.port, min_size=1, max_size=1, check_interval=0,
                                               check_timeout=0.5)}, name="stall")  # fmt: skip
    db.init_pool()
    pool = db.pool()
    with pool.connection() as conn:
        stalled = backend(conn)
    assert pg_proxy.stall() == 1
    start = time.monotonic()
    with pool.connection() as conn:  # the ping times out, the connection is replaced
        assert backend(conn) != stalled
    figure(f"{driver}: ping of a stalled connection, then a new one", time.monotonic() - start)
    assert time.monotonic() - start < 0.5 + 2.0
    assert pool.stats()["connections_lost"] == 1
    db.close_pool()


def test_a_terminated_backend_is_seen_by_the_probe_and_replaced(login, make_db):
    pool = make_db(check_interval=3600).pool()  # only the socket probe can notice
    with pool.connection() as conn:
        old = backend(conn)
    login.terminate(old)
    wait_until(lambda: old not in login.backend_pids(), 5, what="backend terminated")
    with pool.connection() as conn:
        assert backend(conn) != old
    assert pool.stats()["connections_lost"] == 1


# -- passwords (a server that checks them) ------------------------------------------------------------


@pytest.mark.parametrize("password", ["pässwörd", "Ωmega-π", "日本語パス", "emoji-🔑", "sp ace'quote\\"])
def test_non_ascii_passwords_log_in_and_wrong_ones_never_reach_a_message(driver, pg_scram, password):
    login = pg_scram.create_user(f"gp_{secrets.token_hex(4)}", password)
    url = (f"postgresql://{login.name}:{quote(password, safe='')}@{login.host}:{login.port}/{login.database}"
           f"?driver={driver}")  # fmt: skip
    for config in (login.config(max_size=1, driver=driver), url):
        db = DatabasePool({"default": config}, name="nonascii")
        with db.connection() as conn:
            assert one(conn, "SELECT current_user") == login.name
            assert password not in repr(conn)
        db.close_pool()
    wrong = password + "x"
    db = DatabasePool({"default": login.config(password=wrong, max_size=1, driver=driver)}, name="wrong")
    with pytest.raises(ConnectError, match="password authentication failed") as info:
        db.pool().getconn()
    assert wrong not in str(info.value) and password not in str(info.value)
    db.close_pool()
