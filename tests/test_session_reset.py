"""Session state never passes from one user to the next: a session a user changed is reset on
return (COM_RESET_CONNECTION, then the pool's settings again), and one that changed nothing
costs nothing.

Every case borrows the one connection of a max_size=1 pool twice and checks
that the second borrower sees the session as the pool configured it, on the
same server session (CONNECTION_ID), so it was reset, not replaced.
"""

from __future__ import annotations

import contextlib
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
    assert pool.stats()["connections_reset"] == 1
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") == session, "replaced instead of reset"
        assert clean(conn), f"{case} reached the next user"


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


# -- what the server does not flag: roles, one-shot transactions, XA, unsure status -------------


@pytest.fixture
def secret_role(mysql_user):
    """A role granting SELECT on a table in a database the test's login cannot read otherwise,
    granted to the login (not as its default role). Yields (role, table); dropped after."""
    tag = secrets.token_hex(3)
    schema, role = f"gp_secret_{tag}", f"gp_reader_{tag}"
    admin = admin_connect()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {schema}")
        cur.execute(f"CREATE TABLE {schema}.payroll (salary INT)")
        cur.execute(f"INSERT INTO {schema}.payroll VALUES (120000)")
        cur.execute(f"CREATE ROLE {role}")
        cur.execute(f"GRANT SELECT ON {schema}.payroll TO {role}")
        cur.execute(f"GRANT {role} TO '{mysql_user.name}'@'%'")
    try:
        yield role, f"{schema}.payroll"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
            cur.execute(f"DROP DATABASE IF EXISTS {schema}")
        admin.close()


@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
def test_a_role_set_by_one_user_never_grants_the_next_its_privileges(make_db, secret_role, raises):
    """MariaDB keeps SET ROLE through COM_RESET_CONNECTION: before, the next user read the table
    with the first user's role (after a block that raised too)."""
    role, table = secret_role
    pool = make_db().pool()
    with pool.connection() as conn:
        with pytest.raises(pymysql.err.OperationalError):  # 1142: no privilege without the role
            one(conn, f"SELECT salary FROM {table}")
    with contextlib.suppress(RuntimeError), pool.connection() as conn:
        one(conn, f"SET ROLE {role}")
        assert one(conn, f"SELECT salary FROM {table}") == 120000
        if raises:
            raise RuntimeError("the block failed")
    with pool.connection() as conn:
        assert one(conn, "SELECT CURRENT_ROLE()") is None
        with pytest.raises(pymysql.err.OperationalError) as refused:
            one(conn, f"SELECT salary FROM {table}")
        assert refused.value.args[0] == 1142, refused.value


def test_a_default_role_is_given_back_after_set_role_none(make_db, secret_role, mysql_user):
    """A login whose default role grants the privilege: the reset restores that role, not NONE."""
    role, table = secret_role
    with admin_connect().cursor() as cur:
        cur.execute(f"SET DEFAULT ROLE {role} FOR '{mysql_user.name}'@'%'")
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, "SET ROLE NONE")
    with pool.connection() as conn:
        assert one(conn, "SELECT CURRENT_ROLE()") == role
        assert one(conn, f"SELECT salary FROM {table}") == 120000


def test_a_one_shot_read_only_transaction_never_reaches_the_next_user(make_db, scratch_table):
    """SET TRANSACTION READ ONLY (no SESSION) applies to the next transaction and raises no
    state-change flag: before, the next user's INSERT failed with 1792."""
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, "SET TRANSACTION READ ONLY")
    with pool.connection() as conn:
        one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")  # before: 1792, READ ONLY transaction
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table}") == 1


def test_a_one_shot_isolation_level_never_reaches_the_next_transaction(make_db, scratch_table):
    """SET TRANSACTION ISOLATION LEVEL SERIALIZABLE: before, the next user's transaction ran
    SERIALIZABLE, its plain reads locking rows against everyone else."""
    one(admin_connect(), f"INSERT INTO {scratch_table} (id, v) VALUES (1, 0)")
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    with pool.connection() as conn:
        conn.begin()
        one(conn, f"SELECT v FROM {scratch_table} WHERE id = 1")  # SERIALIZABLE: a shared lock
        other = admin_connect(read_timeout=10)
        one(other, "SET SESSION innodb_lock_wait_timeout = 1")
        one(other, f"UPDATE {scratch_table} SET v = 2 WHERE id = 1")  # before: 1205 after 1 s
        conn.rollback()


@pytest.mark.parametrize("ended", [False, True], ids=["active", "idle"])
def test_an_xa_transaction_left_open_is_ended_by_the_reset(make_db, scratch_table, ended):
    """XA START raises no state-change flag and COMMIT/ROLLBACK refuse it (1399): before, the
    block's clean exit raised 1399 and the connection was dropped; COM_RESET_CONNECTION ends it,
    and the same session serves the next user."""
    pool = make_db().pool()
    with pool.connection() as conn:
        session = one(conn, "SELECT CONNECTION_ID()")
        one(conn, "XA START 'gp_x'")
        one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
        if ended:
            one(conn, "XA END 'gp_x'")
    with pool.connection() as conn:
        assert one(conn, "SELECT CONNECTION_ID()") == session
        one(conn, "XA START 'gp_y'")  # before: 1399 (the other XA transaction is still there)
        one(conn, "XA END 'gp_y'")
        one(conn, "XA ROLLBACK 'gp_y'")
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table}") == 0  # the XA branch rolled back


def test_a_handler_left_open_is_closed(make_db, scratch_table):
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, f"HANDLER {scratch_table} OPEN")
    with pool.connection() as conn:
        assert _raises(lambda: one(conn, f"HANDLER {scratch_table} READ FIRST"), 1109)  # unknown table in HANDLER


@pytest.mark.parametrize("statement", [
    "SELECT {pad}GET_LOCK('{lock}', 0)",  # after 2 KiB of select list
    "/* {pad} */ SELECT GET_LOCK('{lock}', 0)",  # after a 2 KiB comment
    "SELECT gEt_LoCk('{lock}', 0)",
    "DO GET_LOCK('{lock}', 0)",
], ids=["long select list", "long comment", "mixed case", "DO"])  # fmt: skip
def test_a_named_lock_taken_anywhere_in_a_statement_is_released(make_db, statement):
    """The README promised 1 KiB, the code scanned 48 bytes, mixed case was missed: the whole
    statement is read now."""
    lock = f"gp_l_{secrets.token_hex(3)}"
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, statement.format(pad="1 AS a, " * 256, lock=lock))
        assert one(admin_connect(), f"SELECT IS_FREE_LOCK('{lock}')") == 0
    assert one(admin_connect(), f"SELECT IS_FREE_LOCK('{lock}')") == 1


@pytest.fixture
def lock_routines():
    """A stored procedure and a stored function that take a named lock; dropped after."""
    tag = secrets.token_hex(3)
    lock, proc, func = f"gp_rl_{tag}", f"gp_lock_proc_{tag}", f"gp_lock_func_{tag}"
    admin = admin_connect()
    with admin.cursor() as cur:
        cur.execute(f"CREATE PROCEDURE {proc}() BEGIN DO GET_LOCK('{lock}', 0); END")
        cur.execute(f"CREATE FUNCTION {func}() RETURNS INT NO SQL RETURN GET_LOCK('{lock}', 0)")
    try:
        yield lock, f"CALL {proc}()", f"SELECT {func}()"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PROCEDURE IF EXISTS {proc}")
            cur.execute(f"DROP FUNCTION IF EXISTS {func}")
        admin.close()


@pytest.mark.parametrize("which", [1, 2], ids=["CALL", "stored function"])
def test_a_stored_routine_of_unknown_effect_costs_a_reset(make_db, lock_routines, which):
    lock, statement = lock_routines[0], lock_routines[which]
    pool = make_db().pool()
    with pool.connection() as conn:
        one(conn, statement)
    assert one(admin_connect(), f"SELECT IS_FREE_LOCK('{lock}')") == 1  # before: held by the idle connection
    assert pool.stats()["connections_reset"] == 1


def _com_rollbacks(conn: Any) -> int:
    return int(one(conn, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
                         " WHERE VARIABLE_NAME = 'COM_ROLLBACK'"))  # fmt: skip


def test_ordinary_statements_cost_no_reset_and_no_round_trip(make_db, scratch_table):
    """Built-ins, IN lists, column lists, e-mail addresses and parentheses in parameters,
    comments, system variables read, FOR UPDATE: no reset, no ROLLBACK."""
    pool = make_db().pool()
    statements = [
        ("SELECT COUNT(*), MAX(v), COALESCE(MIN(v), 0), NOW() FROM {t} WHERE id IN (1, 2, 3)", ()),
        ("INSERT INTO {t} (v) VALUES (%s), (%s)", (1, 2)),
        ("INSERT INTO `{t}` (`v`) VALUES (LENGTH(%s))", ("bob@example.com",)),
        ("SELECT id FROM {t} WHERE v = LENGTH(%s) /* controller='users' */", ("call me (maybe); lock it",)),
        ("UPDATE {t} SET v = v + 1 WHERE id IN (SELECT id FROM (SELECT id FROM {t}) AS x)", ()),
        ("SELECT @@session.tx_isolation, @@autocommit, CONNECTION_ID()", ()),
        ("DELETE FROM {t} WHERE id = %s", (99,)),
        ("SELECT * FROM {t} WHERE id = 1 FOR UPDATE", ()),
        ("SELECT DATE_FORMAT(NOW(), '%%Y'), JSON_EXTRACT('{{\"a\": 1}}', '$.a'), CAST(1 AS DECIMAL(10, 2))", ()),
    ]
    with pool.connection() as conn:
        rollbacks = _com_rollbacks(conn)
    for _ in range(3):
        for sql, args in statements:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute(sql.format(t=scratch_table), args)
                cur.fetchall()
    with pool.connection() as conn:
        assert _com_rollbacks(conn) == rollbacks
    assert pool.stats()["connections_reset"] == 0


def test_a_failed_statement_never_leaves_its_transaction_open(make_db, scratch_table):
    """An error packet carries no server status, so PyMySQL's stayed as COMMIT left it (no
    transaction): with autocommit off, an INSERT failing on a duplicate key, caught in the
    block, left the transaction it opened RUNNING on the idle connection, its locks held."""
    one(admin_connect(), f"INSERT INTO {scratch_table} (id, v) VALUES (1, 0)")
    pool = make_db(autocommit=False).pool()
    with pool.connection() as conn:
        conn.commit()
        with pytest.raises(pymysql.err.IntegrityError):
            one(conn, f"INSERT INTO {scratch_table} (id, v) VALUES (1, 1)")  # takes a lock on row 1
    other = admin_connect(read_timeout=10)
    one(other, "SET SESSION innodb_lock_wait_timeout = 1")
    one(other, f"UPDATE {scratch_table} SET v = 5 WHERE id = 1")  # before: 1205 after 1 s
    with pool.connection() as conn:
        assert _com_rollbacks(conn) == 1  # rolled back once, at the return
    assert pool.stats()["connections_reset"] == 0


def test_the_reset_is_one_round_trip_and_runs_after_any_failed_block(make_db, scratch_table):
    """The reset is sent in one write and read back in order; a block that raised is reset even
    when nothing it did was seen (here a trigger set a user variable)."""
    trigger = f"gp_trg_{secrets.token_hex(3)}"
    with admin_connect().cursor() as cur:
        cur.execute(f"CREATE TRIGGER {trigger} AFTER INSERT ON {scratch_table} FOR EACH ROW SET @gp_trig = NEW.v")
    pool = make_db().pool()
    writes: list[int] = []
    with contextlib.suppress(RuntimeError), pool.connection() as conn:
        one(conn, f"INSERT INTO {scratch_table} (v) VALUES (7)")
        assert one(conn, "SELECT @gp_trig") == 7
        write = conn._write_bytes
        conn._write_bytes = lambda data: (writes.append(len(data)), write(data))[1]
        raise RuntimeError("the block failed")
    with pool.connection() as conn:
        del conn._write_bytes
        assert one(conn, "SELECT @gp_trig") is None
    assert len(writes) == 1, writes  # COM_RESET_CONNECTION, SET ROLE, SET NAMES..., USE: one write
    assert pool.stats()["connections_reset"] == 1


def test_status_exact_reads_a_plain_pymysql_connection(mysql_user, scratch_table):
    """The API a SQLAlchemy creator's connections get: status_exact() swaps the class of a plain
    pymysql.Connection; transaction_open() and session_changed() then read it exactly."""
    from pymysql.constants import CLIENT

    from gunicorn_pool.connectors.mysql import reset_session, session_changed, status_exact, transaction_open

    kw = dict(host=mysql_user.host, port=mysql_user.port, user=mysql_user.name, password=mysql_user.password,
              database=mysql_user.database, read_timeout=10, ssl_disabled=True)  # fmt: skip
    plain = pymysql.connect(**kw)
    assert transaction_open(plain)  # a plain connection's status may be stale: assume the worst
    conn = pymysql.connect(**kw, client_flag=CLIENT.SESSION_TRACK)
    assert status_exact(conn) is True
    assert not transaction_open(conn) and not session_changed(conn)
    one(conn, f"SELECT COUNT(*) FROM {scratch_table}")  # autocommit off (PyMySQL's default): opens one
    assert transaction_open(conn)  # read off the EOF packet
    conn.commit()
    assert not transaction_open(conn)
    one(conn, f"INSERT INTO {scratch_table} (id, v) VALUES (1, 0)")
    conn.commit()
    with pytest.raises(pymysql.err.IntegrityError):
        one(conn, f"INSERT INTO {scratch_table} (id, v) VALUES (1, 0)")
    assert transaction_open(conn)  # unsure after an error packet
    conn.rollback()
    one(conn, "SELECT @gp_api := 1")
    assert session_changed(conn)
    assert reset_session(conn, charset="utf8mb4", autocommit=True, database=mysql_user.database) is True
    assert not session_changed(conn) and one(conn, "SELECT @gp_api") is None and one(conn, "SELECT @@autocommit") == 1
    plain.close()
    conn.close()
