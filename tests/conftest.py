"""Fixtures: real MySQL/MariaDB, PostgreSQL and Redis servers, dedicated logins, gunicorn servers.

Servers come from GP_MYSQL_*, GP_PG_* and GP_REDIS_* (defaults: MariaDB at
127.0.0.1:3306 as root with an empty password, database test; PostgreSQL at
127.0.0.1:5432 as postgres, database test; Redis at 127.0.0.1:6379). When a
server cannot be reached its tests skip with the reason, unless
GP_REQUIRE_SERVERS=1 (set by .ci/run), where they fail instead.

Every test that needs no server gets the ``unit`` marker: ``pytest -m unit``
is the fast layer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from backends import BACKENDS, Backend, with_driver
from proxy import FaultProxy
from servers import _mariadb_pair_session, mariadb_pair, mariadb_tls, pg_scram, pgbouncer  # noqa: F401
from support import (
    PG_HOST,
    PG_PORT,
    Gunicorn,
    MySQLdbUser,
    MySQLUser,
    PG2User,
    PGUser,
    RedisClients,
    admin_connect,
    mysql_reachable,
    pg_reachable,
    redis_reachable,
)

_SERVER_MARKERS = ("mysql", "postgresql", "redis")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        if not any(item.get_closest_marker(m) for m in _SERVER_MARKERS):
            item.add_marker(pytest.mark.unit)


def _require(what: str, reason: Optional[str], variables: str) -> None:
    if reason is None:
        return
    if os.environ.get("GP_REQUIRE_SERVERS") == "1" or os.environ.get("GP_REQUIRE_MYSQL") == "1":
        pytest.fail(f"{what} test server unreachable and GP_REQUIRE_SERVERS=1: {reason}")
    pytest.skip(f"no {what} test server reachable ({reason}); set {variables} to point at one")


@pytest.fixture(scope="session")
def mysql_server() -> None:
    _require("MySQL", mysql_reachable(), "GP_MYSQL_*")


@pytest.fixture(scope="session")
def postgresql_server() -> None:
    _require("PostgreSQL", pg_reachable(), "GP_PG_*")


@pytest.fixture(scope="session")
def redis_server() -> None:
    _require("Redis", redis_reachable(), "GP_REDIS_*")


def _fresh_login(cls: Any) -> Iterator[Any]:
    """A new login of *cls* (MySQLUser, PGUser...) with a random name and password, dropped after."""
    user = cls(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    try:
        yield user
    finally:
        user.drop()


@pytest.fixture
def pg_user(postgresql_server: None) -> Iterator[PGUser]:
    """A fresh PostgreSQL login with a random password; its sessions terminated and the role dropped after."""
    yield from _fresh_login(PGUser)


@pytest.fixture
def pg2_user(postgresql_server: None) -> Iterator[PG2User]:
    """A fresh PostgreSQL login whose pool configs and URLs use the psycopg2 driver (as ``pg_user``)."""
    yield from _fresh_login(PG2User)


@pytest.fixture
def redis_clients(redis_server: None) -> Iterator[RedisClients]:
    """A unique Redis client name for this test's pools; its connections killed after."""
    clients = RedisClients(f"gp_{secrets.token_hex(4)}")
    try:
        yield clients
    finally:
        clients.close()


@pytest.fixture
def mysql_user(mysql_server: None) -> Iterator[MySQLUser]:
    """A fresh login with a random password; dropped (and its sessions killed) after."""
    yield from _fresh_login(MySQLUser)


@pytest.fixture
def mysqlclient_user(mysql_server: None) -> Iterator[MySQLUser]:
    """``mysql_user`` whose ``config()`` and ``url()`` name the mysqlclient driver."""
    yield from _fresh_login(MySQLdbUser)


@pytest.fixture(params=[pytest.param(b.name, marks=getattr(pytest.mark, b.adapter)) for b in BACKENDS.values()])
def backend(request: Any) -> Backend:
    """Each database server and driver in turn (tests/backends.py): the test id names it, the marker
    is its server's."""
    return BACKENDS[request.param]


_LOGINS = {"mysql": "mysql_user", "mysqlclient": "mysqlclient_user", "postgresql": "pg_user", "psycopg2": "pg2_user"}


@pytest.fixture
def db_user(backend: Backend, request: Any) -> Any:
    """A fresh login of the *backend* server (``mysql_user``, ``mysqlclient_user``, ``pg_user`` or ``pg2_user``)."""
    return request.getfixturevalue(_LOGINS[backend.name])


@pytest.fixture
def db_proxy(backend: Backend, request: Any) -> FaultProxy:
    """A fault proxy in front of the *backend* server (``tcp_proxy`` or ``pg_proxy``)."""
    return request.getfixturevalue({"mysql": "tcp_proxy", "postgresql": "pg_proxy"}[backend.adapter])


@pytest.fixture
def checked_login(backend: Backend, request: Any) -> Any:
    """A login of the *backend* server on a server that checks passwords: the machine's MariaDB
    does; the machine's PostgreSQL trusts every login, so the throwaway ``pg_scram`` server."""
    if backend.adapter == "mysql":
        return request.getfixturevalue(_LOGINS[backend.name])
    login = request.getfixturevalue("pg_scram").create_user(f"gp_{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8))
    return with_driver(login, backend.driver)


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
def pg_proxy(postgresql_server: None) -> Iterator[FaultProxy]:
    """A controllable TCP proxy to the test PostgreSQL server; stopped and joined after the test."""
    proxy = FaultProxy(target=(PG_HOST, PG_PORT)).start()
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
            cur.execute("SET SESSION lock_wait_timeout = 10")  # a lock a failed test left cannot hang teardown
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        admin.close()
