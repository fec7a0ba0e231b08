"""End to end: real gunicorn workers driven by wrk on loopback, SELECT 1 per request.

Four modes, each with every variant's server up at once (one MySQL or
PostgreSQL login per variant, so the server-side session counts are exact) and
wrk runs interleaved over rounds (forward, then reverse order):

- sync:   ``-w 2`` sync workers (``gunicorn_pool.Worker`` for gunicorn_pool),
          wrk ``-c 4``; baseline: one module-global connection per worker.
- gevent: ``-w 2`` gevent workers (``gunicorn_pool.GeventWorker``), wrk
          ``-c 16``, pools of 10 per worker; baseline: SQLAlchemy QueuePool.
          A reference row (bench/apps/bare_list_app.py) is the ceiling of
          any pool: a bare list of connections per worker, nothing else.
- django-sync, django-gevent: a Django view doing one ORM query
          (bench/apps/djbench) on ``gunicorn_pool.django.mysql`` against
          Django's own MySQL backend (on PyMySQL) with ``CONN_MAX_AGE=0`` and
          with ``CONN_MAX_AGE=None``; ``-w 2``, wrk ``-c 4`` (sync) and
          ``-c 50`` (gevent, our pool's max_size 10 per worker). Ratios to
          both stock rows.
- flask-sa-sync, flask-sa-gevent: a Flask-SQLAlchemy app doing
          ``session.execute(select(1))`` per request (bench/apps/flask_sa_app.py):
          the stock engine (QueuePool), the same app with ``adopt(db)``, and an
          ``EnginePool`` engine; ``-w 2``, wrk ``-c 4`` (sync) and ``-c 16``
          (gevent, pools of 10 per worker). Ratios to the stock engine.
- mysqlclient-sync: ``-w 2`` sync workers, wrk ``-c 4``: gunicorn_pool on
          mysqlclient (``driver: mysqlclient``) against gunicorn_pool on PyMySQL,
          with a module-global connection of each driver per worker beside them.
- pg-sync, pg-gevent: the same on PostgreSQL through psycopg 3, with a
          psycopg_pool ``ConnectionPool`` row; baselines: a module-global
          psycopg connection per worker (sync), SQLAlchemy QueuePool (gevent:
          ``wrk -c8`` and pools of 4 per worker, so that every row's sessions
          fit a default ``max_connections`` of 100 beside other clients).

Reports req/s, latency p50/p99 (wrk's), errors (socket errors and non-2xx)
and the largest number of server sessions seen (PROCESSLIST or
pg_stat_activity) during the run. Needs ``wrk`` (``apt-get install wrk``).

    python bench/e2e.py [--rounds 3] [--seconds 5] [--only MODE]
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import subprocess
import threading
from typing import Any

from _common import BenchUser, PGBenchUser, admin_connect, fmt, preamble, spread, table
from _server import Server

MODES = {
    # mode: (worker class for others, for gunicorn_pool, wrk connections, pool size, variants, baselines)
    "sync": ("sync", "gunicorn_pool.Worker", 4, 1,
             ["global_conn_app", "connect_app", "dbutils_app", "sqlalchemy_app", "gunicorn_pool_app"],
             ["global_conn_app"]),
    "gevent": ("gevent", "gunicorn_pool.GeventWorker", 16, 10,
               ["sqlalchemy_app", "connect_app", "dbutils_app", "gunicorn_pool_app", "bare_list_app"],
               ["sqlalchemy_app"]),
    "django-sync": ("sync", "gunicorn_pool.Worker", 4, 1, ["dj_stock_age0", "dj_stock_persistent", "dj_ours"],
                    ["dj_stock_age0", "dj_stock_persistent"]),
    "django-gevent": ("gevent", "gunicorn_pool.GeventWorker", 50, 10,
                      ["dj_stock_age0", "dj_stock_persistent", "dj_ours"], ["dj_stock_age0", "dj_stock_persistent"]),
    "flask-sa-sync": ("sync", "gunicorn_pool.Worker", 4, 1, ["fsa_stock", "fsa_adopt", "fsa_enginepool"],
                      ["fsa_stock"]),
    "flask-sa-gevent": ("gevent", "gunicorn_pool.GeventWorker", 16, 10, ["fsa_stock", "fsa_adopt", "fsa_enginepool"],
                        ["fsa_stock"]),
    "mysqlclient-sync": ("sync", "gunicorn_pool.Worker", 4, 1,
                         ["global_conn_app", "mysqlclient_global_app", "gunicorn_pool_app", "gp_mysqlclient"],
                         ["gunicorn_pool_app", "mysqlclient_global_app"]),
    "pg-sync": ("sync", "gunicorn_pool.Worker", 4, 1,
                ["pg_global_conn_app", "pg_connect_app", "pg_psycopg_pool_app", "pg_sqlalchemy_app",
                 "pg_gunicorn_pool_app"], ["pg_global_conn_app"]),
    # Smaller than the MySQL gevent mode: every row's server stays up, holding its sessions, and
    # PostgreSQL's max_connections is 100 by default (4 rows x 2 workers x 4 at most here).
    "pg-gevent": ("gevent", "gunicorn_pool.GeventWorker", 8, 4,
                  ["pg_sqlalchemy_app", "pg_psycopg_pool_app", "pg_gunicorn_pool_app", "pg_bare_list_app"],
                  ["pg_sqlalchemy_app"]),
}  # fmt: skip
#: Django rows: one app module, told apart by its environment (bench/apps/djbench/settings.py).
DJANGO = {
    "dj_stock_age0": {"GPB_DJ_ENGINE": "stock", "GPB_DJ_MAX_AGE": "0"},
    "dj_stock_persistent": {"GPB_DJ_ENGINE": "stock", "GPB_DJ_MAX_AGE": "none"},
    "dj_ours": {"GPB_DJ_ENGINE": "ours"},
}
#: Flask-SQLAlchemy rows: one app module (bench/apps/flask_sa_app.py), told apart by GPB_SA.
FLASK_SA = {f"fsa_{mode}": {"GPB_SA": mode} for mode in ("stock", "adopt", "enginepool")}
#: gunicorn_pool_app on another MySQL driver, told apart by GPB_DRIVER.
DRIVERS = {"gp_mysqlclient": {"GPB_DRIVER": "mysqlclient"}}
GP_ROWS = ("gunicorn_pool_app", "dj_ours", "fsa_adopt", "fsa_enginepool", "gp_mysqlclient")
LABELS = {
    "global_conn_app": "module-global connection per worker",
    "connect_app": "connect per request",
    "dbutils_app": "DBUtils PooledDB (defaults)",
    "sqlalchemy_app": "SQLAlchemy QueuePool",
    "gunicorn_pool_app": "gunicorn_pool",
    "mysqlclient_global_app": "module-global mysqlclient connection per worker",
    "gp_mysqlclient": "gunicorn_pool, driver mysqlclient",
    "bare_list_app": "reference: bare list per worker (no limit, check or wait)",
    "dj_stock_age0": "Django mysql backend, CONN_MAX_AGE=0",
    "dj_stock_persistent": "Django mysql backend, CONN_MAX_AGE=None",
    "dj_ours": "gunicorn_pool.django.mysql",
    "fsa_stock": "Flask-SQLAlchemy, stock engine (QueuePool)",
    "fsa_adopt": "Flask-SQLAlchemy + gunicorn_pool.sqlalchemy.adopt(db)",
    "fsa_enginepool": "Flask + gunicorn_pool.sqlalchemy EnginePool engine",
    "pg_global_conn_app": "module-global psycopg connection per worker",
    "pg_connect_app": "connect per request (psycopg)",
    "pg_psycopg_pool_app": "psycopg_pool ConnectionPool",
    "pg_sqlalchemy_app": "SQLAlchemy QueuePool (postgresql+psycopg)",
    "pg_gunicorn_pool_app": "gunicorn_pool (PostgreSQL)",
    "pg_bare_list_app": "reference: bare list of psycopg connections per worker",
}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict[str, Any]:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = sum(int(x) for x in sock.groups()) if sock else 0
    bad = int(non2xx.group(1)) if non2xx else 0
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": latency("50"), "p99": latency("99"),
            "errors": socket_errors + bad, "non2xx": bad}  # fmt: skip


def drive(server: Server, user: Any, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run against *server*, sampling the login's sessions meanwhile."""
    peak = [user.count()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak.append(user.count())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", server.url]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    finally:
        done.set()
        sampler.join(5)
    result = parse_wrk(out)
    result["sessions"] = max(peak)
    return result


def run_mode(mode: str, rounds: int, seconds: float) -> str:
    klass, gp_klass, conns, size, variants, baselines = MODES[mode]
    users: dict[str, Any] = {v: PGBenchUser() if mode.startswith("pg-") else BenchUser() for v in variants}
    servers: dict[str, Server] = {}
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    table_name = f"gpb_dj_{secrets.token_hex(4)}"
    if mode.startswith("django"):
        admin = admin_connect()
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {table_name} (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)")
            cur.execute(f"INSERT INTO {table_name} (v) VALUES (1)")
    try:
        for v in variants:
            env = dict(users[v].env(), GPB_SIZE=str(size), GPB_DJ_TABLE=table_name,
                       **DJANGO.get(v, {}), **FLASK_SA.get(v, {}), **DRIVERS.get(v, {}))  # fmt: skip
            module = "django_app" if v in DJANGO else "flask_sa_app" if v in FLASK_SA else v
            module = "gunicorn_pool_app" if v in DRIVERS else module
            ours = v in GP_ROWS or v.endswith("gunicorn_pool_app")
            servers[v] = Server(module, gp_klass if ours else klass, 2, env).start()
        for v in variants:
            servers[v].wait_ready()
        for v in variants:  # warm-up, not reported
            drive(servers[v], users[v], conns, 1)
        for r in range(rounds):
            for v in variants if r % 2 == 0 else list(reversed(variants)):
                results[v].append(drive(servers[v], users[v], conns, seconds))
    finally:
        for server in servers.values():
            server.stop()
        for user in users.values():
            user.close()
        if mode.startswith("django"):
            with admin.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {table_name}")
            admin.close()
    rows = []
    for v in variants:
        runs = results[v]
        rps = [x["rps"] for x in runs]
        ratios = []
        for baseline in baselines:
            base = [x["rps"] for x in results[baseline]]
            med, lo, hi = spread([a / b if b else float("nan") for a, b in zip(rps, base)])
            ratios.append(f"**{med:.2f}** ({lo:.2f}–{hi:.2f})")
        rows.append([LABELS[v], fmt(spread(rps)[0], 0), f"{fmt(min(rps), 0)}–{fmt(max(rps), 0)}", *ratios,
                     f"{spread([x['p50'] for x in runs])[0]:.2f}", f"{spread([x['p99'] for x in runs])[0]:.2f}",
                     _errors(runs), max(x["sessions"] for x in runs)])  # fmt: skip
    heads = ["row", "median req/s", "min–max", *(f"÷ {LABELS[b]}" for b in baselines), "p50 ms", "p99 ms", "errors",
             "max sessions"]  # fmt: skip
    title = f"{mode}: gunicorn -w 2 -k {klass} (gunicorn_pool: -k {gp_klass}), wrk -t1 -c{conns}"
    return f"### {title}\n\n" + table(heads, rows)


def _errors(runs: list[dict[str, Any]]) -> str:
    total, bad = sum(x["errors"] for x in runs), sum(x["non2xx"] for x in runs)
    return f"{total} ({bad} non-2xx)" if bad else str(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of one wrk run")
    parser.add_argument("--only", choices=tuple(MODES))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    out = [run_mode(mode, args.rounds, args.seconds) for mode in MODES if args.only in (None, mode)]
    orm = args.only and args.only.startswith(("django", "flask"))
    title = "one ORM query per request" if orm else "SELECT 1 per request"
    print(preamble(f"End to end: gunicorn + wrk, {title}",
                   f"{args.rounds} interleaved rounds × {args.seconds:g} s wrk runs per row; ratios per round, "
                   "median (min–max); p50/p99 are medians of wrk's per-run percentiles; max sessions = most "
                   "sessions of the row's own login seen during its runs",
                   postgresql=args.only is None or args.only.startswith("pg-"),
                   mysql=args.only is None or not args.only.startswith("pg-")))  # fmt: skip
    print("\n\n".join(out))
    print("\nTargets: sync gunicorn_pool ≥ 0.97 × module-global; gevent gunicorn_pool ≥ 1.3 × SQLAlchemy"
          " (MySQL and PostgreSQL alike); django-sync ≥ 2 × CONN_MAX_AGE=0 and ≥ 1.0 × CONN_MAX_AGE=None;"
          " django-gevent ≥ 1.0 × stock with at most max_size (10) sessions per worker; flask-sa-sync adopt ≥ 1.0 ×"
          " stock, flask-sa-gevent ≥ 1.2 × stock.")


if __name__ == "__main__":
    main()
