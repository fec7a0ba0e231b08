"""What the in-process tests of gunicorn_pool's Django backends share (MySQL: test_django_backend.py,
PostgreSQL: test_django_postgresql.py): Django set up once, aliases made per test, and the checks
both backends pass the same way."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest


def django_configured() -> None:
    """Django set up in this process with no alias of its own (each test adds its own)."""
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(DATABASES={}, INSTALLED_APPS=[], USE_TZ=True, SECRET_KEY="gp-tests")
        django.setup()


def django_aliases(base: dict[str, Any], adjust: Optional[Callable[[dict[str, Any]], None]] = None,
                   ) -> Iterator[Callable[..., Any]]:  # fmt: skip
    """Generator for a fixture: ``make(**settings) -> DatabaseWrapper`` of a new alias with the
    settings *base* (ENGINE and login) and *settings*, then *adjust(settings)* if given; every
    alias, its connection and its pool are gone after the test."""
    from django.db import connections

    from gunicorn_pool.django import pools

    made: list[str] = []

    def make(**overrides: Any) -> Any:
        alias = f"gp_{secrets.token_hex(3)}"
        sd = {**base, "OPTIONS": {}, **overrides}
        if adjust is not None:
            adjust(sd)
        connections.settings[alias] = sd
        connections.configure_settings(connections.settings)  # fills Django's defaults
        made.append(alias)
        return connections[alias]

    try:
        yield make
    finally:
        for alias in made:
            try:
                connections[alias].close()
            except Exception:  # noqa: BLE001 - a test may leave it broken on purpose
                pass
            found = pools.targets().get(alias)
            if found is not None and found.pool is not None:
                found.pool.close()
            pools._targets.pop(alias, None)
            connections.settings.pop(alias, None)
            try:
                delattr(connections._connections, alias)
            except AttributeError:
                pass


def one(conn: Any, sql: str, params: Any = None) -> Any:
    """The first column of the first row of *sql* through Django's cursor (None if none)."""
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
    return row[0] if row else None


def session_id(conn: Any) -> int:
    """The server's id of *conn*'s session (CONNECTION_ID(), pg_backend_pid())."""
    return int(one(conn, "SELECT CONNECTION_ID()" if conn.vendor == "mysql" else "SELECT pg_backend_pid()"))


def check_pool_timeout_is_a_django_operational_error(make_alias: Callable[..., Any]) -> None:
    from django.db import OperationalError, connections

    import gunicorn_pool

    conn = make_alias(OPTIONS={"pool": {"max_size": 1, "timeout": 0.2}})
    one(conn, "SELECT 1")  # holds the only connection
    caught: list[BaseException] = []

    def other_thread() -> None:
        try:
            one(connections[conn.alias], "SELECT 1")
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            caught.append(exc)
        finally:
            connections[conn.alias].close()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert len(caught) == 1
    assert isinstance(caught[0], OperationalError) and isinstance(caught[0], gunicorn_pool.PoolTimeout)
    conn.close()


def check_changed_settings_build_a_new_pool_and_close_the_old(make_alias: Callable[..., Any],
                                                               count: Callable[[], int]) -> None:  # fmt: skip
    from support import wait_until

    conn = make_alias()
    one(conn, "SELECT 1")
    old = conn.pool
    conn.close()
    conn.settings_dict["OPTIONS"] = {"pool": {"max_size": 2}}
    one(conn, "SELECT 1")
    assert conn.pool is not old and old.closed and conn.pool.max_size == 2
    conn.close()
    wait_until(lambda: count() == 1, 5, what="the old pool's session closed")


def check_connection_taken_before_fork_is_never_used_after(make_alias: Callable[..., Any],
                                                           session_ids: Callable[[], list[int]]) -> None:  # fmt: skip
    """--preload in small: the child must not use (nor end) the parent's session."""
    conn = make_alias()
    parent_id = session_id(conn)  # held across the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the session it uses, then leave without cleanup
        try:
            os.write(write, str(session_id(conn)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = int(os.read(read, 64) or b"0")
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id and child_id != parent_id
    assert parent_id in session_ids()  # the parent's session lives on
    assert session_id(conn) == parent_id
