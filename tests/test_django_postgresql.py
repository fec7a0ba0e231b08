"""The Django backend gunicorn_pool.django.postgresql in this process, against the real PostgreSQL,
on the driver Django chose: psycopg 3 here (Django prefers it when both are installed), and
psycopg2 in a second run of this file in a subprocess where Django's backend was imported with
psycopg made unimportable (``GP_DJANGO_PG_DRIVER=psycopg2``; the test admin connections stay
psycopg 3's): ``test_this_file_passes_on_psycopg2``.

Each test adds its own alias (a fresh login, so its sessions are counted exactly) and removes it.
"""

from __future__ import annotations

import os
import subprocess
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
from support import PG_DB, PG_HOST, PG_PORT, ROOT, pg_one, wait_until

pytestmark = pytest.mark.postgresql

DRIVER = os.environ.get("GP_DJANGO_PG_DRIVER", "psycopg")
ENGINE = "gunicorn_pool.django.postgresql"


def _import_django_backend() -> None:
    """Django's PostgreSQL backend, on psycopg2 when asked: psycopg is made unimportable while
    Django's modules import (Django picks psycopg 3 whenever it can import it)."""
    if DRIVER != "psycopg2" or "django.db.backends.postgresql.base" in sys.modules:
        return
    hidden = {name: sys.modules.get(name) for name in ("psycopg", "psycopg_pool")}
    sys.modules.update({name: None for name in hidden})  # type: ignore[dict-item]
    try:
        import django.db.backends.postgresql.base  # noqa: F401 - the import is the point
    finally:
        for name, module in hidden.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def django_setup() -> None:
    django_configured()
    _import_django_backend()
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    assert is_psycopg3 is (DRIVER == "psycopg"), "Django's backend was imported on the other driver"


@pytest.fixture
def make_alias(django_setup: None, pg_user: Any) -> Iterator[Callable[..., Any]]:
    """``make_alias(**settings) -> DatabaseWrapper`` of a new alias on the test's login."""
    yield from django_aliases({"ENGINE": ENGINE, "NAME": PG_DB, "USER": pg_user.name, "PASSWORD": pg_user.password,
                               "HOST": PG_HOST, "PORT": str(PG_PORT)})


@pytest.fixture
def table(pg_user: Any) -> Iterator[str]:
    yield from pg_user.scratch_table()


def test_this_file_passes_on_psycopg2(postgresql_server: None) -> None:
    """Every test of this file, again, with Django on psycopg2 (a subprocess: Django picks its
    driver once per process)."""
    if DRIVER == "psycopg2":
        pytest.skip("this is the psycopg2 run")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"],
                          capture_output=True, text=True, timeout=240, cwd=str(ROOT),
                          env=dict(os.environ, GP_DJANGO_PG_DRIVER="psycopg2"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


def test_connect_is_a_checkout_and_close_a_return(make_alias, pg_user):
    conn = make_alias()
    first = one(conn, "SELECT pg_backend_pid()")
    raw = conn.connection
    assert type(raw).__module__ == {"psycopg": "gunicorn_pool.connectors.postgresql",
                                    "psycopg2": "gunicorn_pool.connectors.psycopg2"}[DRIVER]  # fmt: skip
    conn.close()
    assert conn.connection is None
    assert one(conn, "SELECT pg_backend_pid()") == first  # the same session, no connect
    assert conn.connection is raw
    conn.close()
    assert pg_user.count() == 1
    stats = conn.pool.stats()
    assert stats["connections_num"] == 1 and stats["requests_num"] == 2 and stats["pool_available"] == 1
    assert stats["connections_reset"] == 0  # Django's autocommit on every connect costs nothing
    assert one(conn, "SHOW TimeZone") == "UTC"  # USE_TZ: Django's time zone, a session statement of the pool
    assert one(conn, "SHOW client_encoding") == "UTF8"


def test_conn_max_age_and_unknown_options_are_refused(make_alias):
    from django.core.exceptions import ImproperlyConfigured

    for overrides, text in [
        ({"CONN_MAX_AGE": None}, "Pooling doesn't support persistent connections"),
        ({"OPTIONS": {"pool": {"host": "x"}}}, "'host' comes from the Django settings"),
        ({"OPTIONS": {"pool": {"driver": "psycopg"}}}, "'driver' is Django's choice"),
        ({"OPTIONS": {"pool": {"max_size": 0}}}, "max_size must be >= 1"),
        ({"OPTIONS": {"passfile": "/root/.pgpass"}}, "not supported"),
        ({"OPTIONS": {"colour": "blue"}}, "unknown option 'colour'"),
        ({"OPTIONS": {"isolation_level": 99}}, "Invalid transaction isolation level"),
    ]:
        conn = make_alias(**overrides)
        with pytest.raises(ImproperlyConfigured, match=text) as caught:
            conn.ensure_connection()
        assert conn.settings_dict["PASSWORD"] not in str(caught.value)


def test_atomic_rollback_and_commit(make_alias, pg_user, table):
    from django.db import transaction

    conn = make_alias()
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=conn.alias):
            one(conn, f"INSERT INTO {table} (v) VALUES (1)")
            raise RuntimeError("view failed")
    with transaction.atomic(using=conn.alias):
        one(conn, f"INSERT INTO {table} (v) VALUES (2)")
    conn.close()
    assert pg_one(pg_user.admin, f"SELECT string_agg(v::text, ',') FROM {table}") == "2"
    assert conn.get_autocommit() is True
    assert conn.pool.stats()["connections_reset"] == 0  # atomic() switches autocommit off and on: no reset


def test_close_inside_atomic_gives_back_and_refuses_a_new_connection(make_alias, pg_user, table):
    from django.db import ProgrammingError, transaction

    conn = make_alias(OPTIONS={"pool": {"max_size": 1}})
    with pytest.raises(ProgrammingError, match="Cannot open a new connection in an atomic block"):
        with transaction.atomic(using=conn.alias):
            one(conn, f"INSERT INTO {table} (v) VALUES (1)")
            conn.close()
            assert conn.pool.stats()["pool_available"] == 1  # back in the pool
            one(conn, "SELECT 1")
    assert conn.connection is None
    assert pg_user.rows(table) == 0
    assert one(conn, "SELECT 1") == 1


def test_session_changes_do_not_reach_the_next_user_and_the_aliass_settings_come_back(make_alias, pg_user):
    role = f"{pg_user.name}_r"
    with pg_user.admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" NOLOGIN')
        cur.execute(f'GRANT "{role}" TO "{pg_user.name}"')
    try:
        conn = make_alias(TIME_ZONE="Asia/Kolkata", OPTIONS={"pool": {"max_size": 1}, "assume_role": role,
                                                             "isolation_level": 3})  # fmt: skip
        first = one(conn, "SELECT pg_backend_pid()")
        settings = "SELECT current_user, current_setting('TimeZone'), current_setting('default_transaction_isolation')"
        with conn.cursor() as cursor:
            cursor.execute(settings)
            expected = cursor.fetchone()
        level = "repeatable read" if DRIVER == "psycopg" else "serializable"  # IsolationLevel(3) of each driver
        assert expected == (role, "Asia/Kolkata", level)
        one(conn, "SET TIME ZONE 'UTC'")
        one(conn, "RESET ROLE")
        one(conn, "SET default_transaction_isolation = 'read uncommitted'")
        one(conn, "CREATE TEMP TABLE gp_tmp (a int)")
        one(conn, "SELECT set_config('app.tenant', 'acme', false)")
        conn.close()
        assert one(conn, "SELECT pg_backend_pid()") == first  # reset, not replaced
        with conn.cursor() as cursor:
            cursor.execute(settings)
            assert cursor.fetchone() == expected  # the alias's session statements ran again
        assert one(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()") == 0
        assert one(conn, "SELECT nullif(current_setting('app.tenant', true), '')") is None
        assert conn.pool.stats()["connections_reset"] == 1
    finally:
        conn.close()
        conn.close_pool()
        with pg_user.admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_drivers_values_come_back_as_django_expects(make_alias):
    """JSONB as text (Django decodes JSONField itself), timestamps aware in the connection's zone."""
    import datetime

    conn = make_alias()
    with conn.cursor() as cursor:
        cursor.execute("""SELECT '{"a": 1}'::jsonb, now()""")
        doc, now = cursor.fetchone()
    assert doc == '{"a": 1}'
    assert isinstance(now, datetime.datetime) and now.utcoffset() == datetime.timedelta(0)


def test_autocommit_off_left_open_is_rolled_back_on_close(make_alias, pg_user, table):
    conn = make_alias()
    conn.set_autocommit(False)
    one(conn, f"INSERT INTO {table} (v) VALUES (1)")
    conn.close()  # no commit: the pool rolls back and restores autocommit
    assert pg_user.rows(table) == 0
    assert conn.get_autocommit() is True
    assert conn.connection.autocommit is True


def test_conn_health_checks_ping_every_checkout_and_terminated_sessions_are_replaced(make_alias, pg_user):
    conn = make_alias(CONN_HEALTH_CHECKS=True)
    first = one(conn, "SELECT pg_backend_pid()")
    assert conn.pool.options.check_interval == 0.0
    conn.close()
    pg_user.terminate(first)
    wait_until(lambda: pg_user.count() == 0, 5, what="session terminated")
    assert one(conn, "SELECT pg_backend_pid()") != first  # the checkout ping found it dead and replaced it
    assert conn.pool.stats()["connections_lost"] == 1


def test_pool_timeout_is_a_django_operational_error(make_alias):
    check_pool_timeout_is_a_django_operational_error(make_alias)


def test_no_database_connections_are_not_pooled(make_alias, pg_user):
    from gunicorn_pool.django import pools

    conn = make_alias()
    with conn._nodb_cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == "postgres"
        assert pg_user.count() == 1
    wait_until(lambda: pg_user.count() == 0, 5, what="the no-database session closed, not kept")
    assert conn.alias not in pools.targets()


def test_changed_settings_build_a_new_pool_and_close_the_old(make_alias, pg_user):
    check_changed_settings_build_a_new_pool_and_close_the_old(make_alias, pg_user.count)


def test_connection_taken_before_fork_is_never_used_after(make_alias, pg_user):
    """--preload in small: the child must not use (nor end) the parent's session."""
    check_connection_taken_before_fork_is_never_used_after(make_alias, pg_user.backend_pids)


def test_a_stock_alias_with_djangos_pool_is_told_what_to_do_on_psycopg2(django_setup, pg_user):
    """Django's own pool needs psycopg 3: on psycopg2 Django itself says "Error loading
    psycopg_pool module"; gunicorn_pool's boot and `gunicorn-pool check` name the ENGINE to use."""
    from django.core.exceptions import ImproperlyConfigured

    from gunicorn_pool.django.service import _check_django_pool

    if DRIVER == "psycopg":
        _check_django_pool("default", {})  # nothing to say: Django's pool works on psycopg 3
        return
    with pytest.raises(ImproperlyConfigured, match=f"set ENGINE to '{ENGINE}'"):
        _check_django_pool("default", {})
