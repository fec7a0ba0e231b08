"""Read replicas: ``connection(name, readonly=True)`` on a replica's own sub-pool, the fall back to
the primary, and the return to a replica that came back.

Against the throwaway MariaDB primary/replica pair of tests/servers.py
(replication running; the replica is stopped and started again by pid), and
for PostgreSQL the machine's server with its "replica" behind a TCP proxy
that the test refuses and restores (tests/proxy.py). Sessions are counted per
server in PROCESSLIST / pg_stat_activity for a login of the test's own.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import pytest
import servers
from proxy import FaultProxy
from support import PG_HOST, PG_PORT, figure, pool_conf, wait_until

from gunicorn_pool import ConfigError, DatabasePool, LeaseError, parse_config
from gunicorn_pool.replicas import ReplicaSet

mariadb_pair = servers.mariadb_pair


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def sessions(server: servers.MariaDBServer, user: str) -> int:
    rows = server.query("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
    return int(rows[0]["n"])


@pytest.fixture
def pair_login(mariadb_pair):
    """A login of this test on both servers, and a table with one row, replicated."""
    name = f"gp_{secrets.token_hex(4)}"
    primary, replica = mariadb_pair.create_user(name, "pw-" + secrets.token_hex(8))
    table = f"t_{secrets.token_hex(4)}"
    mariadb_pair.primary.query(f"CREATE TABLE test.{table} (id INT PRIMARY KEY)")
    mariadb_pair.primary.query(f"INSERT INTO test.{table} VALUES (1)")
    mariadb_pair.wait_caught_up()
    return primary, replica, table


def replica_config(primary: Any, replica: Any, **extra: Any) -> dict[str, Any]:
    """The primary's dict with one replica: a dict overriding the port only."""
    return primary.config(replicas=[{"port": replica.port}], connect_timeout=1, **extra)


# -- config ------------------------------------------------------------------------------------------


def test_replicas_override_the_primary_keys_and_get_names_of_their_own():
    replicas = ["mysql://ro:other@db2/shop", {"host": "db3", "max_size": 2}]
    cfg = parse_config("default", {"host": "db1", "port": 3307, "user": "app", "password": "s3cret", "max_size": 4,
                                   "replicas": replicas})  # fmt: skip
    one_, two = cfg.replicas
    assert (one_.pool_name, one_.primary, one_.host, one_.port, one_.user, one_.password, one_.max_size) == (
        "default.replica1", "default", "db2", 3306, "ro", "other", 4)  # fmt: skip
    assert (two.pool_name, two.host, two.port, two.user, two.password, two.max_size) == (
        "default.replica2", "db3", 3307, "app", "s3cret", 2)  # fmt: skip
    db = DatabasePool({"default": cfg})
    assert sorted(db.configs) == ["default", "default.replica1", "default.replica2"]
    strict = parse_config("p", {"host": "a", "strict": True, "replicas": [{"host": "b"}, {"host": "c", "strict": 1}]})
    assert [r.strict for r in strict.replicas] == [False, True]  # a down replica never stops the first boot
    assert "s3cret" not in repr(db) and "other" not in repr(db)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"host": "a", "replicas": "mysql://b/x"}, "non-empty list"),
        ({"host": "a", "replicas": []}, "non-empty list"),
        ({"host": "a", "replicas": ["postgresql://b/x"]}, "primary's adapter"),
        ({"host": "a", "replicas": [{"host": "b", "replicas": [{"host": "c"}]}]}, "no replicas of its own"),
        ({"host": "a", "replicas": [{"host": "b", "max_sise": 1}]}, "'default.replica1': unknown option"),
        ({"adapter": "sqlite", "database": ":memory:", "replicas": [{}]}, "mysql and postgresql"),
    ],
)
def test_bad_replicas_name_the_pool(config, message):
    with pytest.raises(ConfigError, match=message):
        DatabasePool({"default": config})


def test_a_replica_name_taken_by_another_pool_is_refused():
    with pytest.raises(ConfigError, match="taken by another pool"):
        DatabasePool({"default": {"host": "a", "replicas": [{"host": "b"}]}, "default.replica1": {"host": "c"}})


# -- MariaDB: a real replica ------------------------------------------------------------------------------


@pytest.mark.mysql
def test_readonly_leases_go_to_the_replica_and_see_replicated_rows_writes_to_the_primary(mariadb_pair, pair_login):
    primary, replica, table = pair_login
    db = DatabasePool({"default": replica_config(primary, replica, min_size=2, max_size=3)}, name="rep")
    db.init_pool()  # the replica's sub-pool opens at boot with the primary's
    assert sessions(mariadb_pair.primary, primary.name) == 2 and sessions(mariadb_pair.replica, primary.name) == 2
    with db.connection("default", readonly=True) as conn:
        assert one(conn, "SELECT @@server_id") == 2
        assert one(conn, f"SELECT COUNT(*) FROM {table}") == 1
    with db.connection("default") as conn:
        assert one(conn, "SELECT @@server_id") == 1
        conn.cursor().execute(f"INSERT INTO {table} VALUES (2)")
    mariadb_pair.wait_caught_up()
    conn = db.getconn("default", readonly=True)
    assert one(conn, f"SELECT COUNT(*) FROM {table}") == 2 and one(conn, "SELECT @@server_id") == 2
    db.putconn(conn)
    with pytest.raises(LeaseError):
        db.putconn(conn)
    stats = db.stats()
    assert stats["default"]["replica_fallbacks"] == 0
    assert stats["default.replica1"]["requests_num"] == 2 and stats["default"]["requests_num"] == 1
    db.close_pool()
    wait_until(lambda: sessions(mariadb_pair.replica, primary.name) == 0, 10, what="replica sessions closed")


@pytest.mark.mysql
@pytest.mark.timeout(120)
def test_a_stopped_replica_sends_reads_to_the_primary_then_they_come_back(mariadb_pair, pair_login, caplog):
    caplog.set_level(logging.INFO, logger="gunicorn_pool")
    primary, replica, table = pair_login
    db = DatabasePool({"default": replica_config(primary, replica, min_size=1, max_size=2)}, name="rep")
    db.init_pool()
    with db.connection(readonly=True) as conn:
        assert one(conn, "SELECT @@server_id") == 2
    mariadb_pair.stop_replica()
    start = time.monotonic()
    served = [db.connection(readonly=True) for _ in range(20)]
    ids = []
    for lease in served:
        with lease as conn:
            ids.append(one(conn, "SELECT @@server_id"))
    assert ids == [1] * 20  # every read served, by the primary
    figure("replica stopped: 20 reads on the primary", time.monotonic() - start)
    fallbacks = db.stats()["default"]["replica_fallbacks"]
    assert fallbacks == 20
    assert caplog.text.count("no replica reachable") == 1  # logged once
    mariadb_pair.start_replica()
    start = time.monotonic()

    def back() -> bool:
        with db.connection(readonly=True) as conn:
            return bool(one(conn, "SELECT @@server_id") == 2)

    wait_until(back, ReplicaSet.RECHECK_MAX + 5, interval=0.1, what="reads back on the replica")
    figure("replica restarted: reads back on it after", time.monotonic() - start)
    with db.connection(readonly=True) as conn:
        assert one(conn, "SELECT @@server_id") == 2
    assert "read-only leases go to replicas again" in caplog.text
    db.close_pool()


@pytest.mark.mysql
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sync", "gthread", "gevent"])
def test_gunicorn_reads_on_the_replica_a_stopped_replica_costs_no_failed_request(mariadb_pair, pair_login,
                                                                                 gunicorn, kind):  # fmt: skip
    primary, replica, table = pair_login
    workers = 2
    config = replica_config(primary, replica, min_size=1, max_size=2)
    server = gunicorn(pool_conf({"default": config}, kind=kind, workers=workers))
    server.start(workers_ready=workers)
    wait_until(lambda: sessions(mariadb_pair.replica, primary.name) == workers, 10, what="a replica session a worker")
    assert sessions(mariadb_pair.primary, primary.name) == workers
    results = [server.get(f"/ro/{table}") for _ in range(20)]
    assert {(status, body["server_id"], body["rows"]) for status, body in results} == {(200, 2, 1)}
    mariadb_pair.stop_replica()
    results = [server.get(f"/ro/{table}") for _ in range(20)]
    assert {(status, body["server_id"], body["rows"]) for status, body in results} == {(200, 1, 1)}, results[:3]
    fell_back = {body["pid"] for _, body in results}  # the workers that served reads meanwhile
    mariadb_pair.start_replica()
    start = time.monotonic()
    deadline = start + ReplicaSet.RECHECK_MAX + 10
    seen: set[int] = set()
    while len(seen) < workers:  # every worker back on the replica
        status, body = server.get(f"/ro/{table}")
        assert status == 200, body
        if body["server_id"] == 2:
            seen.add(body["pid"])
        assert time.monotonic() < deadline, "reads never came back to the replica"
        time.sleep(0.05)
    figure(f"gunicorn {kind}: reads back on the restarted replica after", time.monotonic() - start)
    assert server.log().count("no replica reachable") == len(fell_back)  # once per worker that fell back
    assert server.stop() == 0


# -- PostgreSQL: the "replica" behind a proxy ----------------------------------------------------


@pytest.mark.postgresql
def test_postgresql_replica_behind_a_proxy_falls_back_and_returns(pg_user):
    with FaultProxy(target=(PG_HOST, PG_PORT)) as proxy:
        config = pg_user.config(replicas=[{"port": proxy.port}], connect_timeout=1, min_size=1, max_size=2)
        db = DatabasePool({"default": config}, name="pgrep")
        db.init_pool()

        with db.connection(readonly=True) as conn:
            assert conn.pgconn.port == str(proxy.port).encode()
        with db.connection() as conn:
            assert conn.pgconn.port == str(PG_PORT).encode()
        proxy.refuse()
        proxy.cut()
        for _ in range(5):
            with db.connection(readonly=True) as conn:
                assert conn.pgconn.port == str(PG_PORT).encode()
        assert db.stats()["default"]["replica_fallbacks"] == 5
        proxy.forward()

        def back() -> bool:
            with db.connection(readonly=True) as conn:
                return bool(conn.pgconn.port == str(proxy.port).encode())

        wait_until(back, ReplicaSet.RECHECK_MAX + 5, interval=0.1, what="reads back on the replica")
        db.close_pool()
