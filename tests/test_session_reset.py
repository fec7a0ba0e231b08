"""Session state never passes from one user to the next: a session a user changed is reset on
return (COM_RESET_CONNECTION, then the pool's settings again), and one that changed nothing
costs nothing.

Every case borrows the one connection of a max_size=1 pool twice and checks
that the second borrower sees the session as the pool configured it, on the
same server session (CONNECTION_ID), so it was reset, not replaced.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable

import pymysql
import pytest
from support import admin_connect, database_pools, figure, pool_conf

pytestmark = pytest.mark.mysql


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return row[0] if row else None


@pytest.fixture
def make_db(mysql_user):
    yield from database_pools(mysql_user.config, name="reset")


def _table_absent(conn: Any, table: str) -> bool:
    try:
        one(conn, f"SELECT COUNT(*) FROM {table}")
    except pymysql.err.ProgrammingError as exc:
        return exc.args[0] == 1146  # no such table
    return False


LOCK = f"gp_named_{secrets.token_hex(3)}"

# name: (what the first user leaves behind, what the next user must see)
LEFTOVERS: dict[str, tuple[Callable[[Any], None], Callable[[Any], bool]]] = {
    "user variable": (lambda c: one(c, "SET @gp_x = 42"), lambda c: one(c, "SELECT @gp_x") is None),
    "temporary table": (lambda c: one(c, "CREATE TEMPORARY TABLE gp_tmp (a INT)"),
                        lambda c: _table_absent(c, "gp_tmp")),
    "named lock": (lambda c: one(c, f"DO GET_LOCK('{LOCK}', 0)"),
                   lambda c: one(admin_connect(), f"SELECT IS_FREE_LOCK('{LOCK}')") == 1),
    "named lock in a SELECT": (lambda c: one(c, f"SELECT get_lock('{LOCK}', 0)"),
                               lambda c: one(admin_connect(), f"SELECT IS_FREE_LOCK('{LOCK}')") == 1),
    "isolation level": (lambda c: one(c, "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
                        lambda c: one(c, "SELECT @@tx_isolation") == "REPEATABLE-READ"),
    "current database": (lambda c: one(c, "USE information_schema"), lambda c: one(c, "SELECT DATABASE()") == "test"),
    "time zone": (lambda c: one(c, "SET time_zone = '+05:00'"), lambda c: one(c, "SELECT @@time_zone") == "SYSTEM"),
    "prepared statement": (lambda c: one(c, "PREPARE gp_stmt FROM 'SELECT 1'"),
                           lambda c: _raises(lambda: one(c, "EXECUTE gp_stmt"), 1243)),
    "character set": (lambda c: one(c, "SET NAMES latin1"),
                      lambda c: one(c, "SELECT @@character_set_client") == "utf8mb4"),
    "autocommit switched off": (lambda c: c.autocommit(False), lambda c: one(c, "SELECT @@autocommit") == 1),
    "sql_mode": (lambda c: one(c, "SET SESSION sql_mode = 'ANSI_QUOTES'"),
                 lambda c: "ANSI_QUOTES" not in one(c, "SELECT @@SESSION.sql_mode")),
}  # fmt: skip


def _raises(call: Callable[[], Any], code: int) -> bool:
    try:
        call()
    except pymysql.err.MySQLError as exc:
        return exc.args[0] == code
    return False


@pytest.mark.parametrize("case", list(LEFTOVERS))
def test_next_user_gets_the_session_as_the_pool_configured_it(make_db, case):
    leave, clean = LEFTOVERS[case]
    pool = make_db().pool()
    with pool.connection() as conn:
        session = one(conn, "SELECT CONNECTION_ID()")
        leave(conn)
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") == session, "replaced instead of reset"
        assert clean(conn), f"{case} reached the next user"
    assert pool.stats()["connections_reset"] == 1


def test_lock_tables_left_behind_is_released_for_everyone_else(make_db, scratch_table):
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, f"LOCK TABLES {scratch_table} WRITE")
    other = admin_connect()
    one(other, "SET SESSION lock_wait_timeout = 3")
    start = time.monotonic()
    one(other, f"INSERT INTO {scratch_table} (v) VALUES (1)")
    assert time.monotonic() - start < 1.0  # not blocked by the lock the pool's user left


def test_autocommit_left_off_never_makes_the_next_insert_roll_back(make_db, scratch_table):
    """Before: conn.autocommit(False) left behind made a later INSERT on an autocommit pool
    silently roll back when its connection was returned."""
    pool = make_db().pool()
    with pool.connection() as conn:
        conn.autocommit(False)
    with pool.connection() as conn:
        one(conn, f"INSERT INTO {scratch_table} (v) VALUES (7)")
    with pool.connection() as conn:
        pass
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table} WHERE v = 7") == 1


def test_a_session_nobody_changed_is_never_reset(make_db, scratch_table):
    pool = make_db().pool()
    for i in range(10):
        with pool.connection() as conn:
            one(conn, "SELECT 1")
            one(conn, f"INSERT INTO {scratch_table} (v) VALUES ({i})")
            one(conn, f"SELECT COUNT(*) FROM {scratch_table}")
        with pool.connection() as conn:
            conn.begin()
            one(conn, f"UPDATE {scratch_table} SET v = v + 1")
            conn.commit()
    assert pool.stats()["connections_reset"] == 0


def test_autocommit_off_pool_rolls_back_a_transaction_a_select_opened(mysql_user, make_db, scratch_table):
    """PyMySQL dropped the status of the EOF packet that ends a result set, so a transaction a
    SELECT opened (autocommit off) was invisible at return and its snapshot passed on."""
    pool = make_db(autocommit=False).pool()
    with pool.connection() as conn:
        one(conn, f"SELECT COUNT(*) FROM {scratch_table}")  # opens a snapshot
    other = admin_connect()
    one(other, f"INSERT INTO {scratch_table} (v) VALUES (1)")
    with pool.connection() as conn:
        assert one(conn, f"SELECT COUNT(*) FROM {scratch_table}") == 1  # not the old snapshot's 0


def test_reset_session_off_leaves_the_session_as_the_user_left_it(make_db):
    pool = make_db(reset_session=False).pool()
    with pool.connection() as conn:
        one(conn, "SET @gp_kept = 1")
    with pool.connection() as conn:
        assert one(conn, "SELECT @gp_kept") == 1
    assert pool.stats()["connections_reset"] == 0


def test_a_table_lock_left_by_a_request_that_raised_does_not_block_other_workers(mysql_user, gunicorn, scratch_table):
    server = gunicorn(pool_conf({"default": mysql_user.config(max_size=1, timeout=5)}, kind="sync", workers=2),
                      env={"GP_POISON_TABLE": scratch_table})  # fmt: skip
    server.start(workers_ready=2)
    status, body = server.get("/lock-and-fail")
    assert status == 500 and body["error"] == "RuntimeError", body
    took: list[float] = []
    threads = [threading.Thread(target=lambda: took.append(server.get("/insert", timeout=15)[1].get("took", 99)))
               for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(took) == 4, took
    figure("table lock left by a failed request: slowest of 4 INSERTs after it", max(took))
    assert max(took) < 1.0, took  # before: blocked until the lock's session ended


def test_autocommit_switched_off_and_back_costs_no_reset(make_db, scratch_table):
    """Frameworks switch autocommit off and on around each transaction (Django's atomic()):
    the state-changed flag that raises must not cost a reset when the session ends as it began."""
    pool = make_db().pool()
    for _ in range(3):
        with pool.connection() as conn:
            conn.autocommit(False)
            one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
            conn.commit()
            conn.autocommit(True)
    assert pool.stats()["connections_reset"] == 0
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table}") == 3
