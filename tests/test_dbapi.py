"""The generic DB-API adapter (``adapter: dbapi``, a ``creator``): the pool's sizing, waits,
lifetime and stats over a driver it knows nothing of, the transaction rule on return, the
checkout ping, a broken connection replaced, fork. sqlite3 needs no server; PyMySQL runs
against the real MariaDB (a login per test)."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pymysql
import pytest
from support import MYSQL_DB, MYSQL_HOST, MYSQL_PORT, admin_connect, database_pools, session_in_forked_child, wait_until

from gunicorn_pool import ConfigError, DatabasePool, PoolTimeout, TooManyRequests

MakeDB = Callable[..., DatabasePool]


@pytest.fixture
def make_db() -> Iterator[MakeDB]:
    """Factory: an opened DatabasePool with one dbapi pool "default"; all closed after."""
    yield from database_pools(lambda creator, **options: {"adapter": "dbapi", "creator": creator, **options},
                              name="dbapi", defaults={})  # fmt: skip


def sqlite_creator(path: Any) -> Callable[[], sqlite3.Connection]:
    return functools.partial(sqlite3.connect, str(path), check_same_thread=False)


def rows(path: Any, table: str = "t") -> list[int]:
    conn = sqlite3.connect(str(path))
    try:
        return [r[0] for r in conn.execute(f"SELECT v FROM {table} ORDER BY v")]
    finally:
        conn.close()


# -- sqlite3 as the creator (no server) -------------------------------------------------------


def test_sqlite_creator_commits_on_clean_exit_rolls_back_on_error(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "a.db"), autocommit=False, max_size=1)
    with db.connection() as conn:
        conn.execute("CREATE TABLE t (v INT)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert rows(tmp_path / "a.db") == [1]  # committed by the clean exit
    with pytest.raises(ValueError):
        with db.connection() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
            raise ValueError("application error")
    assert rows(tmp_path / "a.db") == [1]  # rolled back
    with db.connection() as conn:
        assert not conn.in_transaction
    stats = db.stats()["default"]
    assert stats["connections_num"] == 1 and stats["requests_num"] == 3


def test_sqlite_autocommit_is_set_and_an_explicit_transaction_is_still_seen(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "b.db"), max_size=1)  # autocommit on by default
    with db.connection() as conn:
        assert conn.isolation_level is None
        conn.execute("CREATE TABLE t (v INT)")
    with pytest.raises(ValueError):
        with db.connection() as conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
            raise ValueError("application error")
    assert rows(tmp_path / "b.db") == []  # in_transaction said it was open: rolled back
    with db.connection() as conn:
        conn.execute("INSERT INTO t VALUES (2)")  # autocommit: committed at once
        assert rows(tmp_path / "b.db") == [2]


def test_autocommit_switched_by_a_user_is_restored_on_return(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "h.db"), max_size=1)
    with db.connection() as conn:
        conn.isolation_level = "DEFERRED"  # autocommit off, no transaction open
    with db.connection() as conn:
        assert conn.isolation_level is None
    assert db.stats()["default"]["connections_reset"] == 1


def test_init_command_and_session_run_on_every_new_connection(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "c.db"), init_command="PRAGMA foreign_keys = ON",
                 session=["PRAGMA cache_size = -4321"], max_size=2)  # fmt: skip
    with db.connection() as a, db.connection() as b:
        for conn in (a, b):
            assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
            assert conn.execute("PRAGMA cache_size").fetchone() == (-4321,)


def test_waits_are_bounded_and_counted(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "d.db"), max_size=1, timeout=0.3, max_waiting=1)
    pool = db.pool()
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(PoolTimeout):
        with db.connection():
            pass
    assert 0.295 <= time.monotonic() - start < 1.5
    waiter = threading.Thread(target=lambda: db.connection(timeout=5).__enter__(), daemon=True)
    waiter.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 1, 5, what="1 waiter")
    with pytest.raises(TooManyRequests):
        pool.getconn()
    pool.putconn(held)
    waiter.join(5)
    stats = pool.stats()
    assert stats["requests_timeouts"] == 1 and stats["requests_errors"] == 1 and stats["requests_queued"] == 2


def test_a_connection_its_user_closed_is_dropped_and_replaced(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "e.db"), max_size=1)
    with db.connection() as conn:
        conn.close()
    with db.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert db.stats()["default"]["connections_num"] == 2


def test_lifetime_replaces_a_connection(make_db, tmp_path):
    db = make_db(sqlite_creator(tmp_path / "f.db"), max_size=1, max_lifetime=0.2)
    with db.connection() as first:
        pass
    time.sleep(0.3)
    with db.connection() as second:
        assert second is not first
    assert db.stats()["default"]["connections_num"] == 2


def test_creator_as_module_callable_in_a_dict_and_a_url(make_db, tmp_path, monkeypatch):
    monkeypatch.setenv("GP_TEST_SQLITE_PATH", str(tmp_path / "g.db"))
    for config in ({"adapter": "dbapi", "creator": "dbapi_creators:sqlite_file"},
                   "dbapi://?creator=dbapi_creators:sqlite_file&max_size=2"):  # fmt: skip
        db = DatabasePool({"default": config})
        db.init_pool()
        try:
            with db.connection() as conn:
                assert isinstance(conn, sqlite3.Connection)
            assert db.pool().dsn == "dbapi:dbapi_creators:sqlite_file"
        finally:
            db.close_pool()
    with pytest.raises(ConfigError, match="ping_query"):
        DatabasePool({"default": {"adapter": "sqlite", "database": ":memory:", "ping_query": "SELECT 1"}})
    with pytest.raises(ConfigError, match="needs a creator"):
        DatabasePool({"default": {"adapter": "dbapi"}})


def test_a_creator_that_fails_does_not_stop_boot(tmp_path, caplog):
    def broken() -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    db = DatabasePool({"default": {"adapter": "dbapi", "creator": broken}})
    db.init_pool()  # logged, not raised: the pool connects on demand
    assert "unable to open database file" in caplog.text and "pool default (dbapi:" in caplog.text
    db.close_pool()


# -- PyMySQL as the creator (real MariaDB) -----------------------------------------------------


def pymysql_creator(user: Any, **extra: Any) -> Callable[[], Any]:
    return functools.partial(pymysql.connect, host=MYSQL_HOST, port=MYSQL_PORT, user=user.name,
                             password=user.password, database=MYSQL_DB, connect_timeout=5, **extra)  # fmt: skip


def session_status(conn: Any) -> tuple[int, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_commit', 'Com_rollback')")
        found = dict(cur.fetchall())
    return int(found["Com_commit"]), int(found["Com_rollback"])


def conn_id(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


@pytest.mark.mysql
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "no-autocommit"])
def test_pymysql_returns_cost_a_round_trip_only_when_the_driver_cannot_tell(make_db, mysql_user, autocommit):
    """Autocommit on (read back through get_autocommit(), the transaction bit of server_status):
    a lease that opened nothing goes back with no COMMIT or ROLLBACK. Off: every return ends
    with one (the server's own counters say which)."""
    db = make_db(pymysql_creator(mysql_user), autocommit=autocommit, max_size=1)
    with db.connection() as conn:
        before = session_status(conn)
    with db.connection() as conn:
        after = session_status(conn)
    expected = (0, 0) if autocommit else (1, 0)  # the clean exit committed (nothing to commit)
    assert (after[0] - before[0], after[1] - before[1]) == expected


@pytest.mark.mysql
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "no-autocommit"])
def test_pymysql_open_transaction_never_reaches_the_next_user(make_db, mysql_user, scratch_table, autocommit):
    db = make_db(pymysql_creator(mysql_user), autocommit=autocommit, max_size=1)
    with pytest.raises(ValueError):
        with db.connection() as conn:
            first = conn_id(conn)
            conn.begin()
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {scratch_table} (v) VALUES (1)")
            raise ValueError("application error")
    with db.connection() as conn:
        assert conn_id(conn) == first  # rolled back and reused
        with conn.cursor() as cur:
            cur.execute("SELECT @@in_transaction")
            assert cur.fetchone()[0] == 0
            cur.execute(f"INSERT INTO {scratch_table} (v) VALUES (2)")
    admin = admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"SELECT v FROM {scratch_table}")
            assert [r[0] for r in cur.fetchall()] == [2]  # 1 rolled back, 2 committed
    finally:
        admin.close()


@pytest.mark.mysql
def test_pymysql_broken_connection_is_replaced_on_checkout(make_db, mysql_user):
    """The checkout ping is PyMySQL's ping(reconnect=False): a KILLed session is found dead and
    replaced by the pool (counted), not silently reconnected by the driver."""
    db = make_db(pymysql_creator(mysql_user), max_size=1, check_interval=0.1)
    with db.connection() as conn:
        first = conn_id(conn)
    mysql_user.kill(first)
    time.sleep(0.2)  # idle past check_interval
    with db.connection() as conn:
        assert conn_id(conn) != first
    stats = db.stats()["default"]
    assert stats["connections_lost"] == 1 and stats["connections_num"] == 2 and stats["requests_errors"] == 0


@pytest.mark.mysql
def test_pymysql_connection_inherited_through_fork_is_left_to_the_parent(make_db, mysql_user):
    """The child's first use adopts the process: the inherited connection is not closed (a
    COM_QUIT on the shared socket would end the parent's session); the child opens its own."""
    db = make_db(pymysql_creator(mysql_user), max_size=1)
    with db.connection() as conn:
        parent = conn_id(conn)
    assert session_in_forked_child(db, conn_id) != parent
    with db.connection() as conn:
        assert conn_id(conn) == parent  # the parent's session lives on
    wait_until(lambda: mysql_user.connection_ids() == [parent], 5, what="only the parent's session")


def test_gunicorn_pool_check_lists_a_dbapi_pool_without_probing_it(tmp_path):
    """``gunicorn-pool check`` knows nothing of an arbitrary driver's server: the pool is listed
    with its sizes and marked not checked, and the check passes."""
    import subprocess
    import sys

    from support import ROOT

    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import gunicorn_pool\n"
        "gunicorn_pool.register(gunicorn_pool.DatabasePool({'legacy': "
        "{'adapter': 'dbapi', 'creator': 'dbapi_creators:sqlite_file', 'max_size': 3}}), name='db')\n"
        "worker_class = 'gunicorn_pool.Worker'\nworkers = 2\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "gunicorn_pool", "check", "-c", str(conf)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dbapi:dbapi_creators:sqlite_file" in proc.stdout and "dbapi: not checked" in proc.stdout
