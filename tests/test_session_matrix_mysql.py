"""The session matrix: no session state passes from one user of a MariaDB connection to the next.

Each case is a statement (or a few) that changes the session: variables (SET,
``:=``, ``INTO``), session system variables, roles, one-shot and open
transactions, XA, savepoints, named and table locks, HANDLERs, prepared
statements, temporary tables and sequences, the current database,
LAST_INSERT_ID, and the same from inside stored procedures and functions and
after long prefixes and comments. A first lease runs it (and, in the raising
variant, then raises); the next lease must get the same server session
(CONNECTION_ID), reset, and see it exactly as a fresh connection of the pool
did (:func:`probe`: the session's variables, role, database, transaction,
locks, handlers, prepared statements, temporary objects, sequences).
What the server keeps of the last statement (LAST_INSERT_ID after a plain
INSERT, FOUND_ROWS, ROW_COUNT, warnings) is not session state the pool resets
unless something else called for a reset: the cases use UPDATE where they
need a write.

The matrix runs through ``DatabasePool.connection()`` and through Django's
``gunicorn_pool.django.mysql`` backend (owner check off, connections given
back by ``close()``; the raising variant is an ``atomic()`` block that raises),
each on both drivers (``driver``: PyMySQL, which reads the server's status
flags, and mysqlclient, which reads only the statements: see
gunicorn_pool/connectors/mysqlclient.py).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from typing import Any, Callable, Iterator, Union

import MySQLdb
import pymysql
import pytest
from support import admin_connect, database_pools
from test_django_backend import django_setup, make_alias  # noqa: F401  (fixtures)

pytestmark = pytest.mark.mysql

TAG = secrets.token_hex(3)
LOCK = f"gp_mx_lock_{TAG}"
ROLE_DEFAULT = f"gp_mx_rd_{TAG}"
ROLE_OTHER = f"gp_mx_ro_{TAG}"
TABLE = f"gp_mx_t_{TAG}"
SEQ = f"gp_mx_s_{TAG}"
LONG_LIST = ", ".join(f"{i} AS c{i}" for i in range(400))  # ~4 KiB of select list

# name: the statement the first user runs, or several (a tuple), or a callable given the PyMySQL
# connection. {t}, {seq}, {lock}, {role}, {long}, {tag} are filled in.
Action = Union[str, tuple[str, ...], Callable[[Any], None]]
CASES: dict[str, Action] = {
    # user variables
    "SET @v": "SET @gp_v = 1",
    "SELECT @v :=": "SELECT @gp_v := 5",
    "SELECT INTO @v": "SELECT 1 INTO @gp_v",
    "SELECT INTO @v, @w": "SELECT 1, 2 INTO @gp_v, @gp_w",
    "SELECT COUNT(*) FROM t INTO @v": "SELECT COUNT(*) FROM {t} INTO @gp_v",
    "UPDATE with :=": "UPDATE {t} SET v = (@gp_v := v) WHERE id > 0",
    # session system variables
    "sql_mode": "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "time_zone": "SET time_zone = '+05:00'",
    "character set": "SET NAMES latin1",
    "collation": "SET collation_connection = 'utf8mb4_bin'",
    "autocommit = 0 in SQL": "SET autocommit = 0",
    "autocommit(False)": lambda c: c.autocommit(False),
    "wait_timeout": "SET SESSION wait_timeout = 77",
    "max_statement_time": "SET SESSION max_statement_time = 7",
    "foreign_key_checks": "SET foreign_key_checks = 0",
    "unique_checks": "SET unique_checks = 0",
    "sql_select_limit": "SET sql_select_limit = 1",
    "group_concat_max_len": "SET group_concat_max_len = 99",
    "@@session assignment": "SET @@session.div_precision_increment = 9",
    # roles
    "SET ROLE other": "SET ROLE {role}",
    "SET ROLE NONE": "SET ROLE NONE",
    # transactions
    "SET TRANSACTION READ ONLY": "SET TRANSACTION READ ONLY",
    "SET TRANSACTION ISOLATION": "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET SESSION TRANSACTION ISOLATION": "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    "BEGIN left open": ("BEGIN", "UPDATE {t} SET v = v + 1"),
    "START TRANSACTION READ ONLY left open": ("START TRANSACTION READ ONLY", "SELECT COUNT(*) FROM {t}"),
    "XA START left open": ("XA START 'gp_mx'", "UPDATE {t} SET v = v + 1"),
    "XA idle": ("XA START 'gp_mx'", "XA END 'gp_mx'"),
    "savepoint": ("BEGIN", "SAVEPOINT gp_sp"),
    # locks
    "DO GET_LOCK": "DO GET_LOCK('{lock}', 0)",
    "GeT_LoCk mixed case": "SELECT GeT_LoCk('{lock}', 0)",
    "GET_LOCK after a 4 KiB select list": "SELECT {long}, GET_LOCK('{lock}', 0)",
    "GET_LOCK after a comment": "/* a comment\n that spans lines */ SELECT get_lock('{lock}', 0)",
    "GET_LOCK in a compound statement": "IF 1 THEN DO GET_LOCK('{lock}', 0); END IF",
    "LOCK TABLES": "LOCK TABLES {t} WRITE",
    "GET_LOCK in a procedure": "CALL gp_mx_lock_proc_{tag}()",
    "GET_LOCK in a function": "SELECT gp_mx_lock_func_{tag}()",
    # stored routines changing variables and temporary objects
    "variable set in a procedure": "CALL gp_mx_var_proc_{tag}()",
    "variable set in a function": "SELECT gp_mx_var_func_{tag}() FROM DUAL",
    "temporary table made in a procedure": "CALL gp_mx_tmp_proc_{tag}()",
    # cursors
    "HANDLER OPEN": "HANDLER {t} OPEN",
    "HANDLER OPEN AS, READ": ("HANDLER {t} OPEN AS gp_h", "HANDLER gp_h READ FIRST"),
    # prepared statements
    "PREPARE": "PREPARE gp_stmt FROM 'SELECT 1'",
    "EXECUTE IMMEDIATE": "EXECUTE IMMEDIATE 'SET @gp_v = 3'",
    # temporary objects, sequences
    "temporary table": "CREATE TEMPORARY TABLE gp_tmp (a INT)",
    "temporary sequence": "CREATE TEMPORARY SEQUENCE gp_tseq",
    "NEXTVAL": "SELECT NEXTVAL({seq})",
    "NEXT VALUE FOR": "SELECT NEXT VALUE FOR {seq}",
    # schema
    "USE": "USE information_schema",
    "select_db()": lambda c: c.select_db("information_schema"),
    # last_insert_id
    "LAST_INSERT_ID(expr)": "SELECT LAST_INSERT_ID(42)",
    # after long prefixes and comments
    "SET after a 2 KiB comment": "/* " + "x" * 2048 + " */ SET @gp_v = 1",
    "assignment after a -- comment": "-- the next line assigns\nSELECT @gp_v := 1",
    "executable comment": "/*!40101 SET @gp_v = 1 */",
    "compound statement": "BEGIN NOT ATOMIC SET @gp_v = 1; END",
    "GET_LOCK after 2 KiB of spaces": "SELECT" + " " * 2048 + "GET_LOCK('{lock}', 0)",
}  # fmt: skip


def _fill(sql: str) -> str:
    return sql.format(t=TABLE, seq=SEQ, lock=LOCK, role=ROLE_OTHER, long=LONG_LIST, tag=TAG)


@pytest.fixture(scope="module")
def objects(mysql_server: None) -> Iterator[None]:
    """Tables, a sequence, roles and stored routines for the cases; dropped after the module."""
    admin = admin_connect(read_timeout=10)
    routines = {
        f"PROCEDURE gp_mx_lock_proc_{TAG}": f"() BEGIN DO GET_LOCK('{LOCK}', 0); END",
        f"FUNCTION gp_mx_lock_func_{TAG}": f"() RETURNS INT NO SQL RETURN GET_LOCK('{LOCK}', 0)",
        f"PROCEDURE gp_mx_var_proc_{TAG}": "() BEGIN SET @gp_v = 7; END",
        f"FUNCTION gp_mx_var_func_{TAG}": "() RETURNS INT NO SQL BEGIN SET @gp_w = 8; RETURN 1; END",
        f"PROCEDURE gp_mx_tmp_proc_{TAG}": "() BEGIN CREATE TEMPORARY TABLE gp_tmp (a INT); END",
    }
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {TABLE} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {TABLE} (id, v) VALUES (1, 0)")
        cur.execute(f"CREATE SEQUENCE {SEQ}")
        for role in (ROLE_DEFAULT, ROLE_OTHER):
            cur.execute(f"CREATE ROLE {role}")
        for name, body in routines.items():
            cur.execute(f"CREATE {name}{body}")
    try:
        yield
    finally:
        with admin.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 10")
            for name in routines:
                cur.execute(f"DROP {name.replace(' ', ' IF EXISTS ', 1)}")
            for role in (ROLE_DEFAULT, ROLE_OTHER):
                cur.execute(f"DROP ROLE IF EXISTS {role}")
            cur.execute(f"DROP SEQUENCE IF EXISTS {SEQ}")
            cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.close()


@pytest.fixture
def login(objects: None, mysql_user: Any) -> Any:
    """The test's login, with a default role (so the reset must restore a role, not NONE) and
    another role it may switch to."""
    with admin_connect().cursor() as cur:
        for role in (ROLE_DEFAULT, ROLE_OTHER):
            cur.execute(f"GRANT {role} TO '{mysql_user.name}'@'%'")
        cur.execute(f"SET DEFAULT ROLE {ROLE_DEFAULT} FOR '{mysql_user.name}'@'%'")
    return mysql_user


def _run(cur: Any, sql: str) -> Any:
    try:
        cur.execute(sql)
        rows = cur.fetchall()
    except (pymysql.err.MySQLError, MySQLdb.MySQLError) as exc:
        return ("error", exc.args[0])
    return [list(row) for row in rows]  # PyMySQL and mysqlclient rows compare alike


def _other(sql: str) -> Any:
    """*sql* run by another session (root), bounded: an error code if it failed."""
    other = admin_connect(read_timeout=10)
    try:
        with other.cursor() as cur:
            return _run(cur, sql)
    finally:
        other.close()


#: Another session writes the row the cases and the probe use, waiting at most 1 s for any lock.
OTHER_WRITES = (
    f"SET STATEMENT lock_wait_timeout = 1, innodb_lock_wait_timeout = 1 FOR UPDATE {TABLE} SET v = v WHERE id = 1"
)


#: Stands for the other session's write (OTHER_WRITES) among a probe step's statements.
OTHER = object()

#: What :func:`probe` reads, in order: ``(key, statement)`` or ``(key, (statements...))``.
#: The probe's own XA transaction id: one per test process (a fixed one met another run's on a shared server).
PROBE_XID = f"gp_probe_{secrets.token_hex(4)}"
PROBE: tuple[tuple[str, Any], ...] = (
    ("transaction", (
        "START TRANSACTION",
        f"SELECT 1 FROM {TABLE} WHERE id = 1",
        OTHER,  # waits for the read's lock under SERIALIZABLE
        f"UPDATE {TABLE} SET v = v WHERE id = 1",  # refused in a READ ONLY transaction
        "ROLLBACK",
    )),
    ("lock held", f"SELECT IS_USED_LOCK('{LOCK}') = CONNECTION_ID()"),
    ("variables", (
        "SELECT @@session.sql_mode, @@session.time_zone, @@session.character_set_client,"
        " @@session.character_set_connection, @@session.character_set_results,"
        " @@session.collation_connection, @@session.autocommit, @@session.wait_timeout,"
        " @@session.max_statement_time, @@session.foreign_key_checks, @@session.unique_checks,"
        " @@session.sql_select_limit, @@session.group_concat_max_len, @@session.tx_isolation,"
        " @@session.tx_read_only, @@session.div_precision_increment"
    )),
    ("who", "SELECT DATABASE(), CURRENT_ROLE(), LAST_INSERT_ID(), @gp_v, @gp_w"),
    ("sequence", f"SELECT LASTVAL({SEQ})"),
    ("temporary table", "SELECT COUNT(*) FROM gp_tmp"),
    ("temporary sequence", "SELECT LASTVAL(gp_tseq)"),
    ("prepared", "EXECUTE gp_stmt"),
    ("handler", f"HANDLER {TABLE} READ FIRST"),
    ("handler as", "HANDLER gp_h READ FIRST"),
    ("savepoint", "ROLLBACK TO SAVEPOINT gp_sp"),
    ("xa", tuple(f"XA {step} '{PROBE_XID}'" for step in ("START", "END", "ROLLBACK"))),
)  # fmt: skip


def probe(conn: Any) -> dict[str, Any]:
    """The session of *conn* as its user sees it (errors as ``("error", code)``), in an order that
    lets nothing hide a leftover: first whether another session can write the row (a table lock,
    a transaction left open); then the next transaction's characteristics, before any other
    statement of this session (some, such as CONNECTION_ID() or IS_USED_LOCK(), make the server
    forget a one-shot SET TRANSACTION): read-only refuses the write, SERIALIZABLE makes the plain
    read lock the row against the other session; then the rest. Every statement is bounded by
    read_timeout, the other session's write by the lock wait timeouts (1 s)."""
    out: dict[str, Any] = {"row writable": _other(OTHER_WRITES)}
    with conn.cursor() as cur:
        for key, step in PROBE:
            if isinstance(step, tuple):
                out[key] = [_other(OTHER_WRITES) if sql is OTHER else _run(cur, sql) for sql in step]
            else:
                out[key] = _run(cur, step)
    return out


def _session_id(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


def _act(raw: Any, cursor: Any, action: Action) -> None:
    if callable(action):
        action(raw)
        return
    for statement in (action,) if isinstance(action, str) else action:
        cursor.execute(_fill(statement))
        cursor.fetchall()


@pytest.fixture(params=["pymysql", "mysqlclient"])
def driver(request: Any) -> str:
    """Each MySQL driver in turn (the test id names it)."""
    return str(request.param)


@pytest.fixture
def make_db(login: Any, driver: str) -> Iterator[Callable[..., Any]]:
    yield from database_pools(functools.partial(login.config, driver=driver), name="matrix")


@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
@pytest.mark.parametrize("case", list(CASES))
def test_through_database_pool(make_db, case, raises):
    """The first user's block ends cleanly, or raises after the change."""
    with make_db(max_size=1, read_timeout=10).connection() as conn:  # another pool: a fresh connection
        fresh = probe(conn)
    assert fresh["who"][0][1] == ROLE_DEFAULT and fresh["row writable"] in ([], ())
    db = make_db(max_size=1, read_timeout=10)
    with contextlib.suppress(RuntimeError), db.connection() as conn, conn.cursor() as cur:
        session = _session_id(conn)
        _act(conn, cur, CASES[case])
        if raises:
            raise RuntimeError("the block failed")
    with db.connection() as conn:
        seen = probe(conn)
        assert _session_id(conn) == session, "the connection was replaced instead of reset"
        assert seen == fresh, f"{case!r} reached the next user"


@pytest.fixture
def django_pair(login: Any, make_alias: Any, driver: str) -> tuple[Any, Any]:  # noqa: F811
    """Two Django aliases on the pooled backend of the test's login, one connection each: the
    first gives the fresh session to compare with."""
    options = {"pool": {"max_size": 1, "read_timeout": 10, "driver": driver}}
    return make_alias(OPTIONS=options), make_alias(OPTIONS=options)


@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
@pytest.mark.parametrize("case", list(CASES))
def test_through_django_backend(django_pair, case, raises):
    """The request ends after the change, or after a statement that failed (the view caught the
    error): Django closes the connection either way, which gives it back to the pool."""
    from django.db import DatabaseError

    other, conn = django_pair
    other.ensure_connection()
    fresh = probe(other.connection)
    other.close()
    assert fresh["who"][0][1] == ROLE_DEFAULT
    conn.ensure_connection()
    session = _session_id(conn.connection)
    with conn.cursor() as cur:
        _act(conn.connection, cur, CASES[case])
        if raises:
            with pytest.raises(DatabaseError):
                cur.execute("SELECT * FROM gp_no_such_table")
    conn.close()  # the end of the request
    conn.ensure_connection()
    seen = probe(conn.connection)
    assert _session_id(conn.connection) == session, "the connection was replaced instead of reset"
    assert seen == fresh, f"{case!r} reached the next request"
    conn.close()
