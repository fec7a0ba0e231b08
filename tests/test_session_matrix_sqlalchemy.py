"""The session matrices through adopted SQLAlchemy engines: no session state, and no open
transaction, passes from one user of an adopted engine's connection to the next.

The statements and the probes are the DatabasePool matrices' own
(:mod:`test_session_matrix_mysql`, :mod:`test_session_matrix_pg`), run through
an engine the app created and :func:`~gunicorn_pool.sqlalchemy.adopt` put on
a pool of one connection (:class:`~gunicorn_pool.sqlalchemy.AdoptedEngines`,
as in a worker): MariaDB on PyMySQL, PostgreSQL on psycopg 3 and psycopg2. A
first lease (``engine.raw_connection()``, SQLAlchemy's DBAPI proxy) changes the
session, then commits and gives it back (``clean``) or raises, and SQLAlchemy
rolls back (``raises``); the next lease must get the same server session
(reset, not replaced) and see it as a fresh connection of the engine did,
including what the engine's ``connect`` events set (``SET time_zone`` on
MariaDB, ``SET application_name`` on PostgreSQL: they run again after a reset).

Then the transaction rules: a transaction left open with
``pool_reset_on_return=None`` (a read of an InnoDB table, a failed INSERT caught
in the block) never goes back to the pool open.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any, Callable, Iterator

import pymysql
import pytest
import test_session_matrix_pg as pgm
from sqlalchemy import create_engine, event, text
from support import PG_DB, PG_HOST, PG_PORT, admin_connect, pg_admin_connect, wait_until
from test_session_matrix_mysql import CASES, _act, _session_id, login, objects, probe  # noqa: F401  (fixtures)
from test_session_matrix_pg import matrix  # noqa: F401  (fixture)
from test_sqlalchemy import driver_url

from gunicorn_pool.options import PoolOptions
from gunicorn_pool.sqlalchemy import AdoptedEngines

pytestmark = pytest.mark.timeout(60)

#: What the engines' own connect events set: it must survive every reset.
MYSQL_ZONE = "+03:00"
PG_APP = "gp-sa-matrix"


class Raised(Exception):
    """The view failed after changing the session."""


@pytest.fixture
def adopted() -> Iterator[Callable[[Any], Any]]:
    """Put an engine on a pool of one connection as :func:`adopt` does in a worker (the service is
    not registered: the test opens and closes it); every one is closed after the test."""
    services: list[AdoptedEngines] = []

    def make(engine: Any, **options: Any) -> Any:
        service = AdoptedEngines(lambda: {"default": engine}, name=f"sa-matrix-{len(services)}",
                                 options=PoolOptions(**{"max_size": 1, **options}))  # fmt: skip
        services.append(service)
        service.init_pool()
        return service

    try:
        yield make
    finally:
        for service in services:
            engines = list(service.engines().values())
            service.close_pool()
            for engine in engines:
                engine.dispose()


# -- MariaDB through PyMySQL -----------------------------------------------------------------------


def mysql_engine(user: Any, **kw: Any) -> Any:
    """An engine of the test login, its reads bounded, whose connect event sets the time zone."""
    engine = create_engine(driver_url(user.url()), connect_args={"read_timeout": 10}, **kw)

    @event.listens_for(engine, "connect")
    def zone(dbapi: Any, record: Any) -> None:
        with dbapi.cursor() as cur:
            cur.execute(f"SET time_zone = '{MYSQL_ZONE}'")

    return engine


#: An XA transaction left open refuses SQLAlchemy's rollback on return (1399): SQLAlchemy
#: invalidates the connection, and the pool replaces it (closing it ends the XA transaction).
MYSQL_REPLACED = {"XA START left open", "XA idle"}


@pytest.mark.mysql
@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
@pytest.mark.parametrize("case", list(CASES))
def test_mysql_through_an_adopted_engine(login, adopted, case, raises):  # noqa: F811
    fresh_engine = adopted(mysql_engine(login)).engine()
    first = fresh_engine.raw_connection()
    try:
        fresh = probe(first.driver_connection)
    finally:
        first.close()
    assert fresh["variables"][0][1] == MYSQL_ZONE, "the engine's connect event did not run"
    service = adopted(mysql_engine(login))
    engine = service.engine()
    with contextlib.suppress(Raised), contextlib.closing(engine.raw_connection()) as lease:
        raw = lease.driver_connection
        session = _session_id(raw)
        with raw.cursor() as cur:
            _act(raw, cur, CASES[case])
        if raises:
            raise Raised  # SQLAlchemy's reset on return rolls back
        with contextlib.suppress(pymysql.err.MySQLError):
            raw.commit()  # what a view that succeeded does (an XA transaction refuses it)
    with contextlib.closing(engine.raw_connection()) as lease:
        seen = probe(lease.driver_connection)
        same = _session_id(lease.driver_connection) == session
    assert seen == fresh, f"{case!r} reached the next user"
    assert same == (case not in MYSQL_REPLACED), "replaced instead of reset, or the reverse"


# -- PostgreSQL through psycopg 3 and psycopg2 -----------------------------------------------------

#: Cases that do not apply to an adopted engine: its connections run with autocommit off already;
#: SET SESSION AUTHORIZATION needs a superuser login for the engine; a COPY left in progress hangs
#: SQLAlchemy's own rollback on return before the pool sees the connection (psycopg holds the
#: connection's lock for the COPY: a stock QueuePool engine hangs the same way).
PG_SKIPPED = {"autocommit off", "SET SESSION AUTHORIZATION", "COPY left in progress"}
PG_RUNS = [run for run in pgm.RUNS if run.values[1] not in PG_SKIPPED]
#: Cases whose change shows only with autocommit on (a BEGIN inside the engine's own transaction).
PG_UNSEEN = {"BEGIN without COMMIT"}


def pg_engine(m: Any, driver: str, **kw: Any) -> Any:
    """An engine of the matrix's login on *driver*, bounded as the DatabasePool matrix's pools are,
    whose connect event sets application_name."""
    url = (f"postgresql+{driver}://{m.login.name}:{m.login.password}@{PG_HOST}:{PG_PORT}/{PG_DB}")
    options = f"{pgm.BOUNDS} -c search_path={m.schema},public"
    engine = create_engine(url, connect_args={"options": options}, **kw)

    @event.listens_for(engine, "connect")
    def name(dbapi: Any, record: Any) -> None:
        cur = dbapi.cursor()
        cur.execute(f"SET application_name = '{PG_APP}'")
        cur.close()
        dbapi.commit()

    return engine


@pytest.mark.postgresql
@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
@pytest.mark.parametrize("driver, name", PG_RUNS)
def test_postgresql_through_an_adopted_engine(matrix, adopted, driver, name, raises):  # noqa: F811
    case = pgm.CASES[name]
    service = adopted(pg_engine(matrix, driver))
    engine = service.engine()
    with contextlib.closing(engine.raw_connection()) as lease:
        conn = lease.driver_connection
        pid, fresh = pgm.backend(conn), pgm.snapshot(conn, matrix)
        conn.rollback()
    assert fresh["settings"]["application_name"] == PG_APP, "the engine's connect event did not run"
    with contextlib.suppress(Raised), contextlib.closing(engine.raw_connection()) as lease:
        conn = lease.driver_connection
        assert pgm.backend(conn) == pid
        conn.rollback()  # the engine's transaction that read it (settings can change only outside one)
        case.change(conn, matrix)
        if raises:
            raise Raised  # SQLAlchemy's reset on return rolls back
        # Seen in the transaction (a cursor of it), or once committed (LISTEN): the case changed something.
        visible = case.visible and name not in PG_UNSEEN
        changed = visible and pgm.snapshot(conn, matrix) != fresh
        with contextlib.suppress(Exception):
            conn.commit()  # what a view that succeeded does (a closed or failed one refuses it)
        if visible and not changed:
            assert pgm.snapshot(conn, matrix) != fresh, "the case changed nothing the snapshot sees"
    with contextlib.closing(engine.raw_connection()) as lease:
        conn = lease.driver_connection
        assert pgm.snapshot(conn, matrix) == fresh, f"{name} reached the next lease"
        if case.after is not None:
            case.after(conn)
        assert (pgm.backend(conn) == pid) == (case.outcome != "drop"), "replaced instead of reset, or the reverse"
        conn.rollback()


# -- transactions left open --------------------------------------------------------------------------


@pytest.fixture
def innodb_table(mysql_user: Any) -> Iterator[str]:
    name = f"gp_sa_trx_{secrets.token_hex(4)}"
    admin = admin_connect(read_timeout=10)
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {name} VALUES (1)")
        cur.execute(f"GRANT SELECT, INSERT ON {name} TO '{mysql_user.name}'@'%'")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 10")
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        admin.close()


def innodb_transactions(thread_id: int) -> int:
    """InnoDB transactions of server session *thread_id*, seen by root (PROCESS privilege). InnoDB
    refreshes what INNODB_TRX shows only after 0.1 s without a read of it (by anyone): the lock
    check below is what the tests assert after the return."""
    admin = admin_connect(read_timeout=10)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %s",
                        (thread_id,))  # fmt: skip
            return int(cur.fetchone()[0])
    finally:
        admin.close()


def row_locked(table: str) -> bool:
    """True if another session's write of row 1 waits for a lock (a transaction holds it), within 1 s."""
    admin = admin_connect(read_timeout=10)
    try:
        with admin.cursor() as cur:
            cur.execute(f"SET STATEMENT innodb_lock_wait_timeout = 1 FOR UPDATE {table} SET id = id WHERE id = 1")
        return False
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != 1205:  # lock wait timeout
            raise
        return True
    finally:
        admin.close()


@pytest.mark.mysql
def test_a_read_left_open_without_reset_on_return_is_rolled_back(mysql_user, innodb_table, adopted):
    """Issue 18: ``pool_reset_on_return=None``, ``raw_connection()``, a SELECT on an InnoDB table,
    ``close()``: PyMySQL's status was stale after a result set, so the transaction stayed open
    (INNODB_TRX, and its row lock) while the connection idled in the pool."""
    engine = adopted(create_engine(driver_url(mysql_user.url()), pool_reset_on_return=None)).engine()
    raw = engine.raw_connection()
    with raw.cursor() as cur:
        cur.execute(f"SELECT id FROM {innodb_table} LOCK IN SHARE MODE")
        cur.fetchall()
    assert innodb_transactions(_session_id(raw.driver_connection)) == 1
    assert row_locked(innodb_table)
    raw.close()
    assert not row_locked(innodb_table), "the connection went back to the pool with its transaction open"


@pytest.mark.mysql
def test_a_failed_insert_caught_in_the_block_is_rolled_back(mysql_user, innodb_table, adopted):
    """A duplicate key caught in the block, then a clean exit: an error packet carries no status,
    so the status is unsure and the transaction the failed INSERT opened (holding a lock on the
    duplicate row) is rolled back."""
    engine = adopted(create_engine(driver_url(mysql_user.url()), pool_reset_on_return=None)).engine()
    raw = engine.raw_connection()
    raw.commit()
    with raw.cursor() as cur, pytest.raises(pymysql.err.IntegrityError):
        cur.execute(f"INSERT INTO {innodb_table} VALUES (1)")
    assert row_locked(innodb_table)
    raw.close()
    assert not row_locked(innodb_table), "the connection went back to the pool with its transaction open"


def pg_state(pid: int) -> str:
    with pg_admin_connect(options="-c statement_timeout=10000") as admin:
        row = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return str(row[0])


@pytest.mark.postgresql
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgresql_read_left_open_without_reset_on_return_is_rolled_back(pg_user, adopted, driver):
    url = pg_user.url().replace("postgresql://", f"postgresql+{driver}://")
    engine = adopted(create_engine(url, pool_reset_on_return=None)).engine()
    raw = engine.raw_connection()
    cur = raw.cursor()
    cur.execute("SELECT pg_backend_pid()")
    (pid,) = cur.fetchone()
    cur.close()
    assert pg_state(pid) == "idle in transaction"
    raw.close()
    assert pg_state(pid) == "idle", "the connection went back to the pool with its transaction open"


@pytest.mark.postgresql
def test_psycopg2_engine_checkout_probe_replaces_a_terminated_session(pg_user, adopted):
    """Issue 20.1: a psycopg2 engine's checkout probe (a zero-timeout ``poll()`` of the socket, no
    round trip) sees a session the server ended; before, only the ping after ``check_interval``
    (here 60 s) could, and the dead connection reached the next query."""
    url = pg_user.url().replace("postgresql://", "postgresql+psycopg2://")
    service = adopted(create_engine(url), check_interval=60)
    engine = service.engine()
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    pg_user.terminate_all()
    wait_until(lambda: pg_user.count() == 0, 10, what="the terminated session gone")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    assert service.stats()["default"]["connections_lost"] == 1
