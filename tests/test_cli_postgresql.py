"""``gunicorn-pool check`` for PostgreSQL pools: the server's max_connections, the slots it
reserves and the current client count go into the budget table (real server, real command)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import servers
from support import pg_admin_connect
from test_cli import _json, _run, _write

pytestmark = pytest.mark.postgresql

pg_scram = servers.pg_scram


def _setting(name: str) -> int:
    with pg_admin_connect() as conn:
        return int(conn.execute(f"SELECT current_setting('{name}')::int").fetchone()[0])


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgresql_pool_is_counted_with_the_servers_reserved_slots(tmp_path: Path, request: Any, driver: str) -> None:
    pg_user = request.getfixturevalue("pg_user" if driver == "psycopg" else "pg2_user")
    conf = _write(tmp_path, {"default": pg_user.url(), "local": f"sqlite:///{tmp_path}/app.db"}, workers=3)
    proc = _run("-c", str(conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"postgresql://{pg_user.name}:***@127.0.0.1:5432/test" in proc.stdout
    assert pg_user.password not in proc.stdout + proc.stderr
    assert "RESERVED" in proc.stdout and proc.stdout.rstrip().endswith("OK: every server fits the peak")
    assert pg_user.count() == 0  # the probe's session is closed again

    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert code == 0, report
    (server,) = report["servers"]
    max_connections, reserved = _setting("max_connections"), _setting("superuser_reserved_connections")
    assert server["adapter"] == "postgresql" and server["version"].startswith("PostgreSQL ")
    assert server["max_connections"] == max_connections
    assert server["reserved_connections"] == reserved  # an ordinary login cannot use them
    assert (server["steady"], server["needed"]) == (3, 6)
    assert server["spare"] == max_connections - reserved - 6 and server["fits"] is True
    assert server["connections_now"] >= 1


def test_postgresql_over_budget_counts_the_reserved_slots(tmp_path: Path, pg_user: Any) -> None:
    max_connections, reserved = _setting("max_connections"), _setting("superuser_reserved_connections")
    usable = max_connections - reserved
    # One host short of max_connections, but over it once the reserved slots are taken off.
    workers = usable // 2 + 1
    assert 2 * workers <= max_connections or reserved == 0
    conf = _write(tmp_path, {"default": pg_user.url()}, workers=workers)
    proc = _run("-c", str(conf), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert f"peak {2 * workers} connections > max_connections {max_connections} - {reserved} reserved" in proc.stdout


def test_postgresql_login_connection_limit_is_a_budget(tmp_path: Path, pg_user: Any) -> None:
    with pg_user.admin.cursor() as cur:
        cur.execute(f'ALTER ROLE "{pg_user.name}" CONNECTION LIMIT 3')
    conf = _write(tmp_path, {"default": pg_user.url()}, workers=2)  # peak 4
    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert code == 1, report
    assert report["servers"][0]["over_user_limit"] == {pg_user.name: {"needed": 4, "max_user_connections": 3}}


def test_postgresql_wrong_password_exits_1_without_leaking_it(tmp_path: Path, pg_scram: Any) -> None:
    login = pg_scram.create_user(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    wrong = "wrong-" + login.password
    conf = _write(tmp_path, {"default": login.url().replace(login.password, wrong)})
    proc = _run("-c", str(conf), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "password authentication failed" in proc.stdout and f"postgresql://{login.name}:***@" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr
