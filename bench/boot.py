"""Cold start: the first request after a worker boots, and the cost of warming pools at boot.

Part 1, first request ÷ warm request: ``gunicorn -w 1`` (sync) is started
``--boots`` times per row (rows take turns). Once the worker has run
``post_worker_init`` the script waits ``--pause`` seconds (a fresh worker
rarely gets traffic the same millisecond), times one GET (new TCP connection,
as every sync request), then ``--warm`` more GETs, then after the same pause
one more ("warm after pause": what idling alone costs); the ratio is the first
request's latency over the median warm one, per boot. The baselines open their
connection lazily, inside the first request; gunicorn_pool opens it at boot.
The "no database, stock sync worker" row is gunicorn's own first request (a
fresh worker runs its request code and writes to copy-on-write pages for the
first time); the "gunicorn_pool.Worker" rows run gunicorn_pool.warmup first
(synthetic requests through gunicorn's HTTP code, a first use of every pooled
connection), and one gunicorn_pool row turns that off (``warm_up=False``) to
show what opening the pool at boot does alone. "Warm after pause" is a warm
worker's request after the same pause: what waking an idle process costs on
this machine, with no cold start in it.

Part 2, warm-up for W workers × N connections: gunicorn_pool with
``min_size = max_size = N`` against the same app with no pool (nothing opened at
boot), interleaved: the time from starting the master to every worker having
run ``post_worker_init``, the pool's own warm-up time per worker (from its
"opened N connection(s) in X ms" log line) and the worker warm-up's (from its
"worker warm-up http .. ms, db .. ms, threads .. ms" line).

    python bench/boot.py [--boots 5] [--pause 1.0] [--warm 50] [--tls-default]
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import time
from typing import Any

from _common import BenchUser, fmt, preamble, spread, table
from _server import Server

ROWS = {
    "no database, stock sync worker (gunicorn's own first request)": ("hello_app", "sync", {}),
    "no database, gunicorn_pool.Worker (worker warm-up only)": ("hello_app", "gunicorn_pool.Worker", {}),
    "gunicorn_pool (opened at boot, worker warm-up)": ("gunicorn_pool_app", "gunicorn_pool.Worker", {}),
    "gunicorn_pool, warm_up=False (opened at boot only)": ("gunicorn_pool_app", "gunicorn_pool.Worker",
                                                           {"GPB_WARM_UP": "0"}),
    "module-global connection (lazy)": ("global_conn_app", "sync", {}),
    "DBUtils PooledDB (lazy)": ("dbutils_app", "sync", {}),
    "SQLAlchemy QueuePool (lazy)": ("sqlalchemy_app", "sync", {}),
}
WARMUP = [(1, 1), (2, 1), (2, 4), (4, 4), (4, 10)]
OPENED = re.compile(r"opened (\d+) connection\(s\) in ([\d.]+) ms")
WARMED = re.compile(r"worker warm-up http ([\d.]+) ms, db ([\d.]+) ms, threads ([\d.]+) ms")


def get(port: int) -> float:
    """One GET / on a new connection; its latency in ms."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET / answered {resp.status}")
    finally:
        conn.close()
    return (time.perf_counter() - start) * 1000


def first_request(module: str, klass: str, env: dict[str, str], pause: float, warm: int) -> dict[str, float]:
    with Server(module, klass, 1, env) as server:
        server.wait_ready()
        time.sleep(pause)
        first = get(server.port)
        warms = [get(server.port) for _ in range(warm)]
        time.sleep(pause)
        idle = get(server.port)  # a warm worker after the same pause: idle wake-up, no cold start
    med = statistics.median(warms)
    return {"first": first, "warm": med, "idle": idle, "ratio": first / med}


def part1(users: dict[str, BenchUser], boots: int, pause: float, warm: int, tls: bool) -> str:
    names = list(ROWS)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for b in range(boots):
        for name in names if b % 2 == 0 else list(reversed(names)):
            module, klass, extra = ROWS[name]
            env = dict(users[name].env(), GPB_SIZE="1", **extra, **({"GPB_SSL": "default"} if tls else {}))
            results[name].append(first_request(module, klass, env, pause, warm))
    rows = []
    floor = spread([r["first"] for r in results[names[0]]])[0]
    for name in names:
        runs = results[name]
        med, lo, hi = spread([r["ratio"] for r in runs])
        first, warm_ms = spread([r["first"] for r in runs])[0], spread([r["warm"] for r in runs])[0]
        idle = spread([r["idle"] for r in runs])[0]
        rows.append([name, f"{first:.2f}", f"{warm_ms:.2f}", f"{idle:.2f}", f"**{med:.2f}** ({lo:.2f}–{hi:.2f})",
                     f"{first / idle:.2f}", f"{first - floor:+.2f}"])  # fmt: skip
    tls_note = "PyMySQL defaults (TLS preferred)" if tls else "ssl_disabled=True"
    title = (f"first request after boot: gunicorn -w 1 sync, {boots} boots per row, {pause:g} s pause, "
             f"{warm} warm requests; baselines connect with {tls_note}")  # fmt: skip
    heads = ["row", "first ms", "warm ms", "warm after pause ms", "first ÷ warm", "first ÷ warm after pause",
             "first − floor's first ms"]  # fmt: skip
    return f"### {title}\n\n" + table(heads, rows)


def boot_once(module: str, klass: str, workers: int, env: dict[str, str], *extra: str) -> dict[str, Any]:
    with Server(module, klass, workers, env, *extra) as server:
        last = server.wait_ready()
        ready = (last - server.started) * 1000
        text = server.text()
    opened = [(int(n), float(ms)) for n, ms in OPENED.findall(text)]
    warmed = [sum(float(ms) for ms in steps) for steps in WARMED.findall(text)]
    return {"ready_ms": ready, "opened": opened, "warmed": warmed}


def part2(user: BenchUser, rounds: int) -> str:
    rows = []
    for workers, n in WARMUP:
        pool_runs, bare_runs = [], []
        for r in range(rounds):
            pair = [("pool", "gunicorn_pool_app", "gunicorn_pool.Worker", {"GPB_MIN": str(n)}),
                    ("bare", "global_conn_app", "sync", {})]  # fmt: skip
            for kind, module, klass, extra_env in pair if r % 2 == 0 else reversed(pair):
                res = boot_once(module, klass, workers, dict(user.env(), **extra_env), "--log-level", "info")
                (pool_runs if kind == "pool" else bare_runs).append(res)
        opened = [ms for run in pool_runs for count, ms in run["opened"]]
        warmed = [ms for run in pool_runs for ms in run["warmed"]]
        counts = {count for run in pool_runs for count, _ in run["opened"]}
        pool_ready = [r["ready_ms"] for r in pool_runs]
        bare_ready = [r["ready_ms"] for r in bare_runs]
        extra = [p - b for p, b in zip(pool_ready, bare_ready)]
        rows.append([f"{workers} × {n}", fmt(spread(bare_ready)[0]), fmt(spread(pool_ready)[0]),
                     f"{fmt(spread(extra)[0])} ({fmt(min(extra))}–{fmt(max(extra))})",
                     f"{fmt(spread(opened)[0])} ({fmt(min(opened))}–{fmt(max(opened))})" if opened else "–",
                     f"{fmt(spread(warmed)[0])} ({fmt(min(warmed))}–{fmt(max(warmed))})" if warmed else "–",
                     ", ".join(str(c) for c in sorted(counts))])  # fmt: skip
    title = f"warm-up: gunicorn -w W (sync) with min_size = max_size = N, {rounds} boots per row and kind"
    heads = ["W × N", "all ready ms, no pool", "all ready ms, gunicorn_pool", "difference ms",
             "pool warm-up per worker ms", "worker warm-up ms (http + db + threads)",
             "connections opened"]  # fmt: skip
    return f"### {title}\n\n" + table(heads, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=5, help="boots per row (default 5)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between readiness and the first request")
    parser.add_argument("--warm", type=int, default=50, help="warm requests after the first (default 50)")
    parser.add_argument("--tls-default", action="store_true", help="baselines keep PyMySQL's TLS 'preferred' mode")
    parser.add_argument("--only", choices=("first", "warmup"))
    args = parser.parse_args()
    out = []
    if args.only in (None, "first"):
        users = {name: BenchUser() for name in ROWS}
        try:
            out.append(part1(users, args.boots, args.pause, args.warm, args.tls_default))
        finally:
            for user in users.values():
                user.close()
    if args.only in (None, "warmup"):
        with BenchUser() as user:
            out.append(part2(user, max(3, args.boots // 2 + 1)))
    print(preamble("Cold start", "first request after boot ÷ warm request; warm-up time; medians (min–max)"))
    print("\n\n".join(out))
    print("\nTarget: gunicorn_pool first request ≤ 1.5 × warm.")


if __name__ == "__main__":
    main()
