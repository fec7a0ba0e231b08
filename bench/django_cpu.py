"""CPU per request of the Django bench view, in the serving process: ours against stock Django.

bench/e2e.py's req/s move with whatever else the machine runs; the CPU time a
worker process spends per request (``time.process_time()``, the server's time
excluded) does not. Each row runs in its own process: Django's WSGI handler
(bench/apps/djbench, one ORM query) is called in a loop with gunicorn's
request signals, as a sync worker would; the gunicorn_pool rows run inside
gunicorn_pool's request scope (RequestScopeMiddleware) with the Django pool
service booted, as in its sync worker (where Django keeps its connection
across requests while it is clean); the "one lease per request" row turns
that off (the rule of gthread and gevent workers, and of this backend before
it kept connections).
Rows run in turn, forward then reverse, ``--rounds`` times.

``--instructions N1 N2`` counts instructions per request under valgrind's
callgrind instead (as bench/instructions.py: each row runs N1 and N2 requests
in fresh interpreters with PYTHONHASHSEED=0, the difference divided by
N2 - N1): the same figure however busy the machine is.

    python bench/django_cpu.py [--rounds 5] [--requests 2000] [--instructions 100 400]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys

from _common import BENCH, ROOT, BenchUser, admin_connect, fmt_spread, preamble, spread, table

ROWS = {
    "Django mysql backend, CONN_MAX_AGE=0": {"GPB_DJ_ENGINE": "stock", "GPB_DJ_MAX_AGE": "0"},
    "Django mysql backend, CONN_MAX_AGE=None": {"GPB_DJ_ENGINE": "stock", "GPB_DJ_MAX_AGE": "none"},
    "Django mysql backend on mysqlclient, CONN_MAX_AGE=None": {"GPB_DJ_ENGINE": "stock_mysqlclient",
                                                               "GPB_DJ_MAX_AGE": "none"},
    "gunicorn_pool.django.mysql": {"GPB_DJ_ENGINE": "ours", "GPB_SIZE": "1"},
    "gunicorn_pool.django.mysql, no request scope": {"GPB_DJ_ENGINE": "ours", "GPB_SIZE": "1", "GPB_SCOPE": "0"},
    "gunicorn_pool.django.mysql, one lease per request": {"GPB_DJ_ENGINE": "ours", "GPB_SIZE": "1",
                                                          "GPB_STICKY": "0"},
    "gunicorn_pool.django.mysql, driver mysqlclient": {"GPB_DJ_ENGINE": "ours", "GPB_SIZE": "1",
                                                       "GPB_DJ_DRIVER": "mysqlclient"},
}

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["GPB_APPS"])
os.environ["DJANGO_SETTINGS_MODULE"] = "djbench.settings"
from django.core.wsgi import get_wsgi_application
app = get_wsgi_application()
if os.environ["GPB_DJ_ENGINE"] == "ours":
    from gunicorn_pool.django import pools
    from gunicorn_pool.django.service import configured_service
    if os.environ.get("GPB_STICKY") == "0":
        pools.sticky = lambda: False
    configured_service().init_pool()  # as gunicorn_pool's sync worker boots it
    if os.environ.get("GPB_SCOPE") != "0":
        from gunicorn_pool.wsgi import RequestScopeMiddleware
        app = RequestScopeMiddleware(app)
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
           "wsgi.url_scheme": "http", "wsgi.input": __import__("io").BytesIO(), "SERVER_PROTOCOL": "HTTP/1.1",
           "wsgi.errors": sys.stderr}
def once():
    body = app(dict(environ), lambda status, headers, exc_info=None: None)
    for _ in body:
        pass
    body.close()
for _ in range(200):
    once()
n = int(os.environ["GPB_REQUESTS"])
start = time.process_time()
for _ in range(n):
    once()
print(json.dumps((time.process_time() - start) / n * 1e6))
"""


def run_row(env: dict[str, str], child: str = CHILD) -> float:
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=600,
                         check=True)  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def instructions(env: dict[str, str], n: int, child: str = CHILD) -> int:
    env = dict(env, PYTHONHASHSEED="0", GPB_REQUESTS=str(n))
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                           child], env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--instructions", nargs=2, type=int, metavar=("N1", "N2"))
    args = parser.parse_args()
    user = BenchUser()
    table_name = f"gpb_dj_{secrets.token_hex(4)}"
    admin = admin_connect()
    results: dict[str, list[float]] = {row: [] for row in ROWS}
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {table_name} (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)")
            cur.execute(f"INSERT INTO {table_name} (v) VALUES (1)")
        path = os.pathsep.join([str(ROOT), str(BENCH / "apps")])
        base = dict(os.environ, **user.env(), GPB_DJ_TABLE=table_name, GPB_APPS=str(BENCH / "apps"),
                    GPB_REQUESTS=str(args.requests), PYTHONPATH=path)  # fmt: skip
        names = list(ROWS)
        if args.instructions:
            n1, n2 = args.instructions
            counts = {row: (instructions(dict(base, **ROWS[row]), n2) - instructions(dict(base, **ROWS[row]), n1))
                      / (n2 - n1) for row in names}  # fmt: skip
        for r in range(0 if args.instructions else args.rounds):
            for row in names if r % 2 == 0 else reversed(names):
                results[row].append(run_row(dict(base, **ROWS[row])))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table_name}")
        admin.close()
        user.close()
    if args.instructions:
        ref = counts["Django mysql backend, CONN_MAX_AGE=None"]
        n = args.instructions[1] - args.instructions[0]
        print(preamble("Instructions per request in the serving process, one ORM query (Django, callgrind)",
                       f"{n} requests per row, PYTHONHASHSEED=0"))  # fmt: skip
        print(table(["row", "instructions per request", "÷ CONN_MAX_AGE=None"],
                    [[row, f"{c:,.0f}", f"{c / ref:.3f}"] for row, c in counts.items()]))  # fmt: skip
        return
    persistent = results["Django mysql backend, CONN_MAX_AGE=None"]
    rows = []
    for row, values in results.items():
        med, lo, hi = spread([p / v for v, p in zip(values, persistent)])
        rows.append([row, fmt_spread(values, 0), f"**{med:.2f}** ({lo:.2f}–{hi:.2f})"])
    print(preamble("CPU per request in the serving process, one ORM query (Django)",
                   f"{args.rounds} rounds × {args.requests} requests per row, each row in its own process; "
                   "median (min–max)"))  # fmt: skip
    print(table(["row", "CPU µs per request", "speed ÷ CONN_MAX_AGE=None (CPU of None ÷ CPU of row)"], rows))


if __name__ == "__main__":
    main()
