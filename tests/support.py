"""Test support: real gunicorn processes, HTTP calls, MySQL, PostgreSQL and Redis admin helpers.

Every loop here is bounded in count and time; servers are stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pymysql

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

MYSQL_HOST = os.environ.get("GP_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("GP_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("GP_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("GP_MYSQL_PASSWORD", "")
MYSQL_DB = os.environ.get("GP_MYSQL_DB", "test")

PG_HOST = os.environ.get("GP_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("GP_PG_PORT", "5432"))
PG_USER = os.environ.get("GP_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("GP_PG_PASSWORD", "")
PG_DB = os.environ.get("GP_PG_DB", "test")

REDIS_HOST = os.environ.get("GP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("GP_REDIS_PORT", "6379"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll *predicate* until truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


#: Seconds any query of a test's own (admin helpers, and psycopg waits under bound_psycopg_waits())
#: may take: a server or proxy that never answers fails the test in seconds, with a message, not at
#: pytest-timeout's 300 s.
QUERY_BOUND = 20.0


def admin_connect(**kw: Any) -> pymysql.connections.Connection:
    """An autocommit PyMySQL connection as the test server's admin; each read and write is bounded
    by :data:`QUERY_BOUND` (PyMySQL raises OperationalError "timed out")."""
    args = dict(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, database=MYSQL_DB,
                autocommit=True, connect_timeout=3, ssl_disabled=True, read_timeout=QUERY_BOUND,
                write_timeout=QUERY_BOUND)  # fmt: skip
    args.update(kw)
    return pymysql.connect(**args)


def mysql_reachable() -> Optional[str]:
    """None if the test server answers, else the reason it does not."""
    try:
        admin_connect().close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{MYSQL_HOST}:{MYSQL_PORT}: {exc}"


class DBLogin:
    """A dedicated login on a test database server, so a test can count exactly its own sessions.

    MySQLUser and PGUser say how their server makes the login, lists its
    sessions and ends one; the rest (URL, config dict, counting, ending them
    all, dropping the login) is the same for both.
    """

    scheme = ""
    host = ""
    port = 0
    database = ""
    adapter: dict[str, str] = {}  # extra keys of config()
    sessions_sql = ""  # one column: the session ids of the login named by the parameter
    gone: tuple[type[BaseException], ...] = ()  # what kill() raises for a session that ended meanwhile

    def __init__(self, name: str, password: str) -> None:
        self.name = name
        self.password = password
        self.admin = self._admin_connect()
        self._create()

    def _admin_connect(self) -> Any:
        raise NotImplementedError

    def _create(self) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def kill(self, session_id: int) -> None:
        """End one session of the login from the server side."""
        raise NotImplementedError

    def url(self, **query: Any) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        base = f"{self.scheme}://{self.name}:{self.password}@{self.host}:{self.port}/{self.database}"
        return base + (f"?{q}" if q else "")

    def config(self, **extra: Any) -> dict[str, Any]:
        cfg = dict(self.adapter, host=self.host, port=self.port, user=self.name, password=self.password,
                   database=self.database)  # fmt: skip
        cfg.update(extra)
        return cfg

    def session_ids(self) -> list[int]:
        with self.admin.cursor() as cur:
            cur.execute(self.sessions_sql, (self.name,))
            return sorted(r[0] for r in cur.fetchall())

    def count(self) -> int:
        return len(self.session_ids())

    def kill_all(self) -> int:
        """End every session of the login; how many there were."""
        ids = self.session_ids()
        for sid in ids:
            try:
                self.kill(sid)
            except self.gone:
                pass
        return len(ids)

    def drop(self) -> None:
        try:
            self.kill_all()
            wait_until(lambda: self.count() == 0, 10, what=f"sessions of {self.name} gone")
            self._drop()
        finally:
            self.admin.close()


class MySQLUser(DBLogin):
    """A dedicated MySQL login (sessions: information_schema.PROCESSLIST.USER)."""

    scheme = "mysql"
    host, port, database = MYSQL_HOST, MYSQL_PORT, MYSQL_DB
    sessions_sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s"
    gone = (pymysql.err.OperationalError,)

    def _admin_connect(self) -> Any:
        return admin_connect()

    def _create(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{self.name}'@'%'")
            cur.execute(f"CREATE USER '{self.name}'@'%%' IDENTIFIED BY %s", (self.password,))
            cur.execute(f"GRANT ALL ON `{MYSQL_DB}`.* TO '{self.name}'@'%'")

    def _drop(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{self.name}'@'%'")

    def kill(self, session_id: int) -> None:
        """KILL CONNECTION of one session."""
        with self.admin.cursor() as cur:
            cur.execute(f"KILL CONNECTION {int(session_id)}")

    connection_ids = DBLogin.session_ids


class MySQLdbUser(MySQLUser):
    """A :class:`MySQLUser` whose pools use the mysqlclient driver (``config()``, ``url()``)."""

    scheme = "mysql+mysqldb"
    adapter = {"driver": "mysqlclient"}


def pg_admin_connect(**kw: Any) -> Any:
    """An autocommit psycopg connection to the test PostgreSQL server as its admin user; every
    statement is bounded by :data:`QUERY_BOUND` on the server (``statement_timeout``, lock waits
    included), on top of any ``options`` given."""
    import psycopg

    args = dict(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD or None, dbname=PG_DB,
                autocommit=True, connect_timeout=3)  # fmt: skip
    args.update(kw)
    args["options"] = f"{statement_bound()} {args.get('options') or ''}".strip()
    return psycopg.connect(**args)


def statement_bound(seconds: float = QUERY_BOUND) -> str:
    """libpq ``options`` that bound every statement of a session on the server."""
    return f"-c statement_timeout={int(seconds * 1000)}"


def bound_psycopg_waits(monkeypatch: Any, seconds: float = QUERY_BOUND) -> None:
    """Bound, on the client, every psycopg wait of this process that has no timeout of its own: a
    statement whose answer never comes (a stalled proxy, a hung server: no server-side timeout
    can help there) fails after *seconds* with psycopg's OperationalError saying so, instead of
    hanging until pytest-timeout. Waits given a timeout (the pool's pings, resets, warm-up) keep
    theirs; nothing else of psycopg or of the pool changes. Use it from an autouse fixture."""
    import inspect

    import psycopg
    from psycopg import errors

    original = psycopg.Connection.wait
    default_interval = inspect.signature(original).parameters["interval"].default

    def wait(self: Any, gen: Any, interval: Any = default_interval, timeout: Optional[float] = None) -> Any:
        if timeout is not None:
            return original(self, gen, interval, timeout)
        try:
            return original(self, gen, interval, seconds)
        except errors._WaitTimeout:
            raise errors._WaitTimeout(
                f"no answer from the server within {seconds:g}s: a test's query hung (tests/support.py bound)"
            ) from None

    monkeypatch.setattr(psycopg.Connection, "wait", wait)


def pg_reachable() -> Optional[str]:
    """None if the test PostgreSQL server answers, else the reason it does not."""
    try:
        pg_admin_connect().close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{PG_HOST}:{PG_PORT}: {exc}"


class PGUser(DBLogin):
    """A dedicated PostgreSQL login (sessions: pg_stat_activity.usename). The server may trust
    every login (this machine's does): the password is then set but not checked."""

    scheme = "postgresql"
    host, port, database = PG_HOST, PG_PORT, PG_DB
    adapter = {"adapter": "postgresql"}
    sessions_sql = "SELECT pid FROM pg_stat_activity WHERE usename = %s"

    def _admin_connect(self) -> Any:
        return pg_admin_connect()

    def _create(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{self.name}"')
            cur.execute(f"CREATE ROLE \"{self.name}\" LOGIN PASSWORD '{self.password}'")
        # GRANTs rewrite the ACL of the one database and schema every test login shares: two test
        # runs at once (other worktrees) make one fail with "tuple concurrently updated". Retried.
        for target in (f'DATABASE "{PG_DB}"', "SCHEMA public"):
            grant = f'GRANT ALL ON {target} TO "{self.name}"'
            wait_until(lambda grant=grant: self._try(grant), 10, interval=0.1, what=grant)

    def _try(self, sql: str) -> bool:
        import psycopg

        try:
            with self.admin.cursor() as cur:
                cur.execute(sql)
            return True
        except psycopg.errors.InternalError as exc:
            if "concurrently updated" not in str(exc):
                raise
            return False

    def _drop(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{self.name}"')
            cur.execute(f'DROP ROLE IF EXISTS "{self.name}"')

    def kill(self, session_id: int) -> None:
        """pg_terminate_backend() of one session."""
        with self.admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (session_id,))

    backend_pids = DBLogin.session_ids
    terminate = kill
    terminate_all = DBLogin.kill_all

    def rows(self, table: str) -> int:
        """How many rows *table* has, read by the admin connection."""
        with self.admin.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return int(cur.fetchone()[0])

    def scratch_table(self, *, with_id: bool = False) -> Iterator[str]:
        """Generator for a fixture: a fresh table ``(v int)`` the login may use, dropped after;
        *with_id*: ``(id serial PRIMARY KEY, v int)``, a Django model's table."""
        name = f"gp_t_{os.urandom(4).hex()}"
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} ({'id serial PRIMARY KEY, ' if with_id else ''}v int)")
            cur.execute(f'GRANT ALL ON {name} TO "{self.name}"')
            if with_id:
                cur.execute(f'GRANT ALL ON SEQUENCE {name}_id_seq TO "{self.name}"')
        try:
            yield name
        finally:
            with self.admin.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {name}")

    def last_query(self, pid: int) -> str:
        """What the server last received on backend *pid* (pg_stat_activity.query)."""
        with self.admin.cursor() as cur:
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
        return str(row[0]) if row else ""


def pg_one(conn: Any, sql: str, params: Any = None) -> Any:
    """The first column of the first row of *sql* (None if no row) through a DB-API cursor of
    *conn*: psycopg 3 or psycopg2."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


def pg_run(conn: Any, sql: str, params: Any = None) -> None:
    """Run *sql* through a DB-API cursor of *conn* (psycopg 3 or psycopg2)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)


def pg_backend(conn: Any) -> int:
    """The backend pid of *conn*'s session, asked of the server."""
    return int(pg_one(conn, "SELECT pg_backend_pid()"))


class PG2User(PGUser):
    """A PGUser whose pool configs and URLs name the psycopg2 driver."""

    adapter = {"adapter": "postgresql", "driver": "psycopg2"}

    def url(self, **query: Any) -> str:
        return super().url(**{"driver": "psycopg2", **query})


def redis_admin() -> Any:
    """A redis-py client to the test Redis server (no pool of ours)."""
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3, socket_timeout=5)


def redis_reachable() -> Optional[str]:
    """None if the test Redis server answers, else the reason it does not."""
    try:
        client = redis_admin()
        client.ping()
        client.close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{REDIS_HOST}:{REDIS_PORT}: {exc}"


class RedisClients:
    """Counts a test's own Redis connections: they carry a unique client name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.admin = redis_admin()

    def url(self, db: int = 0, **query: Any) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"client_name": self.name, **query}.items())
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}?{q}"

    def ids(self) -> list[int]:
        return sorted(int(c["id"]) for c in self.admin.client_list() if c.get("name") == self.name)

    def count(self) -> int:
        return len(self.ids())

    def kill_all(self) -> int:
        ids = self.ids()
        for cid in ids:
            self.admin.client_kill_filter(_id=cid)
        return len(ids)

    def close(self) -> None:
        try:
            self.kill_all()
        finally:
            self.admin.close()


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET http://127.0.0.1:port/path; return (status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"raw": raw.decode("latin1")}


class Gunicorn:
    """A real gunicorn master serving tests/apps on a free loopback port.

    *conf* is the text of a gunicorn.conf.py (dedented); it is written to the
    test's tmp dir. Output (both streams) goes to ``log_path``.
    """

    def __init__(self, tmp_path: Path, conf: str, *args: str, app: str = "webapp:app",
                 env: Optional[dict[str, str]] = None) -> None:  # fmt: skip
        self.port = free_port()
        self.tmp = tmp_path
        self.conf_path = tmp_path / f"gunicorn_{self.port}.conf.py"
        self.conf_path.write_text(textwrap.dedent(conf))
        self.log_path = tmp_path / f"gunicorn_{self.port}.log"
        self.args = [sys.executable, "-m", "gunicorn", "-c", str(self.conf_path), "-b", f"127.0.0.1:{self.port}",
                     "--chdir", str(APPS), "--no-control-socket", *args, app]  # fmt: skip
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]), **(env or {}))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, wait: bool = True, timeout: float = 30.0, workers_ready: int = 0) -> Gunicorn:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(self.tmp))  # fmt: skip
        if wait:
            self.wait_listening(timeout)
        if workers_ready:
            self.wait_log("pool service(s) ready", count=workers_ready, timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        wait_until(lambda: self.log().count(text) >= count or self._dead(), timeout, what=f"{count}x {text!r}")
        if self.log().count(text) < count:
            raise AssertionError(f"gunicorn exited before logging {text!r}:\n{self.log()[-3000:]}")

    def _dead(self) -> bool:
        return not self.alive()

    def wait_listening(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, timeout, what=f"gunicorn listening on {self.port}")

    def worker_pids(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return sorted(int(p) for p in text.split())

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        return http_get(self.port, path, timeout)

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.alive():
            try:
                os.kill(self.proc.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        for pid in self.worker_pids():  # should be none; never leave strays
            os.kill(pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- gunicorn configs and measurements shared by the integration tests -------------------------

WORKER_CLASSES = {
    "sync": ("gunicorn_pool.Worker", ""),
    "gthread": ("gunicorn_pool.ThreadWorker", "threads = 4"),
    "gevent": ("gunicorn_pool.GeventWorker", ""),
}

# POOLS on a line of its own: a failing DatabasePool(...) makes gunicorn print the
# traceback, with the source line of the call (see docs/failure.md).
POOL_CONF = """
import gunicorn_pool
POOLS = {pools!r}
gunicorn_pool.register(gunicorn_pool.DatabasePool(POOLS), name={service!r})
worker_class = {worker!r}
workers = {workers}
{extra}
"""


def pool_conf(pools: dict[str, Any], *, kind: str = "sync", workers: int = 2, extra: str = "",
              service: str = "db", worker: Optional[str] = None) -> str:  # fmt: skip
    """A gunicorn.conf.py registering ``DatabasePool(pools)`` as *service*, for worker *kind*
    (sync, gthread with 4 threads, or gevent), or for the worker class *worker*."""
    kind_worker, kind_extra = WORKER_CLASSES[kind]
    if worker is not None:
        kind_worker, kind_extra = worker, ""
    worker = kind_worker
    return POOL_CONF.format(pools=pools, service=service, worker=worker, workers=workers,
                            extra="\n".join(x for x in (kind_extra, extra) if x))  # fmt: skip


def concurrent_with_peak(calls: list[Callable[[], Any]], count: Callable[[], int],
                         timeout: float = 60.0) -> tuple[list[Any], int]:  # fmt: skip
    """Run *calls* at once (a thread each) while sampling *count* (server sessions) every 0.05 s;
    return (their results, in completion order; the highest count seen)."""
    import threading

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], count())

    results: list[Any] = []
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=lambda c=call: results.append(c()), daemon=True) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    done.set()
    sampler.join(5)
    return results, peak[0]


def figure(name: str, value: float, unit: str = "s") -> None:
    """Print a measured figure (collected for the docs with ``pytest -s``)."""
    print(f"FIGURE {name}: {value:.2f} {unit}")


def assert_no_secret(server: Any, *secrets: str) -> None:
    log = server.log()
    for secret in secrets:
        assert secret not in log, "a password reached the log"


def poll_until_ok(server: Any, path: str, limit: float, streak: int = 1) -> float:
    """Seconds until *streak* consecutive 200s on *path*; fails after *limit* seconds."""
    start = time.monotonic()
    ok = 0
    while ok < streak:
        try:
            status, _ = server.get(path, timeout=limit)
        except ConnectionResetError:  # a worker recycled by max_requests closed its socket under us
            status = 0
        ok = ok + 1 if status == 200 else 0
        elapsed = time.monotonic() - start
        if ok < streak:
            assert elapsed < limit, f"{path}: no {streak} successes in a row within {limit}s"
            if not ok:
                time.sleep(0.05)
    return time.monotonic() - start



def refuse_during_respawns(server: Any, proxy: Any, requests: int) -> int:
    """Make *proxy* refuse new connects and cut the open ones, then send *requests* requests to
    /conn: every answer is 500 or 502 (the server is really gone; never a hang) and the master
    lives. Returns how many workers booted meanwhile."""
    proxy.refuse()
    proxy.cut()
    boots = server.log().count("Booting worker")
    for _ in range(requests):
        status, body = server.get("/conn", timeout=15)
        assert server.alive(), server.log()[-3000:]
        assert status in (500, 502), body
    return server.log().count("Booting worker") - boots

def fail_while_respawning(server: Any, proxy: Any, *, within: float = 40.0, respawns: int = 2) -> float:
    """Make *proxy* refuse new connects and cut the open ones, then send requests to /conn until
    *respawns* workers booted meanwhile and one logged its failed warm-up (the server down during
    respawns: ``max_requests`` small). Every answer is 500 or 503 (never a hang), the master
    lives; fails after *within* seconds. Returns the slowest answer's seconds."""
    proxy.refuse()
    proxy.cut()
    boots = server.log().count("Booting worker")
    deadline = time.monotonic() + within
    slowest = 0.0
    while True:  # bounded: *within*
        start = time.monotonic()
        try:
            status, body = server.get("/conn", timeout=15)
        except ConnectionResetError:  # a worker recycled by max_requests closed its listening socket
            status, body = 503, {}
        slowest = max(slowest, time.monotonic() - start)
        assert server.alive(), server.log()[-3000:]
        assert status in (500, 503), body
        log = server.log()
        if log.count("Booting worker") - boots >= respawns and "warm-up failed, will connect on demand" in log:
            return slowest  # respawns booted with the server down
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.1)


def each_request_fails_within(server: Any, path: str, bound: float, statuses: tuple[int, ...],
                              requests: int = 3) -> list[float]:  # fmt: skip
    """Send *requests* requests to *path*: each answers one of *statuses* within *bound* seconds
    (the server unreachable: never a hang). Returns their seconds."""
    took = []
    for _ in range(requests):
        start = time.monotonic()
        status, body = server.get(path, timeout=15)
        took.append(time.monotonic() - start)
        assert status in statuses and took[-1] < bound, (status, took[-1], body)
    return took


# -- pool helpers --------------------------------------------------------------------------------


POOL_DEFAULTS = {"min_size": 1, "max_size": 1, "timeout": 5}


def database_pools(config: Callable[..., dict[str, Any]], *, name: str,
                   defaults: Optional[dict[str, Any]] = None) -> Iterator[Callable[..., Any]]:  # fmt: skip
    """Generator for a fixture that makes open DatabasePools of one pool ``"default"`` configured
    by ``config(*args, **options)`` (*defaults*, POOL_DEFAULTS unless given, under the options),
    and closes every one after the test."""
    from gunicorn_pool import DatabasePool

    made: list[Any] = []
    base = POOL_DEFAULTS if defaults is None else defaults

    def make(*args: Any, **options: Any) -> Any:
        db = DatabasePool({"default": config(*args, **{**base, **options})}, name=name)
        made.append(db)
        db.init_pool()
        return db

    try:
        yield make
    finally:
        for db in made:
            db.close_pool()


def session_in_forked_child(db: Any, session_of: Callable[[Any], Any]) -> Any:
    """Fork; the child takes a connection of *db*'s pool "default" (dropping what it inherited),
    reports ``session_of(conn)`` through a pipe, closes its pools and exits (SIGALRM ends it
    after 10 s). Checks the child exited 0; returns its report."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read)
            signal.alarm(10)
            with db.connection() as conn:
                os.write(write, json.dumps({"session": session_of(conn)}).encode())
            db.close_pool()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    return reported["session"]


# -- pool helpers for tests that need no server -------------------------------------------------


def sqlite_pool(tmp_path: Path, **options: Any) -> Any:
    """An open SQLite ConnectionPool for the bookkeeping tests; ``owner_check`` off, because they
    take a connection in one thread and give it back from another on purpose."""
    from gunicorn_pool import ConnectionPool
    from gunicorn_pool.config import parse_config
    from gunicorn_pool.connectors import SQLiteConnector

    cfg = parse_config("p", f"sqlite:///{tmp_path / 'p.db'}")
    options.setdefault("owner_check", False)
    pool = ConnectionPool(SQLiteConnector(cfg), name="p", **options)
    pool.open()
    return pool


def start_threads(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    import threading

    threads = [threading.Thread(target=target, args=a, daemon=True) for a in args]
    for t in threads:
        t.start()
    return threads


def join_all(threads: list[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running"
