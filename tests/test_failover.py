"""Failover across hosts: a MySQL/MariaDB pool with several hosts, and PostgreSQL's libpq multi-host.

Against real servers: the throwaway MariaDB primary/replica pair of
tests/servers.py (the replica runs ``read_only``), the machine's MariaDB and
PostgreSQL, a closed port (refused) and a TCP proxy that accepts and never
answers (tests/proxy.py ``blackhole``). The primary is SIGKILLed by pid.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest
import servers
from proxy import FaultProxy
from support import (
    MYSQL_PORT,
    PG_DB,
    PG_HOST,
    PG_PORT,
    QUERY_BOUND,
    bound_psycopg_waits,
    figure,
    free_port,
    pool_conf,
    wait_until,
)

from gunicorn_pool import ConfigError, ConnectError, DatabasePool, parse_config
from gunicorn_pool.connectors.mysql import HostOrder

mariadb_pair = servers.mariadb_pair


@pytest.fixture(autouse=True)
def _bounded_queries(monkeypatch: Any) -> None:
    """A PostgreSQL query of a test here fails after QUERY_BOUND if its answer never comes (MySQL
    pools get read_timeout=QUERY_BOUND in their configs)."""
    bound_psycopg_waits(monkeypatch)


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def hosts_url(login: Any, *ports: int, **query: Any) -> str:
    """*login*'s URL with one ``127.0.0.1:port`` host per port (each read bounded by QUERY_BOUND)."""
    query.setdefault("read_timeout", QUERY_BOUND)
    q = "&".join(f"{k}={v}" for k, v in query.items())
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    database = getattr(login, "database", "test")
    return f"mysql://{login.name}:{login.password}@{hosts}/{database}" + (f"?{q}" if q else "")


# -- config ------------------------------------------------------------------------------------------


def test_a_url_and_a_dict_list_several_hosts_each_with_its_port():
    cfg = parse_config("shop", "mysql://u:s3cret@db1:3306,db2:3307,[::1]/shop?target_session_attrs=read-write")
    assert cfg.hosts == (("db1", 3306), ("db2", 3307), ("::1", 3306))
    assert (cfg.host, cfg.port, cfg.target_session_attrs) == ("db1", 3306, "read-write")
    assert cfg.dsn == "mysql://u:***@db1:3306,db2:3307,[::1]:3306/shop" and "s3cret" not in repr(cfg)
    cfg = parse_config("shop", {"host": ["db1", "db2:3307"], "port": 3310, "load_balance_hosts": "random"})
    assert (cfg.hosts, cfg.load_balance_hosts) == ((("db1", 3310), ("db2", 3307)), "random")
    assert parse_config("one", {"host": "::1"}).hosts == (("::1", 3306),)  # one host: as given
    assert parse_config("alias", {"hosts": ["a", "b:1"]}).hosts == (("a", 3306), ("b", 1))
    pg = parse_config("pg", "postgresql://u@h1,h2:5433/d?target_session_attrs=standby")
    assert pg.hosts == (("h1", 5432), ("h2", 5433)) and pg.address == "h1:5432,h2:5433"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"host": []}, "non-empty list"),
        ({"host": ["a", 3]}, "non-empty list"),
        ({"host": "a,,b"}, "empty host"),
        ({"host": "a:99999,b"}, "bad port"),
        ({"host": "a,b", "target_session_attrs": "standby"}, "for MySQL/MariaDB"),
        ({"host": "a,b", "load_balance_hosts": "first"}, "load_balance_hosts"),
    ],
)
def test_bad_host_lists_name_the_pool(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config("shop", dict(value, password="s3cret"))
    assert "'shop'" in str(info.value) and "s3cret" not in str(info.value)


def test_host_order_tries_a_failed_host_last_until_its_backoff_ends():
    order = HostOrder((("a", 1), ("b", 2), ("c", 3)))
    assert order.order() == [("a", 1), ("b", 2), ("c", 3)]
    order.failed(("a", 1))
    assert order.order() == [("b", 2), ("c", 3), ("a", 1)]
    order.failed(("b", 2))
    order.failed(("b", 2))  # 2 s: a's 1 s ends first
    assert order.order() == [("c", 3), ("a", 1), ("b", 2)]
    order.worked(("a", 1))
    assert order.order() == [("a", 1), ("c", 3), ("b", 2)]
    assert {tuple(HostOrder(order.hosts, shuffle=True).order()) for _ in range(60)} != {tuple(order.hosts)}


# -- MySQL/MariaDB -----------------------------------------------------------------------------------


@pytest.mark.mysql
def test_a_dead_first_host_is_skipped_and_costs_one_connect_timeout(mysql_user):
    """First host: a proxy that accepts and never answers; second: the real server. The first
    connect waits connect_timeout once, the next ones go straight to the second host."""
    timeout = 1.0
    with FaultProxy() as proxy:
        proxy.blackhole()
        db = DatabasePool({"default": {**mysql_user.config(), "host": [f"127.0.0.1:{proxy.port}",
                                                                      f"127.0.0.1:{mysql_user.config()['port']}"],
                                       "connect_timeout": timeout, "min_size": 0, "max_size": 4,
                                       "read_timeout": QUERY_BOUND}},
                          name="failover")  # fmt: skip
        pool = db.pool()
        took = []
        conns = []
        for _ in range(4):
            start = time.monotonic()
            conns.append(pool.getconn())
            took.append(time.monotonic() - start)
        assert timeout * 0.9 <= took[0] < timeout + 1.0, took
        assert all(t < 0.5 for t in took[1:]), took
        assert all(one(c, "SELECT 1") == 1 for c in conns)
        for conn in conns:
            pool.putconn(conn)
        figure("failover: first connect past a blackholed host", took[0])
        figure("failover: later connects", max(took[1:]))
        db.close_pool()


@pytest.mark.mysql
def test_every_host_down_names_the_pool_and_each_host_never_the_password(mysql_user):
    dead1, dead2 = free_port(), free_port()
    db = DatabasePool({"shop": hosts_url(mysql_user, dead1, dead2, connect_timeout=1)}, name="down")
    with pytest.raises(ConnectError) as info:
        db.pool("shop").getconn()
    text = str(info.value)
    assert "'shop'" in text and f"127.0.0.1:{dead1}" in text and f"127.0.0.1:{dead2}" in text, text
    assert "2 tried" in text and mysql_user.password not in text
    db.close_pool()


@pytest.mark.mysql
def test_read_write_skips_the_read_only_replica_and_any_takes_it(mariadb_pair):
    primary, replica = mariadb_pair.primary, mariadb_pair.replica
    login = mariadb_pair.create_user("gp_failover", "pw-failover")[0]
    cases = {"read-write": primary, "any": replica}
    for target, expected in cases.items():
        db = DatabasePool({"default": hosts_url(login, replica.port, primary.port, target_session_attrs=target)},
                          name="role")  # fmt: skip
        with db.connection() as conn:
            assert one(conn, "SELECT @@server_id") == int(expected.variable("server_id")), target
        db.close_pool()
    db = DatabasePool({"default": hosts_url(login, primary.port, replica.port, target_session_attrs="read-only")},
                      name="role")  # fmt: skip
    with db.connection() as conn:
        assert one(conn, "SELECT @@server_id") == int(replica.variable("server_id"))
    db.close_pool()
    # Only the replica, read-write asked: the error says why.
    db = DatabasePool({"default": hosts_url(login, replica.port, target_session_attrs="read-write")}, name="ro")
    with pytest.raises(ConnectError, match=r"read-only \(target_session_attrs=read-write\)"):
        db.pool().getconn()
    db.close_pool()


@pytest.mark.mysql
@pytest.mark.timeout(120)
def test_primary_sigkilled_new_connects_go_to_the_next_host(mariadb_pair):
    primary, replica = mariadb_pair.primary, mariadb_pair.replica
    login = mariadb_pair.create_user("gp_failover", "pw-failover")[0]
    db = DatabasePool({"default": hosts_url(login, primary.port, replica.port, connect_timeout=1, max_size=2)},
                      name="kill")  # fmt: skip
    pool = db.pool()
    with pool.connection() as conn:
        assert one(conn, "SELECT @@server_id") == 1
    pid = primary.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not primary.alive(), 10, what="primary gone")
    start = time.monotonic()
    with pool.connection() as conn:  # the pooled one is dead: dropped, a new one opened
        assert one(conn, "SELECT @@server_id") == 2
    figure("failover: first connection after the primary was SIGKILLed", time.monotonic() - start)
    assert time.monotonic() - start < 2.0
    assert pool.stats()["connections_num"] == 2
    db.close_pool()
    primary.start()  # the fixture would too; restarted here so the pair is whole for the next test


@pytest.mark.mysql
def test_random_order_spreads_connects_over_the_hosts(mariadb_pair):
    primary, replica = mariadb_pair.primary, mariadb_pair.replica
    login = mariadb_pair.create_user("gp_failover", "pw-failover")[0]
    url = hosts_url(login, primary.port, replica.port, load_balance_hosts="random", max_size=20, min_size=0)
    db = DatabasePool({"default": url}, name="random")
    pool = db.pool()
    conns = [pool.getconn() for _ in range(20)]
    seen = {one(c, "SELECT @@server_id") for c in conns}
    for conn in conns:
        pool.putconn(conn)
    assert seen == {1, 2}
    db.close_pool()


# -- PostgreSQL: libpq's multi-host, passed through --------------------------------------------------


@pytest.mark.postgresql
def test_postgresql_multi_host_url_first_host_dead_second_real(pg_user):
    dead = free_port()
    url = (f"postgresql://{pg_user.name}:{pg_user.password}@127.0.0.1:{dead},{PG_HOST}:{PG_PORT}/{PG_DB}"
           "?connect_timeout=2")  # fmt: skip
    db = DatabasePool({"default": url}, name="pgmulti")
    with db.connection() as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (PG_PORT,)
    db.close_pool()
    db = DatabasePool({"default": {**pg_user.config(), "host": [f"127.0.0.1:{dead}", f"127.0.0.1:{free_port()}"],
                                   "connect_timeout": 1}}, name="pgdown")  # fmt: skip
    with pytest.raises(ConnectError, match=rf"'default'.*2 tried: 127\.0\.0\.1:{dead}: .*; 127\.0\.0\.1:") as info:
        db.pool().getconn()
    assert pg_user.password not in str(info.value)
    db.close_pool()




@pytest.mark.mysql
@pytest.mark.timeout(60)
def test_gunicorn_workers_pay_one_connect_timeout_for_a_blackholed_first_host(mysql_user, gunicorn):
    """Each worker's boot connect waits connect_timeout once on the first host (accepts, never
    answers), then lands on the second; every request after that is served without waiting."""
    workers, timeout = 2, 1.0
    with FaultProxy() as proxy:
        proxy.blackhole()
        config = {**mysql_user.config(), "host": [f"127.0.0.1:{proxy.port}", f"127.0.0.1:{MYSQL_PORT}"],
                  "connect_timeout": timeout, "min_size": 1, "max_size": 2}  # fmt: skip
        server = gunicorn(pool_conf({"default": config}, workers=workers, extra="max_requests = 0"))
        server.start(workers_ready=workers)
        boots = [float(ms) for ms in re.findall(r"opened 1 connection\(s\) in ([\d.]+) ms", server.log())]
        assert len(boots) == workers and all(timeout * 900 <= ms < timeout * 1000 + 800 for ms in boots), boots
        for _ in range(20):
            start = time.monotonic()
            status, body = server.get("/conn")
            assert status == 200 and time.monotonic() - start < timeout * 0.9, body  # never the first host
        assert mysql_user.password not in server.log()
        figure("gunicorn failover: a worker's boot past a blackholed first host", max(boots) / 1000)
        assert server.stop() == 0


@pytest.mark.postgresql
def test_postgresql_load_balance_hosts_random_spreads_connects(pg_user, pg_proxy):
    """Two hosts (the server directly, and through a proxy): psycopg shuffles libpq's attempts."""
    config = {**pg_user.config(), "host": [f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{pg_proxy.port}"],
              "load_balance_hosts": "random", "min_size": 0, "max_size": 20}  # fmt: skip
    db = DatabasePool({"default": config}, name="pgrandom")
    pool = db.pool()
    conns = [pool.getconn() for _ in range(20)]
    ports = {int(conn.pgconn.port) for conn in conns}
    for conn in conns:
        pool.putconn(conn)
    assert ports == {PG_PORT, pg_proxy.port}
    db.close_pool()
