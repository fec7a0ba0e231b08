"""The PostgreSQL session matrix: whatever a lease does to its session, the next lease gets the
session exactly as the pool configured it, on psycopg 3 and on psycopg2 (each case runs once per
driver it applies to: a few are one driver's own API).

Each case runs on a pool of one connection: a first lease takes a snapshot of
the fresh session (every ``pg_settings`` value, the custom settings the cases
use, session and current user, temporary objects, SQL prepared statements,
LISTEN channels, advisory locks held, open cursors, and the driver's
connection object's own settings), a second lease changes the session
(returning normally, or raising), and a third lease compares: the same
snapshot, on the same backend (``pg_backend_pid()``: reset, not replaced)
unless the case is one the pool must close. ``connections_reset`` says
whether the pool reset the session, so the cases that change nothing also
show that they cost no reset.

Functions, a procedure, a table and a sequence live in a schema of this
module's own (on the pools' ``search_path``), made by the admin connection;
every statement of the pools is bounded by ``statement_timeout`` and
``lock_timeout`` (startup options), the admin's by its own
``statement_timeout``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from typing import Any, Callable, Optional

import psycopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pytest
from psycopg.rows import dict_row, tuple_row
from support import PG_PASSWORD, PG_USER, PGUser, database_pools, pg_admin_connect

pytestmark = pytest.mark.postgresql

BOUNDS = "-c statement_timeout=5000 -c lock_timeout=5000"


@dataclasses.dataclass(frozen=True)
class Matrix:
    """What the cases use: the login, its schema of functions, a role it may SET ROLE to, a lock key."""

    login: PGUser
    schema: str
    role: str
    key: int


FUNCTIONS = """
CREATE FUNCTION {s}.set_tenant(t text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$;
CREATE FUNCTION {s}.set_tenant_sql(t text) RETURNS text LANGUAGE sql AS
  $$ SELECT set_config('app.tenant', t, false) $$;
CREATE FUNCTION {s}.tenant_rows(t text) RETURNS SETOF text LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN NEXT t; END $$;
CREATE PROCEDURE {s}.set_tenant_proc(t text) LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('app.tenant', t, false); END $$;
CREATE FUNCTION {s}.set_work_mem() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET work_mem = '61MB'; END $$;
CREATE FUNCTION {s}.set_role_to(r text) RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('role', r, false); END $$;
CREATE FUNCTION {s}.take_lock(k bigint) RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_lock(k); END $$;
CREATE FUNCTION {s}.try_lock(k bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT pg_try_advisory_lock(k) $$;
CREATE FUNCTION {s}.make_temp() RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN CREATE TEMP TABLE IF NOT EXISTS gp_fn_tmp (a int); END $$;
CREATE FUNCTION {s}.listen_fn() RETURNS void LANGUAGE plpgsql AS $$ BEGIN LISTEN gp_fn_channel; END $$;
CREATE FUNCTION {s}.prepare_fn() RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN EXECUTE 'PREPARE gp_fn_stmt AS SELECT 1'; END $$;
CREATE FUNCTION {s}.hold_fn() RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN EXECUTE 'DECLARE gp_fn_cursor CURSOR WITH HOLD FOR SELECT 1'; END $$;
CREATE FUNCTION {s}.notice_fn() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'gp-notice'; END $$;
CREATE TABLE {s}.items (id serial PRIMARY KEY, name text NOT NULL, qty int, created timestamptz DEFAULT now());
CREATE SEQUENCE {s}.seq;
"""


@pytest.fixture(scope="module")
def matrix(postgresql_server: None) -> Iterator[Matrix]:
    login = PGUser(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    schema, role = f"gp_matrix_{secrets.token_hex(4)}", f"{login.name}_role"
    admin = login.admin
    try:
        with admin.cursor() as cur:
            cur.execute("SET statement_timeout = 10000")
            cur.execute(f"CREATE SCHEMA {schema}")
            cur.execute(f'GRANT USAGE ON SCHEMA {schema} TO "{login.name}"')
            cur.execute(FUNCTIONS.format(s=schema))
            cur.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO "{login.name}"')
            cur.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO "{login.name}"')
            cur.execute(f'CREATE ROLE "{role}" NOLOGIN')
            cur.execute(f'GRANT "{role}" TO "{login.name}"')
        yield Matrix(login, schema, role, 880_000 + secrets.randbelow(100_000))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        login.drop()  # ends its sessions first
        with pg_admin_connect(options="-c statement_timeout=10000") as other:
            other.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def make_db(matrix: Matrix, driver: str) -> Iterator[Callable[..., Any]]:
    def config(**options: Any) -> dict[str, Any]:
        return matrix.login.config(options=f"{BOUNDS} -c search_path={matrix.schema},public", driver=driver,
                                   **options)  # fmt: skip

    yield from database_pools(config, name="pg-matrix")


# -- the two drivers ---------------------------------------------------------------------------------


def is_psycopg2(conn: Any) -> bool:
    return isinstance(conn, psycopg2.extensions.connection)


def tuples(conn: Any) -> Any:
    """A cursor of *conn* whose rows are tuples, whatever the connection's factories say."""
    if is_psycopg2(conn):
        return conn.cursor(cursor_factory=psycopg2.extensions.cursor)
    return conn.cursor(row_factory=tuple_row)


def errors(conn: Any) -> Any:
    return psycopg2.errors if is_psycopg2(conn) else psycopg.errors


def client(conn: Any) -> dict[str, Any]:
    """The connection object's own settings and state, as the next user would find them."""
    if not is_psycopg2(conn):
        return client_side(conn)
    return {
        "autocommit": conn.autocommit, "isolation_level": conn.isolation_level, "readonly": conn.readonly,
        "deferrable": conn.deferrable, "encoding": conn.encoding, "cursor_factory": conn.cursor_factory,
        "transaction": conn.get_transaction_status(), "notices": len(conn.notices), "notifies": len(conn.notifies),
    }  # fmt: skip


# -- the snapshot ---------------------------------------------------------------------------------------

#: Custom settings the cases set. PostgreSQL keeps a custom setting's name defined for the rest of
#: the session once it was set: after the reset it reads '' where a fresh session reads NULL
#: (docs/postgresql.md). The value is what must not pass on; '' and NULL compare equal here.
CUSTOM = ("app.tenant", "app.x")
#: Every setting, except those of a library a case loaded (plpgsql.*: the first PL/pgSQL function
#: a session runs loads it, and nothing unloads it) while they are at their default.
SETTINGS = "name NOT LIKE '%.%' OR source <> 'default'"

SNAPSHOT_SQL = f"""
SELECT json_build_object(
  'settings', (SELECT json_object_agg(name, setting) FROM pg_settings WHERE {SETTINGS}),
  'custom', json_build_array({", ".join(f"nullif(current_setting('{name}', true), '')" for name in CUSTOM)}),
  'users', json_build_array(session_user, current_user),
  'tmp objects', (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
  'prepared (SQL)', (SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM pg_prepared_statements WHERE from_sql),
  'listening', (SELECT coalesce(json_agg(c ORDER BY c), '[]') FROM pg_listening_channels() c),
  -- the unnamed portal of a statement psycopg prepared (its cache and the server agree) is not the user's
  'cursors', (SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM pg_cursors WHERE name <> ''))
"""


def snapshot(conn: Any, m: Matrix) -> dict[str, Any]:
    """The session as the next user would find it, server and client side (its advisory locks
    seen from the admin connection)."""
    with tuples(conn) as cur:
        cur.execute(SNAPSHOT_SQL)
        server = cur.fetchone()[0]
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    server["advisory locks"] = advisory_locks(m, pid)
    server["client"] = client(conn)
    return server


def advisory_locks(m: Matrix, pid: int) -> int:
    """Advisory locks backend *pid* holds, seen from the admin connection."""
    with m.login.admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'", (pid,))
        return int(cur.fetchone()[0])


def client_side(conn: Any) -> dict[str, Any]:
    """The psycopg connection object's own settings (sync or asyncio: the same attributes)."""
    return {
        "autocommit": conn.autocommit, "isolation_level": conn.isolation_level, "read_only": conn.read_only,
        "deferrable": conn.deferrable, "prepare_threshold": conn.prepare_threshold,
        "row_factory": conn.row_factory, "cursor_factory": conn.cursor_factory,
        "server_cursor_factory": conn.server_cursor_factory, "encoding": conn.info.encoding,
        "transaction": conn.info.transaction_status.name,
        "handlers": (len(conn._notice_handlers), len(conn._notify_handlers)),
    }  # fmt: skip


def backend(conn: Any) -> int:
    with tuples(conn) as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


# -- the cases ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """*change* runs in the second lease. *outcome*: ``reset`` (same backend, one reset),
    ``clean`` (same backend, no reset: nothing to reset; a lease that raised is reset anyway)
    or ``drop`` (the pool closes it: a new backend). *visible*: the change shows in that
    lease's own snapshot (checked, so every case really changes something). *pool*: options
    of the pool. *after*: a check of the third lease besides the snapshot. *drivers*: the
    drivers it runs on."""

    change: Callable[[Any, Matrix], Any]
    outcome: str = "reset"
    visible: bool = True
    pool: dict[str, Any] = dataclasses.field(default_factory=dict)
    after: Optional[Callable[[Any], Any]] = None
    drivers: tuple[str, ...] = ("psycopg", "psycopg2")  # the drivers whose API the case uses


def run(*statements: str) -> Callable[[Any, Matrix], None]:
    """A change that executes *statements* in turn; ``{s}``, ``{role}``, ``{login}``, ``{key}`` are
    the matrix's schema, role, login and lock key."""

    def change(conn: Any, m: Matrix) -> None:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql.format(s=m.schema, role=m.role, login=m.login.name, key=m.key))

    change.statements = statements  # type: ignore[attr-defined]  # read by the asyncio subset
    return change


def in_transaction(*statements: str) -> Callable[[Any, Matrix], None]:
    """*statements* in a transaction: psycopg's ``transaction()``; on psycopg2 (autocommit),
    BEGIN and COMMIT statements, which leave the connection object as it was."""

    def change(conn: Any, m: Matrix) -> None:
        if is_psycopg2(conn):
            run("BEGIN", *statements, "COMMIT")(conn, m)
            return
        with conn.transaction():
            run(*statements)(conn, m)

    return change


def _attribute(name: str, value: Any) -> Callable[[Any, Matrix], None]:
    return lambda conn, m: setattr(conn, name, value)


def _with_parameter(conn: Any, m: Matrix) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT set_tenant(%s)", ("acme",))


def _server_cursor_with_hold(conn: Any, m: Matrix) -> None:
    cur = conn.cursor("gp_held", withhold=True)
    cur.execute("SELECT generate_series(1, 10)")
    cur.fetchone()


def _copy_in_progress(conn: Any, m: Matrix) -> None:
    copy = conn.cursor().copy("COPY (SELECT generate_series(1, 100000)) TO STDOUT")
    copy.__enter__()
    conn.gp_test_copy = copy  # kept referenced: its generator would end the COPY when collected
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE


def _failed_transaction(conn: Any, m: Matrix) -> None:
    with pytest.raises(errors(conn).DivisionByZero), conn.cursor() as cur:
        cur.execute("SELECT 1 / 0")


def _orm_like(conn: Any, m: Matrix) -> None:
    """What an ORM sends on a request: SELECTs with ordinary builtins, INSERT ... RETURNING,
    UPDATE, DELETE, a transaction."""
    cur = conn.cursor()
    cur.execute("INSERT INTO items (name, qty) VALUES (%s, %s) RETURNING id", ("pen", 2))
    (item,) = cur.fetchone()
    cur.execute("SELECT items.id, lower(items.name), coalesce(items.qty, 0), date_trunc('day', items.created)"
                " FROM items WHERE items.id = %s AND items.name = ANY(%s)", (item, ["pen"]))  # fmt: skip
    cur.execute("SELECT count(*) AS n, max(qty) FILTER (WHERE qty > 0) FROM items WHERE created < now()")
    cur.execute('SELECT "items"."id" FROM "items" WHERE "items"."id" IN (%s, %s) LIMIT %s', (item, -1, 5))
    in_transaction(f"UPDATE items SET qty = qty + 1 WHERE id = {int(item)}",
                   "SELECT pg_advisory_xact_lock({key})")(conn, m)  # transaction-scoped: released at COMMIT
    cur.execute('INSERT INTO "items" ("name", "qty") VALUES (%s, %s) ON CONFLICT (id) DO NOTHING', ("cap", None))
    cur.execute("DELETE FROM items WHERE id = %s", (item,))
    cur.close()


def _prepared_by_psycopg(conn: Any, m: Matrix) -> None:
    assert conn.execute("SELECT %s::int + 1", (1,), prepare=True).fetchone()[0] == 2


def _prepared_again(conn: Any) -> None:
    """psycopg's cache and the server agree: its prepared statement still runs (or is prepared anew)."""
    assert conn.execute("SELECT %s::int + 1", (2,), prepare=True).fetchone()[0] == 3


def _random_not_seeded(conn: Any) -> None:
    """random() does not follow the sequence the last user seeded."""
    with tuples(conn) as cur:
        cur.execute("SELECT random()")
        drawn = cur.fetchone()[0]
        cur.execute("SELECT setseed(0.5)")  # this lease is closed at return, like the last one
        cur.execute("SELECT random()")
        assert drawn != cur.fetchone()[0]


def _callproc(conn: Any, m: Matrix) -> None:
    conn.cursor().callproc("set_tenant", ("acme",))


def _notice(conn: Any, m: Matrix) -> None:
    with conn.cursor() as cur:  # a notice raised by a function of the user's: the call resets anyway
        cur.execute("SELECT notice_fn()")
    assert conn.notices


def _bulk(conn: Any, m: Matrix) -> None:
    """psycopg2.extras' bulk helpers: the values are in the text psycopg2 sends."""
    psycopg2.extras.execute_values(conn.cursor(), "INSERT INTO items (name, qty) VALUES %s", [("a", 1), ("b", 2)])
    psycopg2.extras.execute_batch(conn.cursor(), "UPDATE items SET qty = %s WHERE name = %s", [(3, "a"), (4, "b")])
    run("DELETE FROM items WHERE name IN ('a', 'b')")(conn, m)


def _named_cursor_in_a_transaction(conn: Any, m: Matrix) -> None:
    cur = conn.cursor("gp_named")  # WITHOUT HOLD: it ends with its transaction
    cur.execute("SELECT generate_series(1, 10)")
    cur.fetchone()


def _client_encoding(conn: Any, m: Matrix) -> None:
    conn.set_client_encoding("LATIN1")


PSYCOPG = ("psycopg",)
PSYCOPG2 = ("psycopg2",)
LONG_COMMENT = "/* " + "a note that pads the statement " * 160 + "*/ "  # 5 KiB before the call
LONG_LITERAL = "'" + "x" * 5000 + "'"

CASES: dict[str, Case] = {
    # settings
    "SET work_mem": Case(run("SET work_mem = '77MB'")),
    "SET search_path": Case(run("SET search_path = pg_catalog")),
    "SET ROLE": Case(run('SET ROLE "{role}"')),
    "SET SESSION AUTHORIZATION": Case(run('SET SESSION AUTHORIZATION "{login}"'),
                                      pool={"user": PG_USER, "password": PG_PASSWORD}),
    "SET TIME ZONE": Case(run("SET TIME ZONE 'Asia/Kolkata'")),
    "SET datestyle": Case(run("SET datestyle = 'SQL, DMY'")),
    "SET statement_timeout": Case(run("SET statement_timeout = 1234")),
    "SET application_name": Case(run("SET application_name = 'leaked'")),
    "SET custom app.x": Case(run("SET app.x = 'leaked'")),
    "SET client_encoding": Case(run("SET client_encoding = 'LATIN1'")),
    "SET bytea_output": Case(run("SET bytea_output = 'escape'")),
    "SET default_transaction_read_only": Case(run("SET default_transaction_read_only = on")),
    "SET SESSION CHARACTERISTICS": Case(run("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")),
    "SET LOCAL in a transaction": Case(in_transaction("SET LOCAL work_mem = '9MB'"), visible=False),
    "set_config(search_path) in a SELECT": Case(run("SELECT set_config('search_path', 'pg_catalog', false)")),
    "set_config(app.tenant) in a SELECT": Case(run("SELECT set_config('app.tenant', 'acme', false)")),
    "set_config(role) in a SELECT": Case(run("SELECT set_config('role', '{role}', false)")),
    # functions that change the session where no tag shows it
    "PL/pgSQL function sets the tenant": Case(run("SELECT set_tenant('acme')")),
    "SQL function sets the tenant": Case(run("SELECT set_tenant_sql('acme')")),
    "the function called with a parameter": Case(_with_parameter),
    "the function schema-qualified": Case(run("SELECT {s}.set_tenant('acme')")),
    "the function in upper case": Case(run("SELECT SET_TENANT('acme')")),
    "the function quoted": Case(run("SELECT \"set_tenant\"('acme')")),
    "the function in FROM": Case(run("SELECT * FROM tenant_rows('acme')")),
    "the function in a subquery": Case(run("SELECT (SELECT set_tenant('acme')) AS tenant")),
    "the function after 5 KiB of comment": Case(run(LONG_COMMENT + "SELECT set_tenant('acme')")),
    "set_config after 5 KiB of comment": Case(run(LONG_COMMENT + "SELECT set_config('app.tenant', 'acme', false)")),
    "set_config after a 5 KiB literal": Case(run(f"SELECT {LONG_LITERAL} AS pad, set_config('app.x', 'acme', false)")),
    "the function after a line comment": Case(run("-- who we serve\nSELECT set_tenant('acme')")),
    "the function in the second statement": Case(run("SELECT 1; SELECT set_tenant('acme')")),
    "function runs SET": Case(run("SELECT set_work_mem()")),
    "function sets the role": Case(run("SELECT set_role_to('{role}')")),
    "function takes an advisory lock": Case(run("SELECT take_lock({key})")),
    "function takes a try-advisory lock": Case(run("SELECT try_lock({key})")),
    "function creates a temporary table": Case(run("SELECT make_temp()")),
    "function LISTENs": Case(run("SELECT listen_fn()")),
    "function PREPAREs": Case(run("SELECT prepare_fn()")),
    "function declares a cursor WITH HOLD": Case(run("SELECT hold_fn()")),
    "CALL a procedure": Case(run("CALL set_tenant_proc('acme')")),
    "DO block sets a setting": Case(run("DO $$ BEGIN PERFORM set_config('app.x', 'acme', false); END $$")),
    "DO block takes an advisory lock": Case(run("DO $$ BEGIN PERFORM pg_advisory_lock({key}); END $$")),
    "DO block creates a temporary table": Case(run("DO $$ BEGIN CREATE TEMP TABLE gp_do_tmp (a int); END $$")),
    # advisory locks
    "pg_advisory_lock": Case(run("SELECT pg_advisory_lock({key})")),
    "pg_try_advisory_lock": Case(run("SELECT pg_try_advisory_lock({key})")),
    "pg_advisory_lock_shared": Case(run("SELECT pg_advisory_lock_shared({key})")),
    "pg_advisory_xact_lock in a transaction": Case(in_transaction("SELECT pg_advisory_xact_lock({key})"),
                                                   outcome="clean", visible=False),
    # temporary objects
    "CREATE TEMP TABLE": Case(run("CREATE TEMP TABLE gp_tmp (a int)")),
    "CREATE TEMP VIEW": Case(run("CREATE TEMP VIEW gp_tmp_v AS SELECT 1 AS a")),
    "CREATE TEMP SEQUENCE": Case(run("CREATE TEMP SEQUENCE gp_tmp_s")),
    "CREATE TEMPORARY TABLE AS": Case(run("CREATE TEMPORARY TABLE gp_tmp AS SELECT 1 AS a")),
    "SELECT INTO TEMP": Case(run("SELECT 1 AS a INTO TEMP gp_tmp")),
    # prepared statements, LISTEN, cursors
    "PREPARE": Case(run("PREPARE gp_stmt AS SELECT 1")),
    "psycopg's own prepared statement": Case(_prepared_by_psycopg, outcome="clean", visible=False,
                                             after=_prepared_again, drivers=PSYCOPG),
    "LISTEN": Case(run("LISTEN gp_channel")),
    "DECLARE CURSOR WITH HOLD": Case(run("DECLARE gp_held CURSOR WITH HOLD FOR SELECT 1")),
    "server-side cursor withhold=True": Case(_server_cursor_with_hold),
    "DECLARE in a transaction left open": Case(run("DECLARE gp_open CURSOR FOR SELECT 1"),
                                               pool={"autocommit": False}),
    # transactions
    "transaction left open": Case(run("INSERT INTO items (name) VALUES ('open')"), outcome="clean", visible=False,
                                  pool={"autocommit": False}),
    "transaction in error": Case(_failed_transaction, outcome="clean", visible=False, pool={"autocommit": False}),
    "BEGIN without COMMIT": Case(run("BEGIN", "SELECT 1"), outcome="clean"),
    # the psycopg connection object
    "isolation_level": Case(_attribute("isolation_level", psycopg.IsolationLevel.SERIALIZABLE), drivers=PSYCOPG),
    "read_only": Case(_attribute("read_only", True), drivers=PSYCOPG),
    "deferrable": Case(_attribute("deferrable", True)),
    "autocommit off": Case(_attribute("autocommit", False)),
    "prepare_threshold": Case(_attribute("prepare_threshold", 0), drivers=PSYCOPG),
    "row_factory": Case(_attribute("row_factory", dict_row), drivers=PSYCOPG),
    "cursor_factory (its statements are not seen)": Case(_attribute("cursor_factory", psycopg.ClientCursor),
                                                         drivers=PSYCOPG),
    # the psycopg2 connection object
    "psycopg2 isolation_level (SET in autocommit)": Case(_attribute(
        "isolation_level", psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE), drivers=PSYCOPG2),
    "psycopg2 readonly": Case(_attribute("readonly", True), drivers=PSYCOPG2),
    "psycopg2 set_client_encoding": Case(_client_encoding, drivers=PSYCOPG2),
    "psycopg2 cursor_factory": Case(_attribute("cursor_factory", psycopg2.extras.RealDictCursor), drivers=PSYCOPG2),
    "psycopg2 notices": Case(_notice, drivers=PSYCOPG2),
    # what the pool must close
    "the user closed the connection": Case(lambda conn, m: conn.close(), outcome="drop", visible=False),
    "setseed() (DISCARD ALL keeps the seed)": Case(run("SELECT setseed(0.5)"), outcome="drop", visible=False,
                                                   after=_random_not_seeded),
    "COPY left in progress": Case(_copy_in_progress, outcome="drop", visible=False, drivers=PSYCOPG),
    # what needs no reset
    "ORM-like statements": Case(_orm_like, outcome="clean", visible=False),
    "nextval()": Case(run("SELECT nextval('seq')"), outcome="clean", visible=False),
    "psycopg2 execute_values and execute_batch": Case(_bulk, outcome="clean", visible=False, drivers=PSYCOPG2),
    "psycopg2 named cursor in a transaction": Case(_named_cursor_in_a_transaction, outcome="clean", visible=False,
                                                   pool={"autocommit": False}, drivers=PSYCOPG2),
    # what psycopg2 sees of a statement followed by another: the last one's tag only
    "SET followed by a SELECT": Case(run("SET work_mem = '77MB'; SELECT 1")),
    "psycopg2 callproc of the function": Case(_callproc, drivers=PSYCOPG2),
}  # fmt: skip


class Raised(Exception):
    """The view failed after changing the session."""


RUNS = [pytest.param(driver, name, id=f"{driver}-{name}") for name, case in CASES.items() for driver in case.drivers]


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("driver, name", RUNS)
def test_the_next_lease_gets_the_session_as_the_pool_configured_it(matrix, make_db, driver, name, raises):
    case = CASES[name]
    pool = make_db(**case.pool).pool()
    with pool.connection() as conn:
        pid, fresh = backend(conn), snapshot(conn, matrix)
    try:
        with pool.connection() as conn:
            assert backend(conn) == pid
            case.change(conn, matrix)
            if case.visible:
                assert snapshot(conn, matrix) != fresh, "the case changed nothing the snapshot sees"
            if raises:
                raise Raised
    except Raised:
        pass
    with pool.connection() as conn:
        assert snapshot(conn, matrix) == fresh, f"{name} reached the next lease"
        if case.after is not None:
            case.after(conn)
        assert (backend(conn) == pid) == (case.outcome != "drop"), "replaced instead of reset, or the reverse"
    resets = pool.stats()["connections_reset"]
    expected = {"reset": 1, "clean": 1 if raises else 0, "drop": 0}[case.outcome]
    assert resets == expected, f"{resets} resets, expected {expected}"
