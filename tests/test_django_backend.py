"""The Django backend gunicorn_pool.django.mysql in this process, against the real MariaDB.

Each test adds its own alias (a fresh login, so PROCESSLIST counts are the
test's own) to Django's connection settings and removes it after; the process's
Django settings have no pooled alias otherwise, so discovery elsewhere in the
test session is unaffected.
"""

from __future__ import annotations

import secrets
import sys
from typing import Any, Callable, Iterator

import pytest
from django_support import (
    check_changed_settings_build_a_new_pool_and_close_the_old,
    check_connection_taken_before_fork_is_never_used_after,
    check_pool_timeout_is_a_django_operational_error,
    django_aliases,
    django_configured,
    one,
)
from support import MYSQL_DB, MYSQL_HOST, MYSQL_PORT, admin_connect, wait_until

pytestmark = pytest.mark.mysql


@pytest.fixture(scope="module")
def django_setup() -> None:
    django_configured()


@pytest.fixture(params=["pymysql", "mysqlclient"])
def driver(request: Any) -> str:
    """Each driver of the backend in turn (``OPTIONS["pool"]["driver"]``; the test id names it)."""
    return str(request.param)


@pytest.fixture
def make_alias(django_setup: None, mysql_user: Any, driver: str) -> Iterator[Callable[..., Any]]:
    """``make_alias(**settings) -> DatabaseWrapper`` of a new alias on the test's login, on the
    test's *driver* (added to ``OPTIONS["pool"]`` unless the test names one)."""

    def on_driver(sd: dict[str, Any]) -> None:
        options = dict(sd["OPTIONS"])
        pool = options.get("pool", True)
        if pool is True or (isinstance(pool, dict) and "driver" not in pool):
            options["pool"] = {**(pool if isinstance(pool, dict) else {}), "driver": driver}
        sd["OPTIONS"] = options

    yield from django_aliases({"ENGINE": "gunicorn_pool.django.mysql", "NAME": MYSQL_DB, "USER": mysql_user.name,
                               "PASSWORD": mysql_user.password, "HOST": MYSQL_HOST, "PORT": str(MYSQL_PORT)},
                              on_driver)  # fmt: skip


def test_connect_is_a_checkout_and_close_a_return(make_alias, mysql_user, driver):
    conn = make_alias()
    first = one(conn, "SELECT CONNECTION_ID()")
    raw = conn.connection
    module = __import__({"pymysql": "pymysql", "mysqlclient": "MySQLdb"}[driver])
    assert isinstance(raw, module.connections.Connection) and conn.Database is module
    conn.close()
    assert conn.connection is None
    assert one(conn, "SELECT CONNECTION_ID()") == first  # the same session, no connect
    assert conn.connection is raw
    conn.close()
    assert mysql_user.count() == 1
    stats = conn.pool.stats()
    assert stats["connections_num"] == 1 and stats["requests_num"] == 2 and stats["pool_available"] == 1
    assert one(conn, "SELECT @@tx_isolation") == "READ-COMMITTED"  # Django's default, set by the pool
    assert "MySQLdb" not in sys.modules or type(sys.modules["MySQLdb"]).__name__ == "module"


def test_conn_max_age_and_unknown_options_are_refused(make_alias):
    from django.core.exceptions import ImproperlyConfigured

    for overrides, text in [
        ({"CONN_MAX_AGE": None}, "Pooling doesn't support persistent connections"),
        ({"CONN_MAX_AGE": 60}, "set CONN_MAX_AGE to 0"),
        ({"OPTIONS": {"pool": {"host": "x"}}}, "'host' comes from the Django settings"),
        ({"OPTIONS": {"pool": {"max_size": 0}}}, "max_size must be >= 1"),
        ({"OPTIONS": {"read_default_file": "/etc/my.cnf"}}, "not supported"),
        ({"OPTIONS": {"colour": "blue"}}, "unknown option 'colour'"),
        ({"OPTIONS": {"isolation_level": "chaos"}}, "Invalid transaction isolation level"),
    ]:
        conn = make_alias(**overrides)
        with pytest.raises(ImproperlyConfigured, match=text) as caught:
            conn.ensure_connection()
        assert conn.settings_dict["PASSWORD"] not in str(caught.value)


@pytest.mark.parametrize("where", ["OPTIONS", "OPTIONS['ssl']"])
def test_an_unknown_options_key_that_is_no_name_is_never_echoed(make_alias, where):
    """A key of OPTIONS that is not a name (a secret pasted as a key, a mistyped URL) was echoed in
    the ImproperlyConfigured text, which Django prints at start-up; it is masked as DatabasePool
    masks an unknown option."""
    from django.core.exceptions import ImproperlyConfigured

    secret = secrets.token_hex(8)
    pasted = f"mysql://app:{secret}@db/shop"
    options = {pasted: 1} if where == "OPTIONS" else {"ssl": {pasted: 1}}
    with pytest.raises(ImproperlyConfigured) as caught:
        make_alias(OPTIONS=options).ensure_connection()
    message = str(caught.value)
    assert f"(not shown: {len(pasted)} characters that are not a name" in message, message
    assert secret not in message and "mysql://" not in message
    with pytest.raises(ImproperlyConfigured, match="unknown option 'colour'"):  # a name is still named
        make_alias(OPTIONS={"colour": 1}).ensure_connection()


def test_atomic_rollback_and_commit(make_alias, scratch_table):
    from django.db import transaction

    conn = make_alias()
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=conn.alias):
            one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
            raise RuntimeError("view failed")
    with transaction.atomic(using=conn.alias):
        one(conn, f"INSERT INTO {scratch_table} (v) VALUES (2)")
    conn.close()
    assert one(admin_connect(), f"SELECT GROUP_CONCAT(v) FROM {scratch_table}") == "2"
    assert one(conn, "SELECT @@autocommit") == 1  # Django's autocommit is back for the next user


def test_close_inside_atomic_gives_back_and_refuses_a_new_connection(make_alias, scratch_table):
    """Django's close() inside atomic(): the lease ends (rolled back), and the block cannot go on
    with a connection that is the pool's again (as Django's own PostgreSQL pool)."""
    from django.db import ProgrammingError, transaction

    conn = make_alias(OPTIONS={"pool": {"max_size": 1}})
    with pytest.raises(ProgrammingError, match="Cannot open a new connection in an atomic block"):
        with transaction.atomic(using=conn.alias):
            one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
            conn.close()
            assert conn.pool.stats()["pool_available"] == 1  # back in the pool
            one(conn, "SELECT 1")
    assert conn.connection is None
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table}") == 0
    assert one(conn, "SELECT 1") == 1  # after the block, connections are lent again


def test_session_changes_do_not_reach_the_next_user(make_alias):
    conn = make_alias(OPTIONS={"pool": {"max_size": 1}, "isolation_level": "repeatable read"})
    first = one(conn, "SELECT CONNECTION_ID()")
    one(conn, "SET @gp_leak = 42")
    one(conn, "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
    one(conn, "CREATE TEMPORARY TABLE gp_tmp (a INT)")
    conn.close()
    assert one(conn, "SELECT CONNECTION_ID()") == first  # reset, not replaced
    assert one(conn, "SELECT @gp_leak") is None
    assert one(conn, "SELECT @@tx_isolation") == "REPEATABLE-READ"  # the alias's level is back
    with pytest.raises(Exception, match="doesn't exist"):
        one(conn, "SELECT * FROM gp_tmp")
    assert conn.pool.stats()["connections_reset"] == 1


def test_autocommit_off_left_open_is_rolled_back_on_close(make_alias, scratch_table):
    conn = make_alias()
    conn.set_autocommit(False)
    one(conn, f"INSERT INTO {scratch_table} (v) VALUES (1)")
    conn.close()  # no commit: the pool rolls back and restores autocommit
    assert one(admin_connect(), f"SELECT COUNT(*) FROM {scratch_table}") == 0
    assert conn.get_autocommit() is True
    assert one(conn, "SELECT @@autocommit") == 1


def test_conn_health_checks_ping_every_checkout_and_killed_sessions_are_replaced(make_alias, mysql_user):
    conn = make_alias(CONN_HEALTH_CHECKS=True)
    first = one(conn, "SELECT CONNECTION_ID()")
    assert conn.pool.options.check_interval == 0.0
    conn.close()
    mysql_user.kill(first)
    wait_until(lambda: mysql_user.count() == 0, 5, what="session killed")
    second = one(conn, "SELECT CONNECTION_ID()")  # the checkout ping found it dead and replaced it
    assert second != first
    assert conn.pool.stats()["connections_lost"] == 1


def test_is_usable_never_reconnects_behind_the_pool(make_alias, mysql_user):
    conn = make_alias()
    first = one(conn, "SELECT CONNECTION_ID()")
    assert conn.is_usable()
    mysql_user.kill(first)
    wait_until(lambda: mysql_user.count() == 0, 5, what="session killed")
    assert not conn.is_usable()
    assert mysql_user.count() == 0  # PyMySQL < 1.2 pings with reconnect=True by default: not here
    conn.close()  # a dead connection goes back and is dropped
    assert conn.pool.stats()["pool_size"] == 0
    assert not conn.is_usable()  # nothing lent: not usable, and no error (Django's #21553)


def test_pool_timeout_is_a_django_operational_error(make_alias):
    check_pool_timeout_is_a_django_operational_error(make_alias)


def test_no_database_connections_are_not_pooled(make_alias, mysql_user):
    conn = make_alias()
    with conn._nodb_cursor() as cursor:
        cursor.execute("SELECT DATABASE()")
        assert cursor.fetchone()[0] is None
        assert mysql_user.count() == 1
    wait_until(lambda: mysql_user.count() == 0, 5, what="the no-database session closed, not kept")
    from gunicorn_pool.django import pools

    assert conn.alias not in pools.targets()


def test_changed_settings_build_a_new_pool_and_close_the_old(make_alias, mysql_user):
    check_changed_settings_build_a_new_pool_and_close_the_old(make_alias, mysql_user.count)


def test_connection_taken_before_fork_is_never_used_after(make_alias, mysql_user):
    """--preload in small: the child must not use (nor end) the parent's session."""
    check_connection_taken_before_fork_is_never_used_after(make_alias, mysql_user.connection_ids)
