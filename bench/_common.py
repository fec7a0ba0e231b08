"""Shared helpers of the benchmark scripts: server settings, a dedicated login,
interleaved rounds, statistics and Markdown tables.

The server comes from the same variables as the tests: GP_MYSQL_HOST, _PORT,
_USER, _PASSWORD, _DB (default 127.0.0.1:3306, root, no password, ``test``),
and GP_PG_HOST, _PORT, _USER, _PASSWORD, _DB for PostgreSQL (default
127.0.0.1:5432, postgres, no password, ``test``). The admin login creates a
dedicated benchmark login with a random password, so the server-side
connection counts are exactly the benchmark's own.
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import pymysql

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

HOST = os.environ.get("GP_MYSQL_HOST", "127.0.0.1")
PORT = int(os.environ.get("GP_MYSQL_PORT", "3306"))
ADMIN_USER = os.environ.get("GP_MYSQL_USER", "root")
ADMIN_PASSWORD = os.environ.get("GP_MYSQL_PASSWORD", "")
DB = os.environ.get("GP_MYSQL_DB", "test")

PG_HOST = os.environ.get("GP_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("GP_PG_PORT", "5432"))
PG_ADMIN_USER = os.environ.get("GP_PG_USER", "postgres")
PG_ADMIN_PASSWORD = os.environ.get("GP_PG_PASSWORD", "")
PG_DB = os.environ.get("GP_PG_DB", "test")


def admin_connect() -> pymysql.connections.Connection:
    return pymysql.connect(host=HOST, port=PORT, user=ADMIN_USER, password=ADMIN_PASSWORD, database=DB,
                           autocommit=True, connect_timeout=3, ssl_disabled=True)  # fmt: skip


class _Login:
    """What the benchmark logins share: a fresh name and password, a URL, the GPB_* environment the
    bench apps read, closed (dropped) on leaving a with block."""

    scheme = ""
    host = ""
    port = 0
    database = ""

    def __init__(self) -> None:
        self.name = f"gpb_{secrets.token_hex(4)}"
        self.password = "pw-" + secrets.token_hex(8)

    def url(self, scheme: str = "") -> str:
        auth = f"{self.name}:{self.password}"
        return f"{scheme or self.scheme}://{auth}@{self.host}:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses and gunicorn apps (read by bench/apps/_settings.py)."""
        return {"GPB_HOST": self.host, "GPB_PORT": str(self.port), "GPB_USER": self.name,
                "GPB_PASSWORD": self.password, "GPB_DB": self.database}  # fmt: skip

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BenchUser(_Login):
    """A dedicated MySQL login for one benchmark run; dropped on exit."""

    scheme, host, port, database = "mysql", HOST, PORT, DB

    def __init__(self) -> None:
        super().__init__()
        self.admin = admin_connect()
        with self.admin.cursor() as cur:
            cur.execute(f"CREATE USER '{self.name}'@'%%' IDENTIFIED BY %s", (self.password,))
            cur.execute(f"GRANT ALL ON `{DB}`.* TO '{self.name}'@'%'")

    def kwargs(self) -> dict[str, Any]:
        """PyMySQL keyword arguments for this login."""
        return dict(host=HOST, port=PORT, user=self.name, password=self.password, database=DB, autocommit=True)

    def count(self) -> int:
        """Server-side sessions of this login (PROCESSLIST)."""
        with self.admin.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (self.name,))
            return int(cur.fetchone()[0])

    def kill_all(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (self.name,))
            for (cid,) in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(cid)}")
                except pymysql.err.OperationalError:
                    pass

    def close(self) -> None:
        try:
            self.kill_all()
            with self.admin.cursor() as cur:
                cur.execute(f"DROP USER IF EXISTS '{self.name}'@'%'")
        finally:
            self.admin.close()


def pg_admin_connect() -> Any:
    """An autocommit psycopg connection as the PostgreSQL admin login."""
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_ADMIN_USER, password=PG_ADMIN_PASSWORD or None,
                           dbname=PG_DB, autocommit=True, connect_timeout=3)  # fmt: skip


class PGBenchUser(_Login):
    """A dedicated PostgreSQL login for one benchmark run; dropped (its sessions ended) on exit."""

    scheme, host, port, database = "postgresql", PG_HOST, PG_PORT, PG_DB

    def __init__(self) -> None:
        super().__init__()
        self.admin = pg_admin_connect()
        self.admin.execute(f"CREATE ROLE \"{self.name}\" LOGIN PASSWORD '{self.password}'")
        self.admin.execute(f'GRANT ALL ON DATABASE "{PG_DB}" TO "{self.name}"')

    def kwargs(self) -> dict[str, Any]:
        """psycopg keyword arguments for this login (autocommit, as the pools lend by default)."""
        return dict(host=PG_HOST, port=PG_PORT, user=self.name, password=self.password, dbname=PG_DB,
                    autocommit=True)  # fmt: skip

    def config(self) -> dict[str, Any]:
        """A gunicorn_pool config for this login."""
        return dict(adapter="postgresql", host=PG_HOST, port=PG_PORT, user=self.name, password=self.password,
                    database=PG_DB)  # fmt: skip

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=PG_HOST, port=PG_PORT, user=self.name, password=self.password, dbname=PG_DB)

    def count(self) -> int:
        """Server-side sessions of this login (pg_stat_activity)."""
        row = self.admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self.name,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        try:
            self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                               (self.name,))  # fmt: skip
            wait_for(lambda: self.count() == 0, 10)
            self.admin.execute(f'DROP OWNED BY "{self.name}"')
            self.admin.execute(f'DROP ROLE IF EXISTS "{self.name}"')
        finally:
            self.admin.close()



def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, in forward then reverse order, to cancel drift."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(variants[name]())
    return out


def bracketed(base: Callable[[], float], variants: dict[str, Callable[[], float]], rounds: int
              ) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """Run each variant between two runs of *base*, round after round, alternating the order.

    Returns (all base values, values per variant, ratios per variant), where a
    ratio is the variant's value over the mean of the two base runs around it:
    drift on a shared machine hits both sides of the ratio alike.
    """
    names = list(variants)
    values: dict[str, list[float]] = {name: [] for name in names}
    rel: dict[str, list[float]] = {name: [] for name in names}
    base_values = [base()]
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            value = variants[name]()
            base_values.append(base())
            values[name].append(value)
            rel[name].append(value / ((base_values[-2] + base_values[-1]) / 2))
    return base_values, values, rel


def bracketed_rows(base_name: str, base_values: Sequence[float], values: dict[str, list[float]],
                   rel: dict[str, list[float]]) -> list[list[str]]:  # fmt: skip
    """Table rows of a :func:`bracketed` run: µs/op median, min, max and the ratio to the base."""
    med, lo, hi = spread(base_values)
    rows = [[base_name, fmt(med), fmt(lo), fmt(hi), "**1.00**"]]
    for name in values:
        med, lo, hi = spread(values[name])
        rmed, rlo, rhi = spread(rel[name])
        rows.append([name, fmt(med), fmt(lo), fmt(hi), f"**{rmed:.2f}** ({rlo:.2f}–{rhi:.2f})"])
    return rows


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def ratios(values: Sequence[float], base: Sequence[float], invert: bool = False) -> list[float]:
    """Per-round ratios value/base (base/value with *invert*), rounds paired."""
    return [(b / v if invert else v / b) for v, b in zip(values, base)]


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def fmt_spread(values: Sequence[float], digits: int = 1) -> str:
    med, lo, hi = spread(values)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def versions(*names: str) -> str:
    parts = [f"Python {platform.python_version()}"]
    for name in ("gunicorn-pool", "PyMySQL", "DBUtils", "SQLAlchemy", "gevent", "gunicorn", "psycopg", "psycopg-pool",
                 *names):  # fmt: skip
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(dict.fromkeys(parts))


def server_version() -> str:
    conn = admin_connect()
    try:
        return str(conn.get_server_info())
    finally:
        conn.close()


def pg_server_version() -> str:
    with pg_admin_connect() as conn:
        return "PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0])


def preamble(title: str, settings: str, postgresql: bool = False, mysql: bool = True) -> str:
    """Heading lines: what ran, when, on what (the MySQL server unless not *mysql*, the
    PostgreSQL server with *postgresql*)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    servers = [f"server {server_version()} at {HOST}:{PORT}"] if mysql else []
    if postgresql:
        servers.append(f"{pg_server_version()} at {PG_HOST}:{PG_PORT}")
    return (
        f"## {title}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {versions()}; {'; '.join(servers)}; "
        f"{os.cpu_count()} CPUs, load {load}\n\n"
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`: {settings}\n"
    )


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Optional[Any]:
    """Poll *predicate* until truthy or *timeout* seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
