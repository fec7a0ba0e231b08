"""Fixtures: a real MySQL/MariaDB server, dedicated logins, gunicorn servers.

The server is taken from GP_MYSQL_HOST/PORT/USER/PASSWORD/DB (default
127.0.0.1:3306, root, empty password, database test). When it cannot be
reached the MySQL tests skip with the reason, unless GP_REQUIRE_MYSQL=1
(set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from proxy import FaultProxy
from support import Gunicorn, MySQLUser, admin_connect, mysql_reachable


@pytest.fixture(scope="session")
def mysql_server() -> None:
    reason = mysql_reachable()
    if reason is None:
        return
    if os.environ.get("GP_REQUIRE_MYSQL") == "1":
        pytest.fail(f"MySQL test server unreachable and GP_REQUIRE_MYSQL=1: {reason}")
    pytest.skip(f"no MySQL test server reachable ({reason}); set GP_MYSQL_* to point at one")


@pytest.fixture
def mysql_user(mysql_server: None) -> Iterator[MySQLUser]:
    """A fresh login with a random password; dropped (and its sessions killed) after."""
    user = MySQLUser(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    try:
        yield user
    finally:
        user.drop()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Factory for real gunicorn servers; every one is stopped by pid after the test."""
    servers: list[Gunicorn] = []

    def make(conf: str, *args: str, **kw: Any) -> Gunicorn:
        server = Gunicorn(tmp_path, conf, *args, **kw)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def tcp_proxy(mysql_server: None) -> Iterator[FaultProxy]:
    """A controllable TCP proxy to the test server (tests/proxy.py); stopped and joined after the test."""
    proxy = FaultProxy().start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def scratch_table(mysql_server: None) -> Iterator[str]:
    """A fresh InnoDB table ``(id AUTO_INCREMENT, v INT)`` with a random name, dropped after."""
    name = f"gp_t_{secrets.token_hex(4)}"
    admin = admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        admin.close()
