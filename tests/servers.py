"""Throwaway database servers for the test suite: MariaDB (TLS, replication), PostgreSQL with SCRAM, PgBouncer.

The machine's own servers (MariaDB :3306, PostgreSQL :5432) cannot check
passwords the way some tests need (PostgreSQL trusts every login), offer no
TLS and have no replica. The classes here start private servers instead: each
in a fresh temporary directory of its own (data dir, socket, pid file, log)
on a free loopback port, and stop them by pid: the graceful signal first,
SIGKILL after a bound. Nothing is written outside that directory (scratch
files included: mariadbd's tmpdir and every child's TMPDIR point into it,
because a mariadbd deletes the ``#sql*`` files of its tmpdir at start, and
/tmp is the machine MariaDB's), and no machine server is ever configured,
signalled or stopped.

Processes are never left behind: every server is stopped by its owner
(``close()`` in a ``finally`` / fixture teardown), an ``atexit`` handler stops
whatever the module still has running when Python exits, and each server is
started through ``setpriv --pdeathsig=KILL`` so that the kernel kills it if
the Python process dies without running either (SIGKILL, OOM). The death
signal fires when the *thread* that started the server exits: start servers
from the main thread (pytest fixtures do).

initdb, postgres and pgbouncer refuse to run as root: when the tests run as
root those three run as the ``postgres`` OS user, in a directory chowned to
it (so a *base* directory given to them must be traversable by that user;
pytest's ``tmp_path`` is not, the default system temp dir is). mariadbd runs
as the current user (``--user=root`` when that is root).

Every loop here is bounded in count and time.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

import pymysql
import pymysql.cursors
import pytest
from support import PG_DB, PG_HOST, PG_PORT, QUERY_BOUND, free_port, wait_until

MARIADBD = os.environ.get("GP_MARIADBD", "/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = os.environ.get("GP_MARIADB_INSTALL_DB", "/usr/bin/mariadb-install-db")
PG_BIN = Path(os.environ.get("GP_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = os.environ.get("GP_PGBOUNCER", "/usr/sbin/pgbouncer")
SETPRIV = shutil.which("setpriv")
HOST = "127.0.0.1"
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

# Servers started by this module and still running, and the directories it made, each with the pid of the process
# that made it: the atexit fallback's work list. A forked child inherits both and must touch neither.
_LIVE: dict[int, _Process] = {}
_DIRS: dict[Path, int] = {}
_OWNER_FILE = ".gp-owner"  # "pid starttime" of the process that made a directory: lets a later run sweep it
_swept = False


# --------------------------------------------------------------------------- processes and directories


def _start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, it names one process for sure."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _children(pid: int) -> list[tuple[int, Optional[str]]]:
    """Direct children of *pid* (any of its threads), each with its start time."""
    kids: list[tuple[int, Optional[str]]] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        kids.extend((int(k), _start_time(int(k))) for k in text.split())
    return kids


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _service_user() -> Optional[pwd.struct_passwd]:
    """The ``postgres`` OS user when we are root (initdb, postgres and pgbouncer refuse root), else None."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def _clean_env(tmpdir: Path) -> dict[str, str]:
    """Our environment without PG*/MYSQL* variables (they could point a tool at another server), with LC_ALL=C
    and TMPDIR set to *tmpdir*: a server's scratch files stay in its own directory, never in a shared /tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL", "MARIADB"))}
    env["LC_ALL"] = "C"
    env["TMPDIR"] = str(tmpdir)
    return env


def _as_user(user: Optional[pwd.struct_passwd]) -> dict[str, Any]:
    """Popen keyword arguments that run the child as *user* (None: as ourselves)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _sweep_stale_dirs() -> None:
    """Once per process: remove gp-* dirs in the system temp dir whose maker is dead (a SIGKILLed session).

    Only directories stamped by this module are touched, and only when their
    maker no longer exists; its servers died with it (death signal), so only
    when setpriv gave them one.
    """
    global _swept
    if _swept or SETPRIV is None:
        return
    _swept = True
    for path in Path(tempfile.gettempdir()).glob("gp-*"):
        try:
            pid_text, started = (path / _OWNER_FILE).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _start_time(pid) != started:
            shutil.rmtree(path, ignore_errors=True)


def make_dir(prefix: str, base: Optional[Path] = None, owner: Optional[pwd.struct_passwd] = None) -> Path:
    """A fresh private (0700) directory, owned by *owner* if given; removed at exit if nobody removed it before."""
    _sweep_stale_dirs()
    path = Path(tempfile.mkdtemp(prefix=f"gp-{prefix}-", dir=base))
    (path / _OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    _DIRS[path] = os.getpid()
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _DIRS.pop(path, None)


def run(args: Sequence[str], timeout: float, user: Optional[pwd.struct_passwd] = None,
        cwd: Optional[Path] = None) -> str:  # fmt: skip
    """Run a setup tool to completion (killed after *timeout* s); its output, or AssertionError with it."""
    try:
        done = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              cwd=cwd, env=_clean_env(cwd or Path(tempfile.gettempdir())),
                              **_as_user(user))  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{args[0]} did not finish in {timeout}s:\n{exc.output}") from None
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout[-3000:]}")
    return str(done.stdout)


class _Process:
    """One long-running server process, started by this module and stopped by its pid.

    *stop_signals* are sent in turn, each followed by up to *timeout* s of
    waiting; then SIGKILL. Children still alive after the process is gone
    (PostgreSQL backends after a SIGKILLed postmaster) are SIGKILLed by pid,
    checked against their start time so a recycled pid is never hit.
    """

    def __init__(self, name: str, args: Sequence[str], log_path: Path, cwd: Path,
                 user: Optional[pwd.struct_passwd] = None,
                 stop_signals: Sequence[signal.Signals] = (signal.SIGTERM,)) -> None:  # fmt: skip
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.cwd = cwd
        self.user = user
        self.stop_signals = tuple(stop_signals)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.owner_pid = os.getpid()

    def start(self) -> _Process:
        self.owner_pid = os.getpid()
        prefix = [SETPRIV, "--pdeathsig=KILL", "--"] if SETPRIV else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(prefix + self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, env=_clean_env(self.cwd),
                                         **_as_user(self.user))  # fmt: skip
        _LIVE[self.proc.pid] = self
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return _log_tail(self.log_path)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """Stop by pid (graceful signals, then SIGKILL); the exit status, None if never started."""
        if self.proc is None:
            return None
        proc = self.proc
        try:
            for sig in self.stop_signals:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            kids = _children(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pid, started in kids:
                if started is not None and _start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            if proc.poll() is not None:
                _LIVE.pop(proc.pid, None)
        return proc.returncode


@atexit.register
def _stop_everything() -> None:
    """Fallback for servers whose owner did not stop them (a crashed session, a forgotten close())."""
    me = os.getpid()
    for process in list(_LIVE.values()):
        if process.owner_pid == me:
            with contextlib.suppress(Exception):
                process.stop(timeout=5)
    for path, maker in list(_DIRS.items()):
        if maker == me:
            remove_dir(path)


def _wait_ready(process: _Process, probe: Any, timeout: float, what: str) -> None:
    """Wait until *probe()* is truthy; fail at once, with the log, if the process exits meanwhile."""

    def ready() -> Any:
        if not process.alive():
            raise AssertionError(f"{what} exited with {process.proc.returncode if process.proc else None}:\n"
                                 f"{process.log()}")  # fmt: skip
        return probe()

    try:
        wait_until(ready, timeout, interval=0.05, what=what)
    except AssertionError as exc:
        if not process.alive():
            raise  # the message has the log already
        raise AssertionError(f"{exc}\n--- {process.log_path}:\n{process.log()}") from None


def _port_in_use(log: str) -> bool:
    return "Address already in use" in log or "already have another server running on port" in log


def _need(path: Optional[str]) -> None:
    """Skip (fail under GP_REQUIRE_SERVERS=1) when a server binary is not installed."""
    if path and os.access(path, os.X_OK):
        return
    if os.environ.get("GP_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{path} is not installed and GP_REQUIRE_SERVERS=1")
    pytest.skip(f"{path} is not installed")


# --------------------------------------------------------------------------- TLS material


class _Server:
    """What every throwaway server shares: its process, found by pid, stopped and removed with its dir.

    A subclass sets ``name``, ``dir``, ``log_path`` and ``_process`` (when started), and defines
    ``start(timeout)``; ``restart_timeout`` is its ``start()`` bound on restart."""

    name: str
    dir: Any
    log_path: Any
    port: int
    _bootstrapped = False
    _process: Optional[_Process] = None
    stop_timeout = 30.0
    restart_timeout = 60.0

    def start(self, timeout: float = 60.0) -> Any:
        raise NotImplementedError

    def _accepts_login(self) -> bool:
        raise NotImplementedError

    def _launch(self, timeout: float, spawn: Callable[[], _Process]) -> None:
        """Start the process and wait until it accepts a login. A free port can be taken before
        the server binds it: then (only before the server's first use) again on another port."""
        for attempt in range(3):
            self._process = spawn().start()
            try:
                _wait_ready(self._process, self._accepts_login, timeout, f"{self.name} on port {self.port}")
                return
            except AssertionError:
                self._process.stop(timeout=10)
                if self._bootstrapped or attempt == 2 or not _port_in_use(_log_tail(self.log_path)):
                    raise
                self.port = free_port()

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    @property
    def pid(self) -> int:
        assert self._process is not None, f"{self.name} was never started"
        return self._process.pid

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """Stop by pid (the subclass's signals, SIGKILL after *timeout* s, ``stop_timeout`` by
        default); what is on disk stays, so start() boots the same server again."""
        if self._process is None:
            return None
        return self._process.stop(self.stop_timeout if timeout is None else timeout)

    def restart(self, timeout: Optional[float] = None) -> Any:
        """Stop, then start again on the same port and data (same users)."""
        self.stop()
        return self.start(self.restart_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Stop and remove the whole temp dir."""
        try:
            self.stop()
        finally:
            remove_dir(self.dir)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log(self) -> str:
        return _log_tail(self.log_path)


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 and localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, owner: Optional[pwd.struct_passwd] = None) -> TLSFiles:
    """Generate a P-256 CA and server certificate (valid 2 days) with the openssl CLI into *directory*."""
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "server-cert.pem", directory / "server-key.pem", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n"
                   "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")  # fmt: skip
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj",
         "/CN=gunicorn-pool throwaway test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], 30)  # fmt: skip
    run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"], 30)
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", "2", "-extfile", str(ext)], 30)  # fmt: skip
    if owner is not None:
        for path in (ca, cert, key):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return TLSFiles(ca=ca, cert=cert, key=key)


# --------------------------------------------------------------------------- MariaDB


@dataclass(frozen=True)
class Login:
    """A login on one throwaway server: ``url()`` and ``config()`` as MySQLUser and PGUser give them."""

    scheme: str
    name: str
    password: str
    host: str
    port: int
    database: str

    def url(self, **query: Any) -> str:
        """``scheme://name:password@host:port/database?query``, name and password percent-quoted."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        auth = f"{quote(self.name, safe='')}:{quote(self.password, safe='')}"
        return f"{self.scheme}://{auth}@{self.host}:{self.port}/{self.database}" + (f"?{q}" if q else "")

    def config(self, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(host=self.host, port=self.port, user=self.name, password=self.password,
                                   database=self.database)  # fmt: skip
        if self.scheme == "postgresql":
            cfg["adapter"] = "postgresql"
        cfg.update(extra)
        return cfg


def _mariadb_options(datadir: Path) -> list[str]:
    """Options shared by mariadb-install-db and mariadbd (--no-defaults: /etc/mysql is never read).

    ``--tmpdir`` is a private directory next to *datadir*, never the default
    /tmp: at every start (the install's bootstrap included) mariadbd deletes
    all ``#sql*`` files in its tmpdir as crash leftovers, and /tmp is the
    machine MariaDB's tmpdir, where its internal temporary tables live while
    queries run (deleting them crashed it, SIGSEGV in ha_maria::drop_table).
    """
    basedir = Path(MARIADBD).resolve().parent.parent  # /usr: share/ and lib/ are found from here, not the binary
    tmpdir = datadir.parent / "tmp"
    tmpdir.mkdir(mode=0o700, exist_ok=True)
    opts = ["--no-defaults", f"--basedir={basedir}", f"--datadir={datadir}", f"--tmpdir={tmpdir}",
            "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--skip-name-resolve",
            "--performance-schema=OFF", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci"]  # fmt: skip
    if os.geteuid() == 0:
        opts.append("--user=root")
    return opts


_mariadb_template: Optional[tuple[Path, str]] = None
MARIADB_TEMPLATE_SECONDS: Optional[float] = None  # what the one mariadb-install-db of this process took


def mariadb_template() -> tuple[Path, str]:
    """(datadir, mariadbd): a freshly installed, never started datadir, made once per process and copied by
    every MariaDBServer, and the mariadbd binary the servers run.

    mariadb-install-db loads the system tables, help and sys schema (1 to 5 s
    on this machine), a copy of its 26 MB result takes a fraction of that. A
    datadir holds no per-server identity MariaDB cares about (no server UUID
    as in MySQL; server_id is an option), so copies can replicate.

    The servers run a private copy of mariadbd: ``start-stop-daemon --start
    --oknodo --exec /usr/sbin/mariadbd`` (how .ci/run restarts the machine's
    MariaDB when it is down) takes any process running that very file for the
    machine's server and would not start it while a throwaway one runs. On a
    noexec temp dir the original binary is used.
    """
    global _mariadb_template, MARIADB_TEMPLATE_SECONDS
    if _mariadb_template is None or not _mariadb_template[0].is_dir():
        t0 = time.monotonic()
        directory = make_dir("mariadb-template")
        run([MARIADB_INSTALL_DB, *_mariadb_options(directory / "data"), "--auth-root-authentication-method=normal",
             "--skip-test-db"], timeout=120, cwd=directory)  # fmt: skip
        binary = MARIADBD
        if not os.statvfs(directory).f_flag & os.ST_NOEXEC:
            binary = str(shutil.copy2(MARIADBD, directory / "mariadbd"))
        _mariadb_template = (directory / "data", binary)
        MARIADB_TEMPLATE_SECONDS = time.monotonic() - t0
    return _mariadb_template


def _quote_mysql_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
        raise ValueError(f"unsafe MySQL name {name!r}")
    return name


class MariaDBServer(_Server):
    """A private mariadbd: own datadir, socket, pid file and error log in a temp dir; a free 127.0.0.1 port.

    Real authentication (no ``--skip-grant-tables``): root has the random
    ``root_password``. ``tls=True`` generates a throwaway CA and server
    certificate, so the server offers TLS (``have_ssl`` = YES) and clients can
    verify it against ``tls.ca``. ``log_bin`` turns on the binary log (ROW,
    GTIDs); ``read_only`` starts with ``read_only=ON``. Boot is kept short:
    16 MB buffer pool, small redo log, no performance schema, no DNS.
    Database ``test`` is created at the first boot (binlogged) unless
    *create_test_db* is false (a replica receives it from its primary).
    """

    def __init__(self, base: Optional[Path] = None, *, name: str = "mariadb", tls: bool = False, server_id: int = 1,
                 log_bin: bool = False, read_only: bool = False, create_test_db: bool = True,
                 root_password: Optional[str] = None, extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        self.name = name
        self.dir = make_dir(name, base)
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        self.pid_file = self.dir / "mysqld.pid"
        self.log_path = self.dir / "error.log"
        self.host = HOST
        self.port = free_port()
        self.root_password = root_password or "root-" + secrets.token_hex(8)
        self.tls_enabled = tls
        self.tls: Optional[TLSFiles] = None
        self.server_id = server_id
        self.log_bin = log_bin
        self.read_only = read_only
        self.create_test_db = create_test_db
        self.extra_args = list(extra_args)
        self.binary = MARIADBD  # until _install() picks the template's private copy
        self.install_seconds: Optional[float] = None  # datadir copy + TLS files (not the template's install)
        self.boot_seconds: Optional[float] = None  # of the last start(), first boot includes the bootstrap SQL
        self._process: Optional[_Process] = None
        self._bootstrapped = False

    # -- lifecycle

    def _install(self) -> None:
        """Copy the process's template datadir (installing it first if need be); make the TLS files."""
        template, self.binary = mariadb_template()
        t0 = time.monotonic()
        shutil.copytree(template, self.datadir, symlinks=True)
        if self.tls_enabled:
            self.tls = make_tls_files(self.dir)
        self.install_seconds = time.monotonic() - t0

    def _args(self) -> list[str]:
        args = [self.binary, *_mariadb_options(self.datadir), f"--port={self.port}", f"--bind-address={self.host}",
                f"--socket={self.socket}", f"--pid-file={self.pid_file}", f"--log-error={self.log_path}",
                f"--server-id={self.server_id}", "--innodb-buffer-pool-dump-at-shutdown=OFF",
                "--innodb-buffer-pool-load-at-startup=OFF", "--innodb-flush-log-at-trx-commit=2",
                f"--relay-log={self.dir / 'relay-bin'}"]  # fmt: skip
        if self.log_bin:
            args += [f"--log-bin={self.dir / 'binlog'}", "--binlog-format=ROW", "--sync-binlog=0"]
        else:
            args.append("--skip-log-bin")
        if self.read_only:
            args.append("--read-only=ON")
        if self.tls is not None:
            args += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}", f"--ssl-key={self.tls.key}"]
        return args + self.extra_args

    def start(self, timeout: float = 60.0) -> MariaDBServer:
        """Install (first time), start and wait (bounded) until root can log in over TCP; returns self."""
        if self.alive():
            return self
        if self.install_seconds is None:
            self._install()
        t0 = time.monotonic()
        self._launch(timeout, lambda: _Process(self.name, self._args(), self.dir / "stdout.log", self.dir))
        if not self._bootstrapped:
            self._bootstrap()
        self.boot_seconds = time.monotonic() - t0
        return self

    def _accepts_login(self) -> bool:
        try:
            self.root_connect(connect_timeout=2).close()
            return True
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] == 1045 and not self._bootstrapped:
                raise AssertionError(f"root refused before any password was set (another server?): {exc}") from None
            return False

    def _bootstrap(self) -> None:
        """First boot: root password (not binlogged), database test (binlogged).

        Only the root accounts a loopback client can match get the password:
        the ``root@<hostname>`` one mariadb-install-db also makes is ignored
        under --skip-name-resolve, and ALTER USER refuses it.
        """
        conn = self.root_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin = 0")
                cur.execute("SELECT Host FROM mysql.user WHERE User = 'root' AND Host IN %s", (_LOOPBACK_HOSTS,))
                for (host,) in cur.fetchall():
                    cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.root_password))
                cur.execute("SET SESSION sql_log_bin = 1")
                if self.create_test_db:
                    cur.execute("CREATE DATABASE IF NOT EXISTS test")
        finally:
            conn.close()
        self._bootstrapped = True

    # stop(): SIGTERM (clean shutdown), SIGKILL after stop_timeout; the datadir stays.

    # -- clients

    def connect(self, user: str, password: str, database: Optional[str] = None, **kw: Any) -> Any:
        """A PyMySQL connection over TCP (autocommit, no TLS unless ``ssl``/``ssl_ca`` is passed; each
        read and write bounded by QUERY_BOUND)."""
        args: dict[str, Any] = dict(host=self.host, port=self.port, user=user, password=password, database=database,
                                    autocommit=True, connect_timeout=3, read_timeout=QUERY_BOUND,
                                    write_timeout=QUERY_BOUND)  # fmt: skip
        if not any(k.startswith("ssl") for k in kw):
            args["ssl_disabled"] = True
        args.update(kw)
        return pymysql.connect(**args)

    def root_connect(self, **kw: Any) -> Any:
        """A PyMySQL autocommit connection as root (empty password until the first boot set one)."""
        return self.connect("root", self.root_password if self._bootstrapped else "", **kw)

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Run one statement as root; the rows as dicts."""
        conn = self.root_connect(cursorclass=pymysql.cursors.DictCursor)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def variable(self, name: str) -> Any:
        rows = self.query("SHOW GLOBAL VARIABLES LIKE %s", (name,))
        return rows[0]["Value"] if rows else None

    def create_user(self, name: str, password: str, database: str = "test") -> Login:
        """(Re)create ``name@'%'`` with ALL on *database* (binlogged: a primary's users reach its replica)."""
        _quote_mysql_name(name)
        _quote_mysql_name(database)
        conn = self.root_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
                cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT ALL ON `{database}`.* TO '{name}'@'%'")
        finally:
            conn.close()
        return self.login(name, password, database)

    def login(self, name: str, password: str, database: str = "test") -> Login:
        return Login("mysql", name, password, self.host, self.port, database)

    def url(self, user: str = "root", password: Optional[str] = None, database: str = "test", **query: Any) -> str:
        return self.login(user, self.root_password if password is None else password, database).url(**query)

    def config(self, user: str = "root", password: Optional[str] = None, database: str = "test",
               **extra: Any) -> dict[str, Any]:  # fmt: skip
        return self.login(user, self.root_password if password is None else password, database).config(**extra)


class MariaDBReplicaPair:
    """A primary (binlog, GTIDs) and a ``read_only`` replica replicating from it with MASTER_USE_GTID=slave_pos.

    Database ``test`` is created on the primary and reaches the replica by
    replication. Users made with ``create_user`` are created on the primary
    and replicate too. ``stop_replica()`` / ``start_replica()`` stop and boot
    the replica's mariadbd (same datadir and port); its replication threads
    restart on their own at boot.
    """

    def __init__(self, base: Optional[Path] = None) -> None:
        self.primary = MariaDBServer(base, name="mariadb-primary", server_id=1, log_bin=True)
        self.replica = MariaDBServer(base, name="mariadb-replica", server_id=2, read_only=True, create_test_db=False)
        self.repl_user = "gp_repl"
        self.repl_password = "repl-" + secrets.token_hex(8)

    def start(self, timeout: float = 60.0) -> MariaDBReplicaPair:
        self.primary.start(timeout)
        self.replica.start(timeout)
        conn = self.primary.root_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin = 0")
                cur.execute(f"CREATE USER '{self.repl_user}'@'127.0.0.1' IDENTIFIED BY %s", (self.repl_password,))
                cur.execute(f"GRANT REPLICATION SLAVE ON *.* TO '{self.repl_user}'@'127.0.0.1'")
        finally:
            conn.close()
        conn = self.replica.root_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
                            "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
                            (self.primary.host, self.primary.port, self.repl_user, self.repl_password))  # fmt: skip
                cur.execute("START SLAVE")
        finally:
            conn.close()
        self.wait_running(timeout)
        self.wait_caught_up(timeout)
        return self

    def slave_status(self) -> dict[str, Any]:
        """The replica's SHOW SLAVE STATUS row ({} when replication is not configured)."""
        rows = self.replica.query("SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def replication_running(self) -> bool:
        """Both replication threads (IO and SQL) run on the replica."""
        if not self.replica.alive():
            return False
        status = self.slave_status()
        return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"

    def _failure(self) -> Optional[str]:
        status = self.slave_status()
        for key in ("Last_SQL_Error", "Last_IO_Error"):
            if status.get(key) and status.get("Slave_SQL_Running" if "SQL" in key else "Slave_IO_Running") == "No":
                return f"{key}: {status[key]}"
        return None

    def wait_running(self, timeout: float = 30.0) -> None:
        def running() -> bool:
            failure = self._failure()
            if failure:
                raise AssertionError(f"replication stopped: {failure}")
            return self.replication_running()

        wait_until(running, timeout, interval=0.1, what="replica IO and SQL threads running")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until the replica applied everything the primary binlogged so far."""
        pos = self.primary.query("SELECT @@gtid_binlog_pos AS pos")[0]["pos"]
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.5) + 2):
            got = self.replica.query("SELECT MASTER_GTID_WAIT(%s, 0.5) AS r", (pos,))[0]["r"]
            if got == 0:
                return
            failure = self._failure()
            if failure:
                raise AssertionError(f"replica cannot catch up to {pos}: {failure}")
            if time.monotonic() >= deadline:
                break
        raise AssertionError(f"replica did not reach {pos} in {timeout}s: {self.slave_status()}")

    def create_user(self, name: str, password: str, database: str = "test") -> tuple[Login, Login]:
        """Create the user on the primary; once replicated, its login on (primary, replica)."""
        login = self.primary.create_user(name, password, database)
        self.wait_caught_up()
        return login, self.replica.login(name, password, database)

    def stop_replica(self, timeout: float = 30.0) -> Optional[int]:
        """Stop the replica's mariadbd by pid (the primary keeps running)."""
        return self.replica.stop(timeout)

    def start_replica(self, timeout: float = 60.0) -> None:
        """Boot the replica again on its port; wait until replication runs and has caught up."""
        self.replica.start(timeout)
        self.wait_running(timeout)
        self.wait_caught_up(timeout)

    def close(self) -> None:
        try:
            self.replica.close()
        finally:
            self.primary.close()

    def __enter__(self) -> MariaDBReplicaPair:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def mariadb_replica_pair(base: Optional[Path] = None) -> Iterator[MariaDBReplicaPair]:
    """A running primary/replica pair under *base* (e.g. ``tmp_path``); both stopped and removed on exit."""
    pair = MariaDBReplicaPair(base)
    try:
        yield pair.start()
    finally:
        pair.close()


# --------------------------------------------------------------------------- PostgreSQL


def _pg_ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise ValueError(f"unsafe PostgreSQL name {name!r}")
    return f'"{name}"'


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer(_Server):
    """A private PostgreSQL cluster that checks passwords: SCRAM-SHA-256 for every TCP login.

    initdb (as the ``postgres`` OS user when we are root) writes the cluster
    to a temp dir; pg_hba.conf has ``host all all 127.0.0.1/32 scram-sha-256``
    (local socket: trust). The superuser *superuser* gets the random
    ``password``; database ``test`` is created at the first boot. Runs with
    small shared_buffers and fsync off; stopped with SIGINT (fast shutdown),
    then SIGQUIT, then SIGKILL.
    """

    def __init__(self, base: Optional[Path] = None, *, name: str = "postgres", superuser: str = "postgres",
                 password: Optional[str] = None, settings: Optional[dict[str, str]] = None) -> None:  # fmt: skip
        self.name = name
        self.user = _service_user()
        self.dir = make_dir(name, base, self.user)
        self.datadir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.host = HOST
        self.port = free_port()
        self.superuser = superuser
        self.password = password or "pg-" + secrets.token_hex(8)
        self.settings = {"shared_buffers": "16MB", "fsync": "off", "synchronous_commit": "off",
                         "full_page_writes": "off", "max_connections": "100", **(settings or {})}  # fmt: skip
        self.initdb_seconds: Optional[float] = None
        self.boot_seconds: Optional[float] = None
        self._process: Optional[_Process] = None
        self._bootstrapped = False

    def _initdb(self) -> None:
        t0 = time.monotonic()
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        try:
            run([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.superuser, f"--pwfile={pwfile}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
                timeout=120, user=self.user, cwd=self.dir)  # fmt: skip
        finally:
            pwfile.unlink()
        (self.datadir / "pg_hba.conf").write_text(
            "# gunicorn-pool throwaway cluster: passwords are checked on TCP\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.initdb_seconds = time.monotonic() - t0

    def _args(self) -> list[str]:
        args = [str(PG_BIN / "postgres"), "-D", str(self.datadir), "-p", str(self.port), "-k", str(self.dir),
                "-c", f"listen_addresses={self.host}"]  # fmt: skip
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb (first time), start, wait (bounded) until the superuser can log in over TCP; returns self."""
        if self.alive():
            return self
        if self.initdb_seconds is None:
            self._initdb()
        t0 = time.monotonic()
        self._launch(timeout, lambda: _Process(self.name, self._args(), self.log_path, self.dir, self.user,
                                               stop_signals=(signal.SIGINT, signal.SIGQUIT)))  # fmt: skip
        if not self._bootstrapped:
            with self.admin_connect(dbname="postgres") as conn:
                conn.execute("CREATE DATABASE test")
            self._bootstrapped = True
        self.boot_seconds = time.monotonic() - t0
        return self

    def _accepts_login(self) -> bool:
        import psycopg

        try:
            self.admin_connect(dbname="postgres", connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    # stop(): fast shutdown (SIGINT), then SIGQUIT, then SIGKILL; the cluster stays.

    def connect(self, user: str, password: Optional[str], dbname: str = "test", **kw: Any) -> Any:
        """A psycopg autocommit connection over TCP (so the password is checked)."""
        import psycopg

        args: dict[str, Any] = dict(host=self.host, port=self.port, user=user, password=password, dbname=dbname,
                                    autocommit=True, connect_timeout=3)  # fmt: skip
        args.update(kw)
        return psycopg.connect(**args)

    def admin_connect(self, **kw: Any) -> Any:
        """A psycopg autocommit connection as the superuser, to database test unless ``dbname`` is given."""
        return self.connect(self.superuser, self.password, **kw)

    def create_user(self, name: str, password: str, database: str = "test") -> Login:
        """(Re)create a LOGIN role with a SCRAM password and ALL on *database* and its schema public."""
        ident = _pg_ident(name)
        with self.admin_connect(dbname=database) as conn:
            if self._role_exists(conn, name):
                conn.execute(f"DROP OWNED BY {ident}")
            conn.execute(f"DROP ROLE IF EXISTS {ident}")
            conn.execute(f"CREATE ROLE {ident} LOGIN PASSWORD {_pg_literal(password)}")
            conn.execute(f"GRANT ALL ON DATABASE {_pg_ident(database)} TO {ident}")
            conn.execute(f"GRANT ALL ON SCHEMA public TO {ident}")
        return self.login(name, password, database)

    @staticmethod
    def _role_exists(conn: Any, name: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None

    def login(self, name: str, password: str, database: str = "test") -> Login:
        return Login("postgresql", name, password, self.host, self.port, database)

    def url(self, user: Optional[str] = None, password: Optional[str] = None, dbname: str = "test",
            **query: Any) -> str:  # fmt: skip
        name = user or self.superuser
        pw = password if password is not None else (self.password if name == self.superuser else "")
        return self.login(name, pw, dbname).url(**query)


# --------------------------------------------------------------------------- PgBouncer


class PgBouncer(_Server):
    """A private PgBouncer on a free 127.0.0.1 port, in front of one upstream database.

    ``[databases]`` maps *dbname* (default ``test``) to *upstream_host*:
    *upstream_port* / *upstream_dbname* (default: the machine's PostgreSQL,
    GP_PG_*). Clients authenticate to PgBouncer with *auth_type* (``md5``
    checks the plaintext passwords of ``auth_file``; ``trust`` only needs the
    name there); PgBouncer logs in upstream with the same name and password,
    which also works against a SCRAM server such as PostgresServer. *users*
    (name to password; default ``{"postgres": <random>}``) fill the auth file;
    ``add_user`` adds one and reloads. The admin console (database
    ``pgbouncer``) accepts ``admin_user``/``admin_password``. Runs as the
    ``postgres`` OS user when we are root (pgbouncer refuses root).
    """

    def __init__(self, upstream_host: str = PG_HOST, upstream_port: int = PG_PORT, upstream_dbname: str = PG_DB, *,
                 dbname: str = "test", pool_mode: str = "transaction", default_pool_size: int = 5,
                 max_client_conn: int = 100, auth_type: str = "md5", users: Optional[dict[str, str]] = None,
                 settings: Optional[dict[str, str]] = None, base: Optional[Path] = None,
                 name: str = "pgbouncer") -> None:  # fmt: skip
        self.name = name
        self.user = _service_user()
        self.dir = make_dir(name, base, self.user)
        self.ini_path = self.dir / "pgbouncer.ini"
        self.auth_file = self.dir / "userlist.txt"
        self.log_path = self.dir / "pgbouncer.log"
        self.host = HOST
        self.port = free_port()
        self.upstream = (upstream_host, upstream_port, upstream_dbname)
        self.dbname = dbname
        self.pool_mode = pool_mode
        self.admin_user = "gp_bouncer_admin"
        self.admin_password = "admin-" + secrets.token_hex(8)
        self.users: dict[str, str] = dict(users) if users is not None else {"postgres": "pw-" + secrets.token_hex(8)}
        self.settings = {"pool_mode": pool_mode, "default_pool_size": str(default_pool_size),
                         "max_client_conn": str(max_client_conn), "auth_type": auth_type,
                         **(settings or {})}  # fmt: skip
        self.boot_seconds: Optional[float] = None
        self._process: Optional[_Process] = None

    def _own(self, path: Path) -> None:
        path.chmod(0o600)
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _write_auth_file(self) -> None:
        entries = {self.admin_user: self.admin_password, **self.users}
        lines = []
        for user, password in entries.items():
            if '"' in user or '"' in password:
                raise ValueError(f"auth_file entries cannot contain double quotes: {user!r}")
            lines.append(f'"{user}" "{password}"\n')
        tmp = self.auth_file.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        self._own(tmp)
        tmp.replace(self.auth_file)

    def _write_ini(self) -> None:
        host, port, dbname = self.upstream
        settings = {"listen_addr": self.host, "listen_port": str(self.port), "unix_socket_dir": "",
                    "auth_file": str(self.auth_file), "admin_users": self.admin_user,
                    "pidfile": str(self.dir / "pgbouncer.pid"),
                    "ignore_startup_parameters": "extra_float_digits,options", **self.settings}  # fmt: skip
        text = f"[databases]\n{self.dbname} = host={host} port={port} dbname={dbname}\n\n[pgbouncer]\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        self.ini_path.write_text(text)
        self._own(self.ini_path)

    def start(self, timeout: float = 30.0) -> PgBouncer:
        """Write the config, start, wait (bounded) until the admin console answers; returns self."""
        if self.alive():
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            self._write_auth_file()
            self._write_ini()
            self._process = _Process(self.name, [PGBOUNCER, str(self.ini_path)], self.log_path, self.dir,
                                     self.user).start()  # fmt: skip
            try:
                _wait_ready(self._process, self._answers, timeout, f"{self.name} on port {self.port}")
                break
            except AssertionError:
                self._process.stop(timeout=10)
                if self.boot_seconds is not None or attempt == 2 or not _port_in_use(_log_tail(self.log_path)):
                    raise
                self.port = free_port()
        self.boot_seconds = time.monotonic() - t0
        return self

    def _answers(self) -> bool:
        import psycopg

        try:
            self.admin(connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    # stop(): SIGTERM (immediate shutdown: clients are cut), SIGKILL after 10 s.
    stop_timeout = 10.0
    restart_timeout = 30.0

    def admin(self, **kw: Any) -> Any:
        """A psycopg autocommit connection to the admin console (statements without parameters only).

        psycopg sends a statement without parameters as a simple query, which
        is all the console understands; ``prepare_threshold=None`` keeps it
        from ever preparing one.
        """
        import psycopg

        args: dict[str, Any] = dict(host=self.host, port=self.port, user=self.admin_user,
                                    password=self.admin_password, dbname="pgbouncer", autocommit=True,
                                    connect_timeout=3, prepare_threshold=None)  # fmt: skip
        args.update(kw)
        return psycopg.connect(**args)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (POOLS, SERVERS, CLIENTS, STATS, ...); rows as dicts."""
        if not re.fullmatch(r"[A-Za-z_]+", what):
            raise ValueError(f"not a SHOW subject: {what!r}")
        with self.admin() as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def command(self, statement: str) -> None:
        """Run an admin command without result rows (RELOAD, PAUSE test, RESUME, KILL test, ...)."""
        with self.admin() as conn:
            conn.execute(statement)

    def add_user(self, name: str, password: str) -> None:
        """Let *name* log in with *password* (it must exist upstream with that password, or upstream trusts)."""
        self.users[name] = password
        self._write_auth_file()
        if self.alive():
            self.command("RELOAD")

    def url(self, user: str = "postgres", password: Optional[str] = None, dbname: Optional[str] = None,
            **query: Any) -> str:  # fmt: skip
        pw = self.users.get(user, "") if password is None else password
        return Login("postgresql", user, pw, self.host, self.port, dbname or self.dbname).url(**query)

    def config(self, user: str = "postgres", password: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        pw = self.users.get(user, "") if password is None else password
        return Login("postgresql", user, pw, self.host, self.port, self.dbname).config(**extra)


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def mariadb_tls() -> Iterator[MariaDBServer]:
    """A MariaDB that offers TLS (throwaway CA in ``.tls.ca``), shared by the session.

    Session-scoped: the process's first MariaDB pays mariadb-install-db (1 to
    5 s here), every one a datadir copy, certificates and a boot (about 0.5 s);
    tests only add their own users to it. Stopped and removed at the end of
    the session.
    """
    _need(MARIADBD)
    _need(MARIADB_INSTALL_DB)
    _need(shutil.which("openssl"))
    server = MariaDBServer(name="mariadb-tls", tls=True)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def _mariadb_pair_session() -> Iterator[MariaDBReplicaPair]:
    _need(MARIADBD)
    _need(MARIADB_INSTALL_DB)
    pair = MariaDBReplicaPair()
    try:
        yield pair.start()
    finally:
        pair.close()


@pytest.fixture
def mariadb_pair(_mariadb_pair_session: MariaDBReplicaPair) -> MariaDBReplicaPair:
    """A primary/replica MariaDB pair with replication running and caught up.

    The two servers are booted once per session (two datadir copies and
    boots, about a second after the template exists); this function-scoped
    wrapper hands them to each test healthy: a server a previous test stopped
    is booted again, stopped replication threads are started, and the
    replica has caught up. So tests may stop and restart the replica.
    """
    pair = _mariadb_pair_session
    if not pair.primary.alive():
        pair.primary.start()
    if not pair.replica.alive():
        pair.replica.start()
    if not pair.replication_running():
        pair.replica.query("START SLAVE")  # a previous test stopped the threads (a warning if they run)
    pair.wait_running()
    pair.wait_caught_up()
    return pair


@pytest.fixture(scope="session")
def pg_scram() -> Iterator[PostgresServer]:
    """A PostgreSQL that checks passwords (SCRAM-SHA-256 on TCP), shared by the session.

    Session-scoped: initdb costs 1 to 2 s here; tests add their own roles
    with ``create_user``. Stopped and removed at the end of the session.
    """
    _need(str(PG_BIN / "postgres"))
    server = PostgresServer(name="pg-scram")
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def pgbouncer(postgresql_server: None) -> Iterator[PgBouncer]:
    """A fresh PgBouncer (transaction pooling) in front of the machine's PostgreSQL database test.

    Function-scoped: it boots in a few tens of milliseconds, and a fresh one
    gives each test its own pools, so SHOW POOLS/SERVERS/CLIENTS count only
    that test's connections. Login ``postgres`` with ``bouncer.users["postgres"]``
    (``url()`` fills it in); ``add_user`` lets a PGUser through.
    """
    _need(PGBOUNCER)
    bouncer = PgBouncer()
    try:
        yield bouncer.start()
    finally:
        bouncer.close()
