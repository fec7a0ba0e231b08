"""The PostgreSQL adapter on psycopg 3 at the pool level, against the real server: the lease
guard at psycopg's chokepoint, sessions reset only when changed, transactions settled on return,
cooperative waits under gevent. What both drivers guarantee the same way (fork safety, bounded
connect and ping, the probe, several hosts, passwords, ...) is tests/test_pg_drivers.py, once per
driver; psycopg2's own ways are tests/test_psycopg2.py.

A login per test (``pg_user``) so its sessions are counted exactly.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
import servers
from support import (
    PG_DB,
    PG_HOST,
    PG_PORT,
    ROOT,
    bound_psycopg_waits,
    database_pools,
    figure,
    wait_until,
)

from gunicorn_pool import DatabasePool, LeaseError
from gunicorn_pool.connectors.postgresql import PooledPGConnection

pytestmark = pytest.mark.postgresql

# The fixture of tests/servers.py (assigned, not imported: no F811 on the argument).
pgbouncer = servers.pgbouncer

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(autouse=True)
def _bounded_queries(monkeypatch: Any) -> None:
    """Every query a test here makes, through a pool or an admin connection, fails after
    support.QUERY_BOUND (20 s) if its answer never comes: a stalled proxy or a hung server fails
    the test in seconds with a message, not at pytest-timeout's 300 s."""
    bound_psycopg_waits(monkeypatch)


def backend(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def one(conn: Any, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


@pytest.fixture
def make_db(pg_user):
    def config(**options: Any) -> dict[str, Any]:
        return dict(pg_user.config(**options), adapter="pgsql")  # the spelling other frameworks use

    yield from database_pools(config, name="pg")


# -- the lease guard ------------------------------------------------------------------------------

STALE = "SELECT 'gp-stale-use'"


def _copy(conn: Any) -> None:
    with conn.cursor().copy("COPY (SELECT 1) TO STDOUT") as copy:
        list(copy)


def _pipeline(conn: Any) -> None:
    with conn.pipeline():
        conn.execute(STALE)


def _transaction(conn: Any) -> None:
    with conn.transaction():
        conn.execute(STALE)


def _autocommit(conn: Any) -> None:
    conn.autocommit = False


#: Every way a kept reference can reach the server.
OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "cursor.execute": lambda c: c.cursor().execute(STALE),
    "connection.execute": lambda c: c.execute(STALE),
    "executemany": lambda c: c.cursor().executemany(STALE + " || %s", [("a",), ("b",)]),
    "stream": lambda c: list(c.cursor().stream(STALE)),
    "server-side cursor": lambda c: c.cursor("gp_named").execute(STALE),
    "COPY": _copy,
    "pipeline": _pipeline,
    "transaction()": _transaction,
    "commit": lambda c: c.commit(),
    "rollback": lambda c: c.rollback(),
    "autocommit setter": _autocommit,
    "notifies": lambda c: list(c.notifies(timeout=0)),
    "cancel": lambda c: c.cancel(),
    "close": lambda c: c.close(),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_of_a_returned_connection_raises_before_anything_is_sent(pg_user, make_db, operation):
    pool = make_db().pool()
    with pool.connection() as stale:
        pid = backend(stale)
    with pytest.raises(LeaseError, match="used after it was returned to the pool"):
        OPERATIONS[operation](stale)
    assert "gp-stale-use" not in pg_user.last_query(pid)  # nothing reached the server
    with pool.connection() as conn:
        assert backend(conn) == pid and one(conn, "SELECT 41 + 1") == 42  # the session is intact
    assert pool.stats()["connections_reset"] == 0


@pytest.mark.parametrize("operation", ["cursor.execute", "pipeline", "server-side cursor", "COPY", "close"])
def test_a_kept_reference_cannot_reach_the_next_borrower(pg_user, make_db, operation):
    pool = make_db().pool()
    with pool.connection() as stale:
        first = backend(stale)
    arrived, tried = threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def next_borrower() -> None:
        with pool.connection() as conn:
            got["id"] = backend(conn)
            arrived.set()
            tried.wait(10)  # the stale user tries while this lease is on
            got["again"] = backend(conn)
            got["pipeline"] = conn._pipeline

    thread = threading.Thread(target=next_borrower)
    thread.start()
    assert arrived.wait(10)
    try:
        with pytest.raises(LeaseError, match="used by a thread or greenlet other than the one that took it"):
            OPERATIONS[operation](stale)
    finally:
        tried.set()
        thread.join(10)
    assert got["id"] == got["again"] == first and got["pipeline"] is None
    assert "gp-stale-use" not in pg_user.last_query(first)


# -- sessions reset only when changed ---------------------------------------------------------------

LOCK_KEY = 770_000 + secrets.randbelow(100_000)


def _locks_held(pg_user: Any) -> int:
    with pg_user.admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (LOCK_KEY,))
        return int(cur.fetchone()[0])


def _raises(call: Callable[[], Any], error: type[BaseException]) -> bool:
    try:
        call()
    except error:
        return True
    return False


def _no_temp_table(conn: Any) -> bool:
    return one(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()") == 0


def _prepared(conn: Any) -> bool:
    return one(conn, "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql") == 0 and one(
        conn, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'gp_stmt'"
    ) == 0


def _cursor_with_hold(conn: Any) -> None:
    cur = conn.cursor("gp_held", withhold=True)
    cur.execute("SELECT generate_series(1, 10)")
    cur.fetchone()


# name: (what the first user leaves behind, what the next user must see)
LEFTOVERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], bool]]] = {
    "SET": (lambda c: c.execute("SET work_mem = '77MB'"), lambda c, u: one(c, "SHOW work_mem") == "4MB"),
    "search_path": (lambda c: c.execute("SET search_path = pg_catalog"),
                    lambda c, u: one(c, "SHOW search_path") == '"$user", public'),
    "set_config() in a SELECT": (lambda c: c.execute("SELECT set_config('application_name', 'gp-x', false)"),
                                 lambda c, u: one(c, "SHOW application_name") == ""),
    "custom variable": (lambda c: c.execute("SET gp.tenant = '42'"),
                        lambda c, u: one(c, "SELECT current_setting('gp.tenant', true)") in (None, "")),
    "time zone": (lambda c: c.execute("SET TIME ZONE 'Asia/Kolkata'"),
                  lambda c, u: one(c, "SHOW TimeZone") != "Asia/Kolkata"),
    "isolation level (SQL)": (lambda c: c.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL"
                                                  " SERIALIZABLE"),
                              lambda c, u: one(c, "SHOW default_transaction_isolation") == "read committed"),
    "temporary table": (lambda c: c.execute("CREATE TEMP TABLE gp_tmp (a int)"),
                        lambda c, u: _no_temp_table(c)),
    "CREATE TEMP TABLE AS": (lambda c: c.execute("CREATE TEMPORARY TABLE gp_tmp AS SELECT 1 AS a"),
                             lambda c, u: _no_temp_table(c)),
    "SELECT INTO TEMP": (lambda c: c.execute("SELECT 1 AS a INTO TEMP gp_tmp"),
                         lambda c, u: _no_temp_table(c)),
    "LISTEN": (lambda c: c.execute("LISTEN gp_channel"),
               lambda c, u: one(c, "SELECT count(*) FROM pg_listening_channels()") == 0),
    "PREPARE": (lambda c: c.execute("PREPARE gp_stmt AS SELECT 1"), lambda c, u: _prepared(c)),
    "advisory lock": (lambda c: c.execute(f"SELECT pg_advisory_lock({LOCK_KEY})"),
                      lambda c, u: _locks_held(u) == 0),
    "advisory lock, upper case": (lambda c: c.execute(f"SELECT PG_TRY_ADVISORY_LOCK({LOCK_KEY})"),
                                  lambda c, u: _locks_held(u) == 0),
    "cursor WITH HOLD (SQL)": (lambda c: c.execute("DECLARE gp_held CURSOR WITH HOLD FOR SELECT 1"),
                               lambda c, u: one(c, "SELECT count(*) FROM pg_cursors") == 0),
    "server-side cursor withhold=True": (_cursor_with_hold,
                                         lambda c, u: one(c, "SELECT count(*) FROM pg_cursors") == 0),
    "DO block": (lambda c: c.execute("DO $$ BEGIN PERFORM set_config('gp.do', 'x', false); END $$"),
                 lambda c, u: one(c, "SELECT current_setting('gp.do', true)") in (None, "")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LEFTOVERS))
def test_next_user_gets_the_session_as_the_pool_configured_it(pg_user, make_db, case):
    leave, clean = LEFTOVERS[case]
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        leave(conn)
    with pool.connection() as conn:
        assert backend(conn) == session, "replaced instead of reset"
        assert clean(conn, pg_user), f"{case} reached the next user"
    assert pool.stats()["connections_reset"] == 1


# Settings of the psycopg connection object (no round trip to restore them).
CLIENT_SIDE: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {
    "autocommit switched off": (_autocommit, lambda c: c.autocommit is True),
    "isolation_level": (lambda c: setattr(c, "isolation_level", psycopg.IsolationLevel.SERIALIZABLE),
                        lambda c: c.isolation_level is None),
    "read_only": (lambda c: setattr(c, "read_only", True), lambda c: c.read_only is None),
    "row_factory": (lambda c: setattr(c, "row_factory", psycopg.rows.dict_row),
                    lambda c: c.execute("SELECT 1 AS a").fetchone() == (1,)),
    "prepare_threshold": (lambda c: setattr(c, "prepare_threshold", 0), lambda c: c.prepare_threshold == 5),
    "notice handler": (lambda c: c.add_notice_handler(lambda diag: None), lambda c: not c._notice_handlers),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLIENT_SIDE))
def test_settings_of_the_connection_object_are_restored_without_a_round_trip(pg_user, make_db, case):
    leave, clean = CLIENT_SIDE[case]
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        conn.execute("SELECT 'gp-last-user-statement'")
        leave(conn)
    assert "gp-last-user-statement" in pg_user.last_query(session)  # nothing sent at return
    with pool.connection() as conn:
        assert backend(conn) == session
        assert clean(conn), f"{case} reached the next user"
    assert pool.stats()["connections_reset"] == 1


def test_a_session_nobody_changed_is_never_reset_and_costs_no_round_trip(pg_user, make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        conn.execute("CREATE TABLE gp_plain (id serial PRIMARY KEY, v int, note text)")
    for i in range(8):  # past prepare_threshold: prepared statements are psycopg's, not the user's
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchall()
            conn.execute("INSERT INTO gp_plain (v, note) VALUES (%s, %s)", (i, "temperature of the template"))
            conn.execute("UPDATE gp_plain SET v = v + 1 WHERE v = %s", (i,))
            with conn.transaction():
                conn.execute("DELETE FROM gp_plain WHERE v = %s", (-1,))
            with conn.cursor().copy("COPY gp_plain (v) FROM STDIN") as copy:
                copy.write_row((100 + i,))
            conn.execute("SHOW work_mem")
            conn.execute("SELECT 'temperature of the template, attempts on hold-outs' AS note")
            conn.execute("SELECT 'gp-last-%s'" % i)  # noqa: UP031 - literal, no parameter
        assert f"gp-last-{i}" in pg_user.last_query(session)  # no statement of the pool's at return
    with pool.connection() as conn:
        conn.execute("DROP TABLE gp_plain")
    assert pool.stats()["connections_reset"] == 0


def test_psycopgs_prepared_statements_still_work_after_a_reset(make_db):
    """DISCARD ALL drops psycopg's own prepared statements: its cache must forget them too, or
    the next execution of a prepared query fails with 'prepared statement does not exist'."""
    pool = make_db().pool()
    for _ in range(3):
        with pool.connection() as conn:
            for _ in range(7):
                assert one(conn, "SELECT %s::int + 1", (1,)) == 2  # prepared after 5 runs
            conn.execute("SET work_mem = '5MB'")
    assert pool.stats()["connections_reset"] == 3


def test_reset_session_off_leaves_the_session_as_the_user_left_it(make_db):
    pool = make_db(reset_session=False).pool()
    with pool.connection() as conn:
        conn.execute("SET work_mem = '77MB'")
    with pool.connection() as conn:
        assert one(conn, "SHOW work_mem") == "77MB"
    assert pool.stats()["connections_reset"] == 0


# -- transactions --------------------------------------------------------------------------------------


def test_a_failed_with_block_resets_a_session_changed_where_the_pool_cannot_see(pg_user, make_db):
    """A function changes a setting from inside a SELECT (no tag, no telltale text); the
    user's own clean-up would undo it, but the block raised first. The next user must
    not inherit it."""
    fn = f"gp_sneaky_{secrets.token_hex(4)}"
    with pg_user.admin.cursor() as cur:
        cur.execute(
            f"CREATE FUNCTION {fn}() RETURNS int LANGUAGE sql AS "
            "$$ SELECT length(set_config('application_name', 'leaked', false)) $$"
        )
        cur.execute(f'GRANT EXECUTE ON FUNCTION {fn}() TO "{pg_user.name}"')
    try:
        pool = make_db().pool()
        with pytest.raises(RuntimeError):
            with pool.connection() as conn:
                one(conn, f"SELECT {fn}()")
                assert one(conn, "SHOW application_name") == "leaked"
                raise RuntimeError("view failed before its clean-up")
        with pool.connection() as conn:
            assert one(conn, "SHOW application_name") != "leaked"
        assert pool.stats()["connections_reset"] == 1 and pool.stats()["pool_size"] == 1
    finally:
        with pg_user.admin.cursor() as cur:
            cur.execute(f"DROP FUNCTION IF EXISTS {fn}()")


@pytest.fixture
def schema(pg_user):
    """A schema of this test's own (its functions never reach another test's pools), on the login's
    search_path; dropped after."""
    name = f"gp_s_{secrets.token_hex(4)}"
    with pg_user.admin.cursor() as cur:
        cur.execute("SET statement_timeout = 10000")
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(f'GRANT USAGE ON SCHEMA {name} TO "{pg_user.name}"')
    yield name
    with pg_user.admin.cursor() as cur:
        cur.execute(f"DROP SCHEMA {name} CASCADE")


def test_a_function_that_sets_the_tenant_is_reset_on_return(pg_user, make_db, schema):
    """The row-level-security tenant pattern: ``SELECT set_tenant('acme')`` runs set_config() inside
    a PL/pgSQL function, so neither the tag (SELECT) nor the text shows it. Any function that is
    not a known-harmless builtin resets the session at return."""
    with pg_user.admin.cursor() as cur:
        cur.execute(f"CREATE FUNCTION {schema}.set_tenant(t text) RETURNS text LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$")  # fmt: skip
    pool = make_db(options=f"-c search_path={schema},public -c statement_timeout=5000").pool()
    returns = []
    for tenant in ("acme", "globex", "initech"):
        with pool.connection() as conn:
            session = backend(conn)
            assert one(conn, "SELECT nullif(current_setting('app.tenant', true), '')") is None
            one(conn, "SELECT set_tenant(%s)", (tenant,))
            assert one(conn, "SHOW app.tenant") == tenant
            start = time.perf_counter()
        returns.append(time.perf_counter() - start)
    with pool.connection() as conn:
        assert backend(conn) == session  # reset, not replaced
        assert one(conn, "SELECT nullif(current_setting('app.tenant', true), '')") is None
    assert pool.stats()["connections_reset"] == 3
    figure("pg return with DISCARD ALL (max of 3)", max(returns) * 1000, "ms")


def test_the_builtins_are_read_once_per_pool_and_a_function_sharing_a_builtins_name_is_not_one(
    pg_user, make_db, schema, monkeypatch
):
    """One query at the pool's first connect reads the server's builtin names; a function of another
    schema with a builtin's name (an overload: ``md5(int)``) may be what a call reaches, so that name
    counts as unknown."""
    from gunicorn_pool.connectors.postgresql import PostgreSQLConnector

    reads = []
    read = PostgreSQLConnector._read_names
    monkeypatch.setattr(PostgreSQLConnector, "_read_names", lambda self, conn: reads.append(1) or read(self, conn))
    with pg_user.admin.cursor() as cur:
        cur.execute(f"CREATE FUNCTION {schema}.md5(n int) RETURNS text LANGUAGE sql AS $$ SELECT 'mine' $$")
    pool = make_db(min_size=2, max_size=2).pool()
    with pool.connection() as conn:
        assert one(conn, "SELECT lower('A') || md5('x')") is not None  # md5(text): pg_catalog's, but...
        assert not conn._gp_verdicts.harmless & {"md5", "set_config", "pg_advisory_lock"}
    assert reads == [1] and pool.stats()["pool_size"] == 2  # two connects, one read
    assert pool.stats()["connections_reset"] == 1  # ... the name is shared: counted as unknown
    with pool.connection() as conn:
        one(conn, "SELECT lower('A'), now(), coalesce(NULL, 1), count(*) FROM pg_class")
    assert pool.stats()["connections_reset"] == 1  # builtins alone: no reset


def test_only_code_counts_temporary_words_in_literals_and_comments_cost_nothing(pg_user, make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        one(conn, "SELECT 'temporary' AS status, 'pg_temp' AS note -- a temp note")
        conn.execute("SELECT 'gp-last-temp-statement'")
    assert "gp-last-temp-statement" in pg_user.last_query(session)  # nothing sent at return
    assert pool.stats()["connections_reset"] == 0


@pytest.mark.parametrize("left", ["stream", "COPY"])
def test_a_connection_returned_mid_protocol_is_dropped(pg_user, make_db, left):
    pool = make_db().pool()
    conn = pool.getconn()
    session = backend(conn)
    if left == "stream":
        rows = conn.cursor().stream("SELECT generate_series(1, 100000)")
        next(rows)
    else:
        copy = conn.cursor().copy("COPY (SELECT generate_series(1, 100000)) TO STDOUT")
        copy.__enter__()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
    pool.putconn(conn)
    with pool.connection() as conn:
        assert backend(conn) != session and one(conn, "SELECT 1") == 1
    wait_until(lambda: session not in pg_user.backend_pids(), 10, what="the dropped session ended")


# -- fork ------------------------------------------------------------------------------------------------


# -- bounded connect and ping -------------------------------------------------------------------------


def test_a_query_of_a_test_whose_answer_never_comes_fails_in_seconds(pg_user, pg_proxy, monkeypatch):
    """The bound above, shown: the test above once hung for pytest-timeout's 300 s on a loaded
    machine (its own query had no time limit). A query on a stalled connection, with nothing of the
    pool's to notice the stall (no ping, no probe), now fails after the bound, saying so."""
    bound_psycopg_waits(monkeypatch, seconds=1.0)
    db = DatabasePool({"default": pg_user.config(port=pg_proxy.port, min_size=1, max_size=1, check_interval=3600,
                                                 probe_after="none")}, name="hung")  # fmt: skip
    pool = db.pool()
    with pool.connection() as conn:
        backend(conn)
        assert pg_proxy.stall() == 1
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match=r"no answer from the server within 1s: a test's query"):
            backend(conn)
        assert time.monotonic() - start < 1.0 + 2.0
    db.close_pool()


# -- passwords (a server that checks them) ------------------------------------------------------------


# -- PgBouncer in transaction pooling mode -------------------------------------------------------------


def test_pgbouncer_true_never_prepares_and_never_resets(pgbouncer):
    bouncer = pgbouncer
    db = DatabasePool({"default": bouncer.config(pgbouncer=True, min_size=2, max_size=2)}, name="bouncer")
    db.init_pool()
    pool = db.pool()
    for _ in range(12):  # psycopg would prepare after 5 runs; another server connection would not know it
        with pool.connection() as conn:
            assert conn.prepare_threshold is None
            assert one(conn, "SELECT %s::int * 2", (21,)) == 42
            conn.execute("SET application_name = 'gp-bouncer'")
    assert pool.stats()["connections_reset"] == 0  # no DISCARD ALL in transaction pooling
    db.close_pool()


# -- gevent --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("import_order", ["psycopg imported before patching", "after patching"])
def test_gevent_greenlets_wait_cooperatively_and_share_max_size_sessions(pg_user, import_order):
    """100 greenlets, max_size=4, each SELECT pg_sleep(0.05): a ticker greenlet fires during nearly
    every query, and the server never sees more than 4 sessions. psycopg imported before gevent
    patched select picks its C wait, which blocked the hub: queries then ran one at a time."""
    config = pg_user.config(min_size=4, max_size=4, timeout=30)
    args = [sys.executable, str(SCRIPTS / "gevent_pg.py"), "burst", "100", "0.05"]
    if import_order == "after patching":
        args.append("--import-after-patch")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], pg_user.count())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        proc = subprocess.run(args, input=json.dumps(config), capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    finally:
        done.set()
        sampler.join(5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] == 100 and not result["errors"], result
    assert result["covered"] >= 95, result  # the hub ran while nearly every query waited
    assert result["max_gap"] < 0.5 and result["connect_gap"] < 0.5, result
    assert result["elapsed"] < 100 * 0.05 * 0.75, result  # 4 at a time, not one after another
    assert result["stats"]["connections_num"] == 4 and peak[0] <= 4, (result, peak)


def test_gevent_a_foreign_greenlet_waits_without_blocking_the_hub_then_gets_lease_error(pg_user):
    """psycopg imported before patching made each connection's lock a native one: a greenlet
    using another's connection mid-statement blocked the whole worker on it, for good."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gevent_pg.py"), "foreign"], text=True, timeout=30,
                          input=json.dumps(pg_user.config(min_size=1, max_size=1)), capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["intruder"].startswith("LeaseError: "), result  # by another greenlet, or after its return
    assert result["holder"] == [42], result  # the holder's statement and session were untouched
    assert result["max_gap"] < 0.2, result


def test_a_foreign_pipeline_never_switches_the_holders_statements_to_pipeline_mode(make_db):
    """psycopg's pipeline() sets the connection's pipeline before its first wait(), outside the
    lock: a stale pipeline() made the holder's statements pipeline ones for a moment."""
    pool = make_db().pool()
    with pool.connection() as stale:
        pass
    seen, stop, started = [], threading.Event(), threading.Event()

    def holder() -> None:
        with pool.connection() as conn:
            started.set()
            while not stop.is_set():
                if conn._pipeline is not None:
                    seen.append(1)

    thread = threading.Thread(target=holder)
    thread.start()
    assert started.wait(10)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(500):
            with pytest.raises(LeaseError):
                with stale.pipeline():
                    pass
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join(10)
    assert not seen


def test_connection_class_is_the_drivers_own(make_db):
    with make_db().connection() as conn:
        assert isinstance(conn, psycopg.Connection) and isinstance(conn, PooledPGConnection)
        assert conn.info.dbname == PG_DB and conn.info.host in (PG_HOST, "localhost") and conn.info.port == PG_PORT
