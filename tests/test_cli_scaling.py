"""``gunicorn-pool check`` past one host: primaries and replicas counted apart, and PgBouncer's
server connections (not its clients) as the database server's budget. Real servers (the
throwaway MariaDB pair, a throwaway PgBouncer in front of the machine's PostgreSQL), real command.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import servers
from support import pg_admin_connect
from test_cli import _json, _run, _write

mariadb_pair = servers.mariadb_pair


def _pg_max_connections() -> int:
    with pg_admin_connect() as conn:
        return int(conn.execute("SELECT current_setting('max_connections')::int").fetchone()[0])


@pytest.mark.mysql
def test_primaries_and_replicas_are_counted_apart(tmp_path: Path, mariadb_pair: Any) -> None:
    login = mariadb_pair.create_user(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))[0]
    pools = {"default": login.config(max_size=3, replicas=[{"port": mariadb_pair.replica.port, "max_size": 2}])}
    conf = _write(tmp_path, pools, workers=2)
    code, report = _json("-c", str(conf), "--hosts", "3", cwd=tmp_path)
    assert code == 0, report
    roles = {row["pool"]: row["role"] for row in report["pools"]}
    assert roles == {"default": "primary", "default.replica1": "replica of default"}
    by_role = {tuple(s["roles"]): s for s in report["servers"]}
    assert by_role[("primary",)]["needed"] == 2 * 3 * 2 * 3  # workers x max_size x SIGHUP x hosts
    assert by_role[("replica",)]["needed"] == 2 * 2 * 2 * 3
    assert report["totals"] == {"primaries": {"servers": 1, "needed": 36}, "replicas": {"servers": 1, "needed": 24}}
    proc = _run("-c", str(conf), "--hosts", "3", cwd=tmp_path)
    assert "primaries: 1 server(s), peak 36 connection(s)" in proc.stdout
    assert "replicas: 1 server(s), peak 24 connection(s)" in proc.stdout
    assert "replica of default" in proc.stdout and login.password not in proc.stdout


@pytest.mark.postgresql
def test_pgbouncer_server_budget_is_its_pool_size_not_the_clients(tmp_path: Path, pgbouncer: Any) -> None:
    """3 workers x max_size 4, 2 hosts: 48 clients at the SIGHUP peak, but the server sees
    PgBouncer's 7 server connections per host (PgBouncer on the loopback: one per host)."""
    conf = _write(tmp_path, {"default": pgbouncer.url(pgbouncer="true", max_size=4)}, workers=3)
    code, report = _json("-c", str(conf), "--hosts", "2", "--pgbouncer-pool-size", "7", cwd=tmp_path)
    assert code == 0, report
    (srv,) = report["servers"]
    assert srv["pgbouncer"]["clients"] == 3 * 4 * 2 * 2
    assert (srv["needed"], srv["pgbouncer"]["pgbouncers"]) == (7 * 1 * 2, 2)
    # The login is a superuser: no reserved slots are taken off.
    assert srv["spare"] == srv["max_connections"] - srv["reserved_connections"] - 14 and srv["fits"] is True
    assert srv["max_connections"] == _pg_max_connections()
    proc = _run("-c", str(conf), "--hosts", "2", "--pgbouncer-pool-size", "7", cwd=tmp_path)
    assert "clients peak 48; server connections 7 x 1 pair(s) x 2 PgBouncer(s) = 14" in proc.stdout, proc.stdout
    assert "primary via pgbouncer" in proc.stdout
    # Without the option, and a login the admin console refuses: unknown, and said so.
    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert report["servers"][0]["fits"] is None
    assert any("pass --pgbouncer-pool-size" in w for w in report["warnings"]), report["warnings"]


@pytest.mark.postgresql
def test_pgbouncer_pool_size_is_read_from_its_admin_console(tmp_path: Path, postgresql_server: None) -> None:
    settings = {"stats_users": "postgres", "reserve_pool_size": "2"}
    with servers.PgBouncer(default_pool_size=6, max_client_conn=20, settings=settings) as bouncer:
        conf = _write(tmp_path, {"default": bouncer.url(pgbouncer="true", max_size=2)}, workers=2)
        code, report = _json("-c", str(conf), cwd=tmp_path)
        assert code == 0, report
        (srv,) = report["servers"]
        found = srv["pgbouncer"]
        assert (found["pool_size"], found["reserve_pool"], found["max_client_conn"]) == (6, 2, 20)
        assert found["pool_mode"] == "transaction" and srv["needed"] == 8
        # 3 hosts x 2 workers x 2 x 2 (SIGHUP) = 24 clients > max_client_conn 20; the server still fits.
        proc = _run("-c", str(conf), "--hosts", "3", cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout
        assert f"PgBouncer {bouncer.host}:{bouncer.port}: peak 24 clients > max_client_conn 20" in proc.stdout
        assert bouncer.users["postgres"] not in proc.stdout
