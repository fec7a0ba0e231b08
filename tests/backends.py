"""The database servers the shared gunicorn and fault tests run against: MySQL and PostgreSQL.

A test that checks the same behaviour on both asks for the ``backend``
fixture (tests/conftest.py): it runs once per server and driver, its id names
them (``test_x[mysql]``, ``test_x[mysqlclient]``: MySQL through mysqlclient,
``test_x[postgresql]``) and it carries that server's marker. ``db_user`` is then a fresh login of that server
(support.MySQLUser or support.PGUser: ``url()``, ``config()``,
``session_ids()``, ``count()``, ``kill_all()``), ``db_proxy`` a
tests/proxy.py TCP proxy in front of it. What differs between the servers is
written down here, once.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from support import wait_until


@dataclass(frozen=True)
class Backend:
    """What a shared test needs to know about one database server."""

    name: str  # the test id
    app: str  # gunicorn app of the fault tests: /conn and /q/<pool> answer a session id
    preload_app: str  # the app that queries at import (``--preload``); /master answers the master's session
    session: str  # JSON key of the session id in the apps' answers (CONNECTION_ID() / pg_backend_pid())
    kill: str  # how the server ends a session (docstrings, messages)
    auth_error: str  # the server's words for a wrong password, as they reach the log
    timed_out: str  # what the log says when connect_timeout expires ({timeout:g} is filled in)
    # Seconds for a respawned worker to serve again after the server returns: PostgreSQL's is longer,
    # each new worker imports psycopg itself (0.35 s on this machine; never imported in the master).
    heal_limit: float
    figure: str  # prefix of the FIGURE lines
    refused: str = "Connection refused"  # what the log says when the server refuses connects
    adapter: str = ""  # the server's marker and the adapter in the pools' dsn (the name, unless given)
    blocking: bool = False  # a C driver that gevent workers refuse
    driver: str = ""  # the pool's ``driver`` key for a login of tests/servers.py (checked_login), if not the default

    def __post_init__(self) -> None:
        if not self.adapter:
            object.__setattr__(self, "adapter", self.name)

    def __str__(self) -> str:
        return self.name


MYSQL = Backend(name="mysql", app="faults_app:app", preload_app="preload_app:app", session="conn_id",
                kill="KILL CONNECTION", auth_error="Access denied for user", timed_out="timed out",
                heal_limit=5.0, figure="")  # fmt: skip
#: MySQL through mysqlclient (driver=mysqlclient). Connect errors are in the words of MariaDB's client
#: library: a refused connect is error 2002 (with an errno of 115, EINPROGRESS: the library's own
#: non-blocking connect), a silent server error 2013 at the handshake.
MYSQLCLIENT = Backend(name="mysqlclient", app="faults_app:app", preload_app="preload_app:app", session="conn_id",
                      kill="KILL CONNECTION", auth_error="Access denied for user",
                      timed_out="reading initial communication packet", heal_limit=5.0, figure="mysqlclient ",
                      refused="Can't connect to server", adapter="mysql", blocking=True)  # fmt: skip
POSTGRESQL = Backend(name="postgresql", app="pg_app:app", preload_app="pg_preload_app:app", session="backend_pid",
                     kill="pg_terminate_backend()", auth_error="password authentication failed",
                     timed_out="timed out after {timeout:g}s", heal_limit=10.0, figure="pg ")  # fmt: skip
#: PostgreSQL through psycopg2 (driver=psycopg2): imported in the master even for gevent workers (it
#: picks no wait function at import), so a respawned worker heals without importing it.
PSYCOPG2 = Backend(name="psycopg2", app="pg2_app:app", preload_app="pg2_preload_app:app", session="backend_pid",
                   kill="pg_terminate_backend()", auth_error="password authentication failed",
                   timed_out="timed out after {timeout:g}s", heal_limit=10.0, figure="pg2 ", adapter="postgresql",
                   driver="psycopg2")  # fmt: skip
BACKENDS = {b.name: b for b in (MYSQL, MYSQLCLIENT, POSTGRESQL, PSYCOPG2)}


class _WithDriver:
    """A login (tests/servers.py) whose configs and URLs name the pool's driver."""

    def __init__(self, login: Any, driver: str) -> None:
        self._login = login
        self._driver = driver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._login, name)

    def config(self, **extra: Any) -> Any:
        return self._login.config(driver=self._driver, **extra)

    def url(self, **query: Any) -> Any:
        return self._login.url(driver=self._driver, **query)


def with_driver(login: Any, driver: str) -> Any:
    """*login* as it is, or with ``driver`` in its configs and URLs when *driver* is set."""
    return _WithDriver(login, driver) if driver else login


def check_one_session_per_worker(server: Any, login: Any, backend: Backend, workers: int) -> None:
    """Start *server* and check: exactly W sessions of *login* before any request, every request
    on its worker's own session opened at boot, none left after SIGTERM, closed by the workers."""
    server.start(workers_ready=workers)
    assert wait_until(lambda: login.count() == workers, 10, what="W sessions") is True
    assert len(server.worker_pids()) == workers
    before = set(login.session_ids())
    seen: dict[int, set[int]] = {}
    for _ in range(60):
        status, body = server.get("/conn")
        assert status == 200, body
        seen.setdefault(body["pid"], set()).add(body[backend.session])
    assert all(len(ids) == 1 for ids in seen.values()), seen  # each worker on its own session
    used = [next(iter(ids)) for ids in seen.values()]
    assert len(set(used)) == len(used), "two workers shared a session"
    assert set(used) <= before, "a request opened a session the boot did not"
    assert login.count() == workers
    code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()[-2000:]
    assert wait_until(lambda: login.count() == 0, 5, what="0 sessions after SIGTERM") is True
    log = server.log()
    assert login.password not in log
    assert log.count("opened 1 connection(s)") == workers
    assert f"{backend.adapter}://{login.name}:***@" in log
