"""Shared by bench/worker_instructions.py and bench/memory.py: whole gunicorn workers, stock against ours.

Four rows, each a stock app on gunicorn's ``-k sync`` against its twin on
``-k gunicorn_pool.Worker``:

- ``hello``: no database (bench/apps/hello_app.py) under both worker classes;
- ``plain``: one module-global PyMySQL connection per worker
  (global_conn_app) against ``DatabasePool.connection()`` (gunicorn_pool_app),
  ``SELECT 1`` per request;
- ``django``: one ORM query (bench/apps/djbench), Django's MySQL backend with
  ``CONN_MAX_AGE=None`` against ``ENGINE: gunicorn_pool.django.mysql``;
- ``flask-sa``: ``session.execute(select(1))`` (flask_sa_app), the stock
  engine (``GPB_SA=stock``) against ``adopt(db)`` (``GPB_SA=adopt``).

Every variant gets its own MySQL login (BenchUser, as bench/e2e.py), one
worker (``-w 1``) and a sequential client: one TCP connection per request, as
wrk does against a sync worker. The package under test is this checkout's,
or a commit's checked out into a temporary git worktree (``--base REF``):
the apps and the bench are always this checkout's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence

from _common import ROOT, BenchUser, admin_connect, wait_for
from _server import APPS, READY, Server

OURS = "gunicorn_pool.Worker"


class Variant(NamedTuple):
    module: str
    worker_class: str
    env: dict[str, str]
    login: bool = True  # needs a MySQL login of its own


class Row(NamedTuple):
    label: str
    stock: Variant
    ours: Variant


ROWS = {
    "hello": Row("no DB (hello app)", Variant("hello_app", "sync", {}, False), Variant("hello_app", OURS, {}, False)),
    "plain": Row("plain `SELECT 1`", Variant("global_conn_app", "sync", {}), Variant("gunicorn_pool_app", OURS, {})),
    "django": Row("Django, one ORM query",
                  Variant("django_app", "sync", {"GPB_DJ_ENGINE": "stock", "GPB_DJ_MAX_AGE": "none"}),
                  Variant("django_app", OURS, {"GPB_DJ_ENGINE": "ours"})),
    "flask-sa": Row("Flask-SA, `session.execute(select(1))`", Variant("flask_sa_app", "sync", {"GPB_SA": "stock"}),
                    Variant("flask_sa_app", OURS, {"GPB_SA": "adopt"})),
}  # fmt: skip
#: what a sync worker with a pool of one is given, as bench/e2e.py's sync modes
COMMON_ENV = {"GPB_SIZE": "1", "PYTHONHASHSEED": "0"}
#: the request wrk sends (the sync worker answers with Connection: close)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def pick_rows(only: Optional[str]) -> list[str]:
    """The row keys named by a comma-separated ``--only`` (all when empty), in ROWS order."""
    wanted = [name.strip() for name in (only or "").split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}: choose from {', '.join(ROWS)}")
    return [name for name in ROWS if not wanted or name in wanted]


def get(port: int, timeout: float) -> None:
    """One request on a fresh TCP connection, read to the server's close; raise unless 200."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(REQUEST)
        for _ in range(1024):  # bounded: the bench apps answer a few hundred bytes, then close
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    head = b"".join(chunks)[:200]
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head!r}")


def drive(port: int, n: int, timeout: float = 120.0) -> None:
    """*n* requests one after another, each on its own connection."""
    for _ in range(n):
        get(port, timeout)


@contextlib.contextmanager
def package_at(ref: Optional[str]) -> Iterator[Optional[Path]]:
    """The root of the package at commit *ref* (a temporary detached git worktree, removed on exit), or
    None without *ref*: this checkout's package."""
    if not ref:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="gpb_base_") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), ref], check=True,
                       timeout=120)  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False,
                           timeout=120)  # fmt: skip


class Logins:
    """One MySQL login per variant that needs one, and the Django rows' table; all dropped on exit."""

    def __init__(self) -> None:
        self.users: dict[str, BenchUser] = {}
        self.table = f"gpb_dj_{secrets.token_hex(4)}"
        self.admin: Any = None

    def env(self, key: str, variant: Variant) -> dict[str, str]:
        """The GPB_* environment of *variant*; *key* names its login (created on first use)."""
        env = dict(COMMON_ENV, **variant.env)
        if variant.login:
            if key not in self.users:
                self.users[key] = BenchUser()
            env.update(self.users[key].env())
        if variant.module == "django_app":
            self._django_table()
            env["GPB_DJ_TABLE"] = self.table
        return env

    def _django_table(self) -> None:
        if self.admin is None:
            self.admin = admin_connect()
            with self.admin.cursor() as cur:
                cur.execute(f"CREATE TABLE {self.table} (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)")
                cur.execute(f"INSERT INTO {self.table} (v) VALUES (1)")

    def close(self) -> None:
        try:
            for user in self.users.values():
                user.close()
        finally:
            if self.admin is not None:
                with self.admin.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS {self.table}")
                self.admin.close()

    def __enter__(self) -> Logins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server(variant: Variant, env: dict[str, str], package: Optional[Path], wrap: Sequence[str] = (),
           config: Optional[Path] = None, python: Optional[str] = None, extra: Sequence[str] = ()) -> Server:
    """A ``-w 1`` gunicorn master (not started) for *variant*: *package* (None: this checkout) first on
    its path, the interpreter *python*, the whole command prefixed by *wrap* (valgrind), the config file
    *config* instead of bench/apps/gunicorn.conf.py."""
    srv = Server(variant.module, variant.worker_class, 1, env, *extra)
    srv.env["PYTHONPATH"] = os.pathsep.join([str(package or ROOT), str(APPS)])
    args = list(srv.args)
    if python:
        args[0] = python
    if config is not None:
        args[args.index("-c") + 1] = str(config)
    srv.args = [*wrap, *args]
    return srv


def package_file(srv: Server) -> str:
    """Where ``import gunicorn_pool`` lands with *srv*'s environment and directory (the package under test)."""
    code = "import gunicorn_pool; print(gunicorn_pool.__file__)"
    out = subprocess.run([srv.args[srv.args.index("-m") - 1], "-c", code], env=srv.env, cwd=str(APPS),
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


def worker_pid(srv: Server, timeout: float) -> int:
    """The pid of *srv*'s one worker, once it ran post_worker_init."""
    srv.wait_ready(timeout)
    found = READY.search(srv.text())
    assert found is not None
    return int(found.group(1))


def check_package(srv: Server, package: Optional[Path]) -> None:
    """Refuse to measure if the worker would import another gunicorn_pool than the one under test."""
    expected = (package or ROOT).resolve()
    where = Path(package_file(srv)).resolve()
    if expected not in where.parents:
        raise RuntimeError(f"gunicorn_pool would come from {where}, not from {expected}")


def settle(seconds: float = 0.5) -> None:
    """A short pause between windows, so the worker is back in its accept loop."""
    time.sleep(seconds)


def wait_file(path: Path, timeout: float) -> bool:
    """True once *path* exists (written by the worker), False after *timeout* seconds."""
    return bool(wait_for(path.exists, timeout, 0.05))
