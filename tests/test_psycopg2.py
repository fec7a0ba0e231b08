"""The psycopg2 driver (``driver: psycopg2``) at the pool level, against the real server: every
guarantee the psycopg 3 connector gives (tests/test_postgresql.py), on psycopg2's own API. What
both drivers do the same way (fork safety, fractional connect_timeout, bounded ping, the probe,
several hosts, passwords, ...) runs once per driver in tests/test_pg_drivers.py.

Here: the lease guard on every method that reaches the server (psycopg2 has
no Python chokepoint) and on the cursors of any factory; sessions reset only
when changed, by the same rules (the template of a statement scanned once,
before psycopg2 merges the values in; a statement followed by another counted
by its first word); the connection object's settings; transactions and
request_connection(); two-phase transactions; libpq's whole-second connect
bound; a reset bounded by the watchdog; PgBouncer; gevent through psycopg2's
wait callback.

A login per test (``pg2_user``) so its sessions are counted exactly. Every
statement of the pools here is bounded on the server (``statement_timeout``
in their startup options); the admin connection is psycopg 3's, bounded too.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any, Callable

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import psycopg2.extras
import pytest
import servers
from support import (
    PG_DB,
    PG_HOST,
    PG_PORT,
    ROOT,
    database_pools,
    figure,
    statement_bound,
    wait_until,
)
from support import (
    pg_backend as backend,
)
from support import (
    pg_one as one,
)
from support import (
    pg_run as run,
)

from gunicorn_pool import ConnectError, DatabasePool, LeaseError, request_connection, request_scope
from gunicorn_pool.connectors import psycopg2 as connector
from gunicorn_pool.connectors.psycopg2 import PooledPG2Connection

pytestmark = pytest.mark.postgresql

pgbouncer = servers.pgbouncer

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def make_db(pg2_user):
    def config(**options: Any) -> dict[str, Any]:
        options.setdefault("options", statement_bound())
        return pg2_user.config(**options)

    yield from database_pools(config, name="pg2")


# -- the lease guard ------------------------------------------------------------------------------

STALE = "SELECT 'gp-stale-use'"


def _named_fetch(conn: Any) -> Callable[[], Any]:
    """A named cursor opened during the lease (in a transaction: autocommit off for it)."""
    conn.autocommit = False
    cur = conn.cursor("gp_named")
    cur.execute("SELECT generate_series(1, 10)")
    return cur.fetchone


def _with_block(conn: Any) -> None:
    with conn:
        pass


#: Every way a kept reference can reach the server: a callable taking the connection, or (for a
#: cursor made during the lease) a function called during the lease that returns the later use.
OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "cursor()": lambda c: c.cursor(),
    "cursor.execute": lambda c: c.cursor().execute(STALE),
    "executemany": lambda c: c.cursor().executemany(STALE + " || %s", [("a",), ("b",)]),
    "callproc": lambda c: c.cursor().callproc("lower", ("A",)),
    "copy_expert": lambda c: c.cursor().copy_expert("COPY (SELECT 1) TO STDOUT", StringIO()),
    "copy_to": lambda c: c.cursor().copy_to(StringIO(), "pg_class"),
    "RealDictCursor execute": lambda c: c.cursor(cursor_factory=psycopg2.extras.RealDictCursor).execute(STALE),
    "named cursor": lambda c: c.cursor("gp_named").execute(STALE),
    "commit": lambda c: c.commit(),
    "rollback": lambda c: c.rollback(),
    "with conn": _with_block,
    "autocommit setter": lambda c: setattr(c, "autocommit", False),
    "isolation_level setter": lambda c: setattr(c, "isolation_level", ext.ISOLATION_LEVEL_SERIALIZABLE),
    "set_session": lambda c: c.set_session(readonly=True),
    "set_client_encoding": lambda c: c.set_client_encoding("LATIN1"),
    "reset": lambda c: c.reset(),
    "poll": lambda c: c.poll(),
    "lobject": lambda c: c.lobject(),
    "tpc_begin": lambda c: c.tpc_begin(c.xid(1, "gp", "x")),
    "cancel": lambda c: c.cancel(),
    "close": lambda c: c.close(),
}


@pytest.mark.parametrize("operation", [*OPERATIONS, "a cursor made in the lease", "a named cursor's fetch"])
def test_every_operation_of_a_returned_connection_raises_before_anything_is_sent(pg2_user, make_db, operation):
    pool = make_db().pool()
    with pool.connection() as stale:
        pid = backend(stale)
        later: Callable[[], Any] = lambda: OPERATIONS[operation](stale)  # noqa: E731
        if operation == "a cursor made in the lease":
            later = functools.partial(stale.cursor().execute, STALE)
        elif operation == "a named cursor's fetch":
            later = _named_fetch(stale)
    with pytest.raises(LeaseError, match="used after it was returned to the pool"):
        later()
    assert "gp-stale-use" not in pg2_user.last_query(pid)  # nothing reached the server
    with pool.connection() as conn:
        assert backend(conn) == pid and one(conn, "SELECT 41 + 1") == 42  # the session is intact
    assert pool.stats()["connections_reset"] == (1 if operation == "a named cursor's fetch" else 0)


@pytest.mark.parametrize("operation", ["cursor.execute", "named cursor", "copy_expert", "commit", "close"])
def test_a_kept_reference_cannot_reach_the_next_borrower(pg2_user, make_db, operation):
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

    thread = threading.Thread(target=next_borrower)
    thread.start()
    assert arrived.wait(10)
    try:
        with pytest.raises(LeaseError, match="used by a thread or greenlet other than the one that took it"):
            OPERATIONS[operation](stale)
    finally:
        tried.set()
        thread.join(10)
    assert got["id"] == got["again"] == first
    assert "gp-stale-use" not in pg2_user.last_query(first)


def test_a_reclaimed_lease_still_running_in_another_thread_is_cut_not_waited_for(pg2_user, make_db):
    """psycopg2's close() waits for a call running in another thread: the pool shuts the socket
    down first, so dropping a lease whose thread is inside pg_sleep(10) takes no 10 s."""
    pool = make_db(max_size=2, owner_check=True).pool()
    started = threading.Event()
    errors: list[BaseException] = []
    conn = pool.getconn()

    def sleeper() -> None:
        try:
            started.set()
            run(conn, "SELECT pg_sleep(10)")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    conn._gp_holder = None  # handed to the sleeper thread (owner_check would refuse it otherwise)
    thread = threading.Thread(target=sleeper)
    thread.start()
    started.wait(5)
    wait_until(lambda: "pg_sleep" in pg2_user.last_query(conn.get_backend_pid()), 5, what="pg_sleep running")
    conn._gp_holder = thread.ident
    start = time.monotonic()
    pool._connector.discard(conn)
    took = time.monotonic() - start
    thread.join(10)
    assert took < 2 and errors and isinstance(errors[0], psycopg2.DatabaseError), (took, errors)


# -- sessions reset only when changed ---------------------------------------------------------------

LOCK_KEY = 660_000 + secrets.randbelow(100_000)


def _locks_held(pg_user: Any) -> int:
    with pg_user.admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (LOCK_KEY,))
        return int(cur.fetchone()[0])


def _no_temp_table(conn: Any) -> bool:
    return one(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()") == 0


def _cursor_with_hold(conn: Any) -> None:
    cur = conn.cursor("gp_held", withhold=True)
    cur.execute("SELECT generate_series(1, 10)")
    cur.fetchone()


# name: (what the first user leaves behind, what the next user must see)
LEFTOVERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], bool]]] = {
    "SET": (lambda c: run(c, "SET work_mem = '77MB'"), lambda c, u: one(c, "SHOW work_mem") == "4MB"),
    "SET, then another statement": (lambda c: run(c, "SET work_mem = '77MB'; SELECT 1"),
                                    lambda c, u: one(c, "SHOW work_mem") == "4MB"),
    "set_config() with a parameter": (lambda c: run(c, "SELECT set_config('application_name', %s, false)", ("x",)),
                                      lambda c, u: one(c, "SHOW application_name") == ""),
    "time zone": (lambda c: run(c, "SET TIME ZONE 'Asia/Kolkata'"),
                  lambda c, u: one(c, "SHOW TimeZone") != "Asia/Kolkata"),
    "temporary table": (lambda c: run(c, "CREATE TEMP TABLE gp_tmp (a int)"), lambda c, u: _no_temp_table(c)),
    "SELECT INTO TEMP": (lambda c: run(c, "SELECT 1 AS a INTO TEMP gp_tmp"), lambda c, u: _no_temp_table(c)),
    "LISTEN": (lambda c: run(c, "LISTEN gp_channel"),
               lambda c, u: one(c, "SELECT count(*) FROM pg_listening_channels()") == 0),
    "PREPARE": (lambda c: run(c, "PREPARE gp_stmt AS SELECT 1"),
                lambda c, u: one(c, "SELECT count(*) FROM pg_prepared_statements") == 0),
    "advisory lock": (lambda c: run(c, f"SELECT pg_advisory_lock({LOCK_KEY})"), lambda c, u: _locks_held(u) == 0),
    "cursor WITH HOLD (SQL)": (lambda c: run(c, "DECLARE gp_held CURSOR WITH HOLD FOR SELECT 1"),
                               lambda c, u: one(c, "SELECT count(*) FROM pg_cursors") == 0),
    "named cursor withhold=True": (_cursor_with_hold, lambda c, u: one(c, "SELECT count(*) FROM pg_cursors") == 0),
    "callproc of set_config": (lambda c: c.cursor().callproc("set_config", ("application_name", "x", False)),
                               lambda c, u: one(c, "SHOW application_name") == ""),
    "COPY with a function": (lambda c: c.cursor().copy_expert(
                                 "COPY (SELECT set_config('application_name', 'x', false)) TO STDOUT", StringIO()),
                             lambda c, u: one(c, "SHOW application_name") == ""),
    "RealDictCursor SET": (lambda c: c.cursor(cursor_factory=psycopg2.extras.RealDictCursor).execute(
                               "SET work_mem = '77MB'"), lambda c, u: one(c, "SHOW work_mem") == "4MB"),
    "reset()": (lambda c: c.reset(), lambda c, u: one(c, "SHOW lock_timeout") == "1234ms"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LEFTOVERS))
def test_next_user_gets_the_session_as_the_pool_configured_it(pg2_user, make_db, case):
    leave, clean = LEFTOVERS[case]
    pool = make_db(session=["SET lock_timeout = 1234"]).pool()
    with pool.connection() as conn:
        session = backend(conn)
        leave(conn)
    with pool.connection() as conn:
        assert backend(conn) == session, "replaced instead of reset"
        assert clean(conn, pg2_user), f"{case} reached the next user"
    assert pool.stats()["connections_reset"] == 1


# The psycopg2 connection object's settings (restored at return: the next user gets the pool's).
CLIENT_SIDE: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {
    "autocommit switched off": (lambda c: setattr(c, "autocommit", False), lambda c: c.autocommit is True),
    "isolation_level in autocommit": (lambda c: setattr(c, "isolation_level", ext.ISOLATION_LEVEL_SERIALIZABLE),
                                      lambda c: c.isolation_level is None
                                      and one(c, "SHOW default_transaction_isolation") == "read committed"),
    "set_session(readonly, deferrable)": (lambda c: c.set_session(readonly=True, deferrable=True),
                                          lambda c: (c.readonly, c.deferrable) == (None, None)
                                          and one(c, "SHOW default_transaction_read_only") == "off"),
    "set_client_encoding": (lambda c: c.set_client_encoding("LATIN1"),
                            lambda c: c.encoding == "UTF8" and one(c, "SHOW client_encoding") == "UTF8"),
    "cursor_factory": (lambda c: setattr(c, "cursor_factory", psycopg2.extras.RealDictCursor),
                       lambda c: one(c, "SELECT 1 AS a") == 1),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLIENT_SIDE))
def test_settings_of_the_connection_object_are_restored(pg2_user, make_db, case):
    leave, clean = CLIENT_SIDE[case]
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        leave(conn)
    with pool.connection() as conn:
        assert backend(conn) == session
        assert clean(conn), f"{case} reached the next user"
    assert pool.stats()["connections_reset"] == 1


def test_the_notices_of_a_lease_never_reach_the_next_one_and_cost_no_reset(make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        run(conn, "DROP TABLE IF EXISTS gp_never_there")  # NOTICE: ... does not exist, skipping
        assert conn.notices
    with pool.connection() as conn:
        assert not conn.notices
    with pytest.raises(RuntimeError), pool.connection() as conn:  # a lease that raised too
        run(conn, "DROP TABLE IF EXISTS gp_never_there")
        raise RuntimeError("view failed")
    with pool.connection() as conn:
        assert not conn.notices
    assert pool.stats()["connections_reset"] == 1  # the failed lease's


def test_a_session_nobody_changed_is_never_reset_and_costs_no_round_trip(pg2_user, make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        run(conn, "CREATE TABLE gp_plain (id serial PRIMARY KEY, v int, note text)")
    for i in range(4):
        with pool.connection() as conn:
            run(conn, "SELECT 1")
            run(conn, "INSERT INTO gp_plain (v, note) VALUES (%s, %s)", (i, "temperature of the template"))
            run(conn, "UPDATE gp_plain SET v = v + 1 WHERE v = %s", (i,))
            run(conn, "BEGIN; DELETE FROM gp_plain WHERE v = -1; COMMIT")
            conn.cursor().copy_expert("COPY gp_plain (v) FROM STDIN", StringIO(f"{100 + i}\n"))
            psycopg2.extras.execute_values(conn.cursor(), "INSERT INTO gp_plain (v) VALUES %s", [(1,), (2,)])
            psycopg2.extras.execute_batch(conn.cursor(), "UPDATE gp_plain SET v = %s WHERE v = %s", [(3, 4), (5, 6)])
            one(conn, "SELECT lower(note), count(*) FROM gp_plain WHERE v > %s GROUP BY note", (0,))
            run(conn, "SELECT 'gp-last-%s'" % i)  # noqa: UP031 - literal, no parameter
        assert f"gp-last-{i}" in pg2_user.last_query(session)  # no statement of the pool's at return
    with pool.connection() as conn:
        run(conn, "DROP TABLE gp_plain")
    assert pool.stats()["connections_reset"] == 0


def test_a_template_is_scanned_once_before_psycopg2_merges_its_values(make_db, monkeypatch):
    """psycopg2 merges the values into the text on the client: scanning the text sent would scan
    every execution anew (and keep a verdict per value). The template is scanned once per pool,
    and a value that looks like a call is a literal, never a call."""
    scans: list[str] = []
    real = connector.scan
    monkeypatch.setattr(connector, "scan", lambda text, *a: scans.append(text) or real(text, *a))
    pool = make_db().pool()
    with pool.connection() as conn:
        for i in range(50):
            assert one(conn, "SELECT %s::text, %s::int", (f"set_tenant('x{i}')", i)) == f"set_tenant('x{i}')"
    assert scans == ["SELECT %s::text, %s::int"]
    assert pool.stats()["connections_reset"] == 0


def test_reset_session_off_leaves_the_session_as_the_user_left_it(make_db):
    pool = make_db(reset_session=False).pool()
    with pool.connection() as conn:
        run(conn, "SET work_mem = '77MB'")
        conn.autocommit = False
    with pool.connection() as conn:
        assert one(conn, "SHOW work_mem") == "77MB" and conn.autocommit is True
    assert pool.stats()["connections_reset"] == 1  # autocommit put back, nothing sent


@pytest.fixture
def schema(pg2_user):
    """A schema of the login's own (first on its search_path) with a function that sets the tenant."""
    name = f"gp_fn_{secrets.token_hex(4)}"
    with pg2_user.admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA {name} AUTHORIZATION "{pg2_user.name}"')
        cur.execute(f"CREATE FUNCTION {name}.set_tenant(t text) RETURNS text LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$")  # fmt: skip
        cur.execute(f'GRANT EXECUTE ON FUNCTION {name}.set_tenant(text) TO "{pg2_user.name}"')
    yield name
    with pg2_user.admin.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_a_function_that_sets_the_tenant_is_reset_on_return(make_db, schema):
    pool = make_db(options=f"{statement_bound()} -c search_path={schema},public").pool()
    for tenant in ("acme", "globex", "initech"):
        with pool.connection() as conn:
            session = backend(conn)
            assert one(conn, "SELECT nullif(current_setting('app.tenant', true), '')") is None
            one(conn, "SELECT set_tenant(%s)", (tenant,))
            conn.cursor().callproc("set_tenant", (tenant,))
            assert one(conn, "SHOW app.tenant") == tenant
    with pool.connection() as conn:
        assert backend(conn) == session
        assert one(conn, "SELECT nullif(current_setting('app.tenant', true), '')") is None
    assert pool.stats()["connections_reset"] == 3


def test_setseed_closes_the_connection_at_return(make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        seeded = backend(conn)
        run(conn, "SELECT setseed(0.5)")
    with pool.connection() as conn:
        assert backend(conn) != seeded


@pytest.fixture
def table(pg2_user):
    yield from pg2_user.scratch_table()


def test_a_failed_with_block_resets_a_session_changed_where_the_pool_cannot_see(pg2_user, make_db, table):
    """A trigger changes a setting behind a plain INSERT (no tag, no telltale text); the user's own
    clean-up would undo it, but the block raised first. The next user must not inherit it."""
    fn = f"gp_sneaky_{secrets.token_hex(4)}"
    with pg2_user.admin.cursor() as cur:
        cur.execute(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM set_config('application_name', 'leaked', false); RETURN NEW; END $$")
        cur.execute(f"CREATE TRIGGER {fn} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()")
    try:
        pool = make_db().pool()
        with pool.connection() as conn:  # a block that returns: the pool cannot see it (documented)
            run(conn, f"INSERT INTO {table} VALUES (1)")
        with pool.connection() as conn:
            assert one(conn, "SHOW application_name") == "leaked"
            run(conn, "RESET application_name")  # the user's own clean-up (a RESET tag: reset at return)
        with pytest.raises(RuntimeError):
            with pool.connection() as conn:
                run(conn, f"INSERT INTO {table} VALUES (2)")
                raise RuntimeError("view failed before its clean-up")
        with pool.connection() as conn:
            assert one(conn, "SHOW application_name") != "leaked"
        assert pool.stats()["connections_reset"] == 2 and pool.stats()["pool_size"] == 1
    finally:
        with pg2_user.admin.cursor() as cur:
            cur.execute(f"DROP FUNCTION IF EXISTS {fn}() CASCADE")


# -- transactions --------------------------------------------------------------------------------------


def test_request_connection_makes_the_request_one_transaction_on_an_autocommit_pool(pg2_user, make_db, table):
    """psycopg2's commit() does nothing in autocommit mode: a BEGIN sent by the pool would have left
    the request's transaction open. The lease runs with autocommit off, put back at the end."""
    db = make_db()
    with request_scope("GET /order"):
        conn = request_connection(db)
        run(conn, f"INSERT INTO {table} VALUES (1)")
        assert pg2_user.rows(table) == 0  # not committed yet
        conn.commit()  # code written for psycopg2.connect() commits itself: the request's transaction
        assert pg2_user.rows(table) == 1
        run(conn, f"INSERT INTO {table} VALUES (1)")
        conn.rollback()
    assert pg2_user.rows(table) == 1
    with pytest.raises(RuntimeError), request_scope("GET /fail"):
        run(request_connection(db), f"INSERT INTO {table} VALUES (2)")
        raise RuntimeError("view failed")
    assert pg2_user.rows(table) == 1
    with db.connection() as conn:
        assert conn.autocommit is True and conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    assert db.pool().stats()["connections_reset"] == 0  # commits, rollbacks and autocommit cost no reset


def test_a_two_phase_transaction_left_open_drops_the_connection(make_db):
    pool = make_db().pool()
    with pool.connection() as conn:
        session = backend(conn)
        conn.autocommit = False
        conn.tpc_begin(conn.xid(1, f"gp-{secrets.token_hex(3)}", "b"))
        run(conn, "SELECT 1")
    with pool.connection() as conn:  # the block's exit did not commit the two-phase transaction
        assert backend(conn) != session and conn.autocommit is True


# -- fork ------------------------------------------------------------------------------------------------


# -- bounded connect and ping -------------------------------------------------------------------------


def test_a_whole_second_connect_timeout_is_libpqs_own_bound(pg2_user, pg_proxy):
    """connect_timeout=2: libpq's own bound, no helper thread (test_pg_drivers.py has 0.6)."""
    pg_proxy.blackhole()
    db = DatabasePool({"default": pg2_user.config(port=pg_proxy.port, connect_timeout=2, max_size=1)}, name="bh")
    threads = threading.active_count()
    start = time.monotonic()
    with pytest.raises(ConnectError, match="timeout expired"):
        db.pool().getconn()
    took = time.monotonic() - start
    assert 1.9 < took < 3.0 and threading.active_count() <= threads + 1, took  # + the watchdog, at most
    db.close_pool()


@pytest.mark.timeout(30, method="thread")  # psycopg2 blocks in C: no signal can end it, this thread can
def test_a_reset_on_a_stalled_connection_is_bounded_and_drops_it(pg2_user, pg_proxy):
    db = DatabasePool({"default": pg2_user.config(port=pg_proxy.port, min_size=1, max_size=1, connect_timeout=1,
                                                  check_timeout=0.5)}, name="stall-reset")  # fmt: skip
    pool = db.pool()
    conn = pool.getconn()
    run(conn, "SET work_mem = '9MB'")
    assert pg_proxy.stall() == 1
    start = time.monotonic()
    pool.putconn(conn)  # DISCARD ALL gets no answer: bounded by max(connect_timeout, check_timeout)
    assert time.monotonic() - start < 1 + 2.0
    assert pool.stats()["pool_size"] == 0
    db.close_pool()


# -- passwords (a server that checks them) ------------------------------------------------------------


# -- PgBouncer in transaction pooling mode -------------------------------------------------------------


def test_pgbouncer_true_never_resets(pgbouncer):
    db = DatabasePool({"default": pgbouncer.config(pgbouncer=True, min_size=2, max_size=2, driver="psycopg2")},
                      name="bouncer")  # fmt: skip
    db.init_pool()
    pool = db.pool()
    for _ in range(6):
        with pool.connection() as conn:
            assert one(conn, "SELECT %s::int * 2", (21,)) == 42
            run(conn, "SET application_name = 'gp-bouncer'")
    assert pool.stats()["connections_reset"] == 0  # no DISCARD ALL in transaction pooling
    db.close_pool()


# -- gevent --------------------------------------------------------------------------------------------


def _gevent_script(*args: str, config: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gevent_pg2.py"), *args], input=json.dumps(config),
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_gevent_greenlets_wait_cooperatively_and_share_max_size_sessions(pg2_user):
    """100 greenlets, max_size=4, each SELECT pg_sleep(0.05), psycopg2 imported and the pool built
    before patching: the wait callback lets a ticker greenlet run during nearly every query, the
    server never sees more than 4 sessions. Without a callback psycopg2 blocks the hub: the
    queries ran one after another."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], pg2_user.count())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = _gevent_script("burst", "100", "0.05", config=pg2_user.config(min_size=4, max_size=4, timeout=30))
    finally:
        done.set()
        sampler.join(5)
    assert result["ok"] == 100 and not result["errors"], result
    assert result["callback"] == "gunicorn_pool", result
    assert result["covered"] >= 95, result
    assert result["max_gap"] < 0.5 and result["connect_gap"] < 0.5, result
    assert result["elapsed"] < 100 * 0.05 * 0.75, result
    assert result["stats"]["connections_num"] == 4 and peak[0] <= 4, (result, peak)
    figure("pg2 gevent burst of 100 x pg_sleep(0.05) on 4 connections", result["elapsed"])


def test_gevent_a_blackholed_connect_and_a_stalled_ping_end_at_their_bounds_without_blocking_the_hub(
    pg2_user, pg_proxy
):
    pg_proxy.blackhole()
    config = pg2_user.config(port=pg_proxy.port, connect_timeout=0.6, max_size=1)
    result = _gevent_script("blackhole", config=config)
    assert "timed out after 0.6s" in result["error"], result
    assert 0.5 < result["took"] < 1.6 and result["max_gap"] < 0.2, result


# -- the driver's own class ----------------------------------------------------------------------------


def test_connection_class_is_the_drivers_own(make_db):
    with make_db().connection() as conn:
        assert isinstance(conn, ext.connection) and isinstance(conn, PooledPG2Connection)
        params = conn.get_dsn_parameters()
        assert params["dbname"] == PG_DB and params["host"] in (PG_HOST, "localhost")
        assert int(params["port"]) == PG_PORT
        assert isinstance(conn.cursor(cursor_factory=psycopg2.extras.DictCursor), psycopg2.extras.DictCursor)
