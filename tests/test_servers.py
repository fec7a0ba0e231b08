"""The throwaway servers of tests/servers.py do what the tests that use them rely on.

TLS really negotiated, real password checks, replication that replicates and
a replica that is read-only and can go away and come back, PgBouncer relaying
in transaction mode, and no process left behind. Boot times are printed as
``FIGURE ...`` lines (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pymysql
import pytest
import servers
from servers import MariaDBReplicaPair, MariaDBServer, PgBouncer, PostgresServer
from support import wait_until

TESTS = Path(__file__).resolve().parent


def figure(name: str, value: float, unit: str = "s") -> None:
    print(f"FIGURE {name}: {value:.2f} {unit}")


def pid_gone(pid: int) -> bool:
    """True once *pid* no longer names a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def user_name() -> str:
    return f"gp_{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- MariaDB with TLS


@pytest.mark.mysql
def test_mariadb_tls_offers_and_negotiates_tls(mariadb_tls: MariaDBServer) -> None:
    figure("mariadb-install-db (template, once per process)", servers.MARIADB_TEMPLATE_SECONDS or 0)
    figure("mariadb datadir copy + TLS files", mariadb_tls.install_seconds or 0)
    figure("mariadb boot", mariadb_tls.boot_seconds or 0)
    assert mariadb_tls.variable("have_ssl") == "YES"
    assert mariadb_tls.tls is not None
    login = mariadb_tls.create_user(user_name(), "pw-" + secrets.token_hex(8))
    conn = mariadb_tls.connect(login.name, login.password, "test", ssl_ca=str(mariadb_tls.tls.ca),
                               ssl_verify_cert=True, ssl_verify_identity=True)  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            row = cur.fetchone()
            assert row is not None and row[1], "the session is not encrypted"
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{login.name}@%"
    finally:
        conn.close()
    plain = mariadb_tls.connect(login.name, login.password, "test")
    try:
        with plain.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cur.fetchone()[1] == "", "ssl_disabled should give a plaintext session"
    finally:
        plain.close()


@pytest.mark.mysql
def test_mariadb_checks_passwords(mariadb_tls: MariaDBServer) -> None:
    login = mariadb_tls.create_user(user_name(), "pw-" + secrets.token_hex(8))
    with pytest.raises(pymysql.err.OperationalError) as info:
        mariadb_tls.connect(login.name, "wrong", "test")
    assert info.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError):
        mariadb_tls.connect("root", "", "test")
    pymysql.connect(**login.config(), ssl_disabled=True, connect_timeout=3).close()  # config() as MySQLUser's


@pytest.mark.mysql
def test_mariadb_runs_a_private_copy_of_the_binary(mariadb_tls: MariaDBServer) -> None:
    """``start-stop-daemon --exec /usr/sbin/mariadbd`` (.ci/run) must not take ours for the machine's server."""
    exe = os.readlink(f"/proc/{mariadb_tls.pid}/exe")
    if mariadb_tls.binary == servers.MARIADBD:
        pytest.skip("temp dir is noexec: the original binary runs")
    assert exe != os.path.realpath(servers.MARIADBD)
    assert Path(exe).parent == Path(mariadb_tls.binary).parent


# --------------------------------------------------------------------------- MariaDB replication


@pytest.mark.mysql
def test_replication_carries_rows_to_the_replica(mariadb_pair: MariaDBReplicaPair) -> None:
    figure("mariadb primary boot", mariadb_pair.primary.boot_seconds or 0)
    figure("mariadb replica boot", mariadb_pair.replica.boot_seconds or 0)
    assert mariadb_pair.replication_running()
    assert mariadb_pair.replica.variable("read_only") == "ON"
    assert mariadb_pair.primary.variable("log_bin") == "ON"
    primary, replica = mariadb_pair.create_user(user_name(), "pw-" + secrets.token_hex(8))
    table = f"t_{secrets.token_hex(4)}"
    conn = mariadb_pair.primary.connect(primary.name, primary.password, "test")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            cur.execute(f"INSERT INTO {table} VALUES (1, 'from primary')")
    finally:
        conn.close()
    mariadb_pair.wait_caught_up()
    conn = mariadb_pair.replica.connect(replica.name, replica.password, "test")
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} WHERE id = 1")
            assert cur.fetchone() == ("from primary",)
    finally:
        conn.close()


@pytest.mark.mysql
def test_replica_is_read_only(mariadb_pair: MariaDBReplicaPair) -> None:
    _, replica = mariadb_pair.create_user(user_name(), "pw-" + secrets.token_hex(8))
    table = f"t_{secrets.token_hex(4)}"
    mariadb_pair.primary.query(f"CREATE TABLE test.{table} (id INT PRIMARY KEY)")
    mariadb_pair.wait_caught_up()
    conn = mariadb_pair.replica.connect(replica.name, replica.password, "test")
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert info.value.args[0] == 1290, info.value  # ER_OPTION_PREVENTS_STATEMENT: --read-only
    finally:
        conn.close()


@pytest.mark.mysql
def test_replica_goes_away_and_comes_back(mariadb_pair: MariaDBReplicaPair) -> None:
    table = f"t_{secrets.token_hex(4)}"
    mariadb_pair.primary.query(f"CREATE TABLE test.{table} (id INT PRIMARY KEY)")
    old_pid = mariadb_pair.replica.pid
    t0 = time.monotonic()
    mariadb_pair.stop_replica()
    figure("mariadb replica stop", time.monotonic() - t0)
    assert pid_gone(old_pid)
    assert not mariadb_pair.replication_running()
    with pytest.raises(pymysql.err.OperationalError):
        mariadb_pair.replica.root_connect(connect_timeout=1)
    mariadb_pair.primary.query(f"INSERT INTO test.{table} VALUES (1), (2)")  # written while the replica is away
    t0 = time.monotonic()
    mariadb_pair.start_replica()
    figure("mariadb replica restart until caught up", time.monotonic() - t0)
    assert mariadb_pair.replica.pid != old_pid
    assert mariadb_pair.replication_running()
    assert mariadb_pair.replica.query(f"SELECT COUNT(*) AS n FROM test.{table}") == [{"n": 2}]


@pytest.mark.mysql
def test_replica_pair_context_manager_under_tmp_path(tmp_path: Path) -> None:
    with servers.mariadb_replica_pair(tmp_path) as pair:
        assert pair.primary.dir.parent == tmp_path and pair.replica.dir.parent == tmp_path
        pids = (pair.primary.pid, pair.replica.pid)
        assert pair.replication_running()
        pair.primary.query("CREATE TABLE test.t (id INT PRIMARY KEY)")
        pair.wait_caught_up()
        assert pair.replica.query("SHOW TABLES FROM test") == [{"Tables_in_test": "t"}]
    assert all(pid_gone(pid) for pid in pids)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- PostgreSQL with SCRAM


@pytest.mark.postgresql
def test_pg_scram_rejects_a_wrong_password(pg_scram: PostgresServer) -> None:
    figure("postgres initdb", pg_scram.initdb_seconds or 0)
    figure("postgres boot", pg_scram.boot_seconds or 0)
    login = pg_scram.create_user(user_name(), "pw-" + secrets.token_hex(8))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg_scram.connect(login.name, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg_scram.connect(pg_scram.superuser, "wrong")
    with psycopg.connect(login.url(), connect_timeout=3) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (login.name, "test")
        conn.execute("CREATE TABLE t_scram (id int)")  # GRANT ALL ON SCHEMA public worked
    with pg_scram.admin_connect() as admin:
        secret = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login.name,)).fetchone()
        assert secret is not None and secret[0].startswith("SCRAM-SHA-256$")
        admin.execute("DROP TABLE t_scram")


# --------------------------------------------------------------------------- PgBouncer


@pytest.mark.postgresql
def test_pgbouncer_relays_in_transaction_mode(pgbouncer: PgBouncer) -> None:
    figure("pgbouncer boot", pgbouncer.boot_seconds or 0)
    with psycopg.connect(pgbouncer.url(), connect_timeout=3, prepare_threshold=None) as conn:
        with conn.transaction():
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
        assert pid is not None
        pools = {row["database"]: row for row in pgbouncer.show("POOLS")}
        assert "test" in pools and pools["test"]["pool_mode"] == "transaction"
        assert [c["user"] for c in pgbouncer.show("CLIENTS") if c["database"] == "test"] == ["postgres"]
        assert len(pgbouncer.show("SERVERS")) == 1
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pgbouncer.url(password="wrong"), connect_timeout=3)


@pytest.mark.postgresql
def test_pgbouncer_in_front_of_a_scram_server(pg_scram: PostgresServer) -> None:
    login = pg_scram.create_user(user_name(), "pw-" + secrets.token_hex(8))
    with PgBouncer(pg_scram.host, pg_scram.port, "test", users={login.name: login.password}) as bouncer:
        with psycopg.connect(bouncer.url(login.name), connect_timeout=3) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (login.name,)
        bouncer.add_user("late", "pw-late")  # reload while running
        assert "late" in bouncer.users
        assert bouncer.show("POOLS")
        port, old_pid = bouncer.port, bouncer.pid
        bouncer.restart()
        assert (bouncer.port, pid_gone(old_pid)) == (port, True)
        with psycopg.connect(bouncer.url(login.name), connect_timeout=3) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- no process left behind


@pytest.mark.postgresql
def test_close_stops_by_pid_and_removes_the_directory() -> None:
    bouncer = PgBouncer().start()
    pid, directory = bouncer.pid, bouncer.dir
    bouncer.close()
    assert pid_gone(pid)
    assert not directory.exists()


@pytest.mark.postgresql
def test_server_dies_with_a_killed_test_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed pytest runs no finally and no atexit: the death signal must take its servers down."""
    script = tmp_path / "orphan.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from servers import PgBouncer
        bouncer = PgBouncer().start()
        print(bouncer.pid, bouncer.dir, flush=True)
        time.sleep(60)
    """))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pid_text, directory = child.stdout.readline().split()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    pid = int(pid_text)
    wait_until(lambda: pid_gone(pid), 10, what=f"orphaned pgbouncer {pid} killed")
    assert Path(directory).is_dir()  # nobody ran its close() or atexit ...
    monkeypatch.setattr(servers, "_swept", False)
    servers._sweep_stale_dirs()  # ... so the next process's first make_dir() removes it
    assert not Path(directory).exists()
