"""Throughput and worst checkout wait when more callers than connections share a pool.

Two parts, each with rows interleaved over rounds (forward, then reverse order):

- threads: 8 threads share 4 connections (``--threads``, ``--size``);
- gevent: 100 greenlets share 10 connections (``--greenlets``, ``--gsize``),
  run in a subprocess that calls ``gevent.monkey.patch_all()`` first.

Every caller loops for ``--seconds``: checkout, SELECT 1, checkin. The ceiling
is the same callers with a raw connection each (no pool, no waiting). Ratios
are taken per round against that row, then summarised as median (min–max).
"Wait" is the time spent inside checkout; "fairness" is the fewest operations
any caller completed over the mean (1.00 = perfectly even). Two reference
rows: a minimal first-come-first-served pool (a lock, a deque and one lock per
waiter, no features), the floor for any fair pool; and raw connections for only
as many callers as there are connections (is the connection count the limit?).

    python bench/contention.py [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from _common import BenchUser, fmt, preamble, spread, table
from _variants import NAMES, make, select1


def run_once(variant: Any, workers: int, seconds: float, spawn: Callable[..., Any], join: Callable[[list], None]
             ) -> dict[str, Any]:  # fmt: skip
    """All *workers* loop for *seconds*; return ops/s, wait percentiles and fairness."""
    counts = [0] * workers
    waits: list[list[float]] = [[] for _ in range(workers)]
    errors = [0]
    start_at = time.monotonic() + 0.05
    end_at = start_at + seconds
    perf = time.perf_counter

    def body(i: int) -> None:
        acquire, release, mine = variant.acquire, variant.release, waits[i]
        while time.monotonic() < start_at:
            time.sleep(0.001)
        n = 0
        while time.monotonic() < end_at:
            t0 = perf()
            try:
                conn = acquire(i)
            except Exception:  # noqa: BLE001 - a timeout counts as an error, not a crash
                errors[0] += 1
                continue
            mine.append(perf() - t0)
            try:
                select1(conn)
            finally:
                release(i, conn)
            n += 1
        counts[i] = n

    join([spawn(body, i) for i in range(workers)])
    elapsed = max(time.monotonic(), end_at) - start_at
    flat = sorted(w for ws in waits for w in ws)
    mean = sum(counts) / workers
    return {
        "ops": sum(counts) / elapsed,
        "p99_wait_ms": flat[int(len(flat) * 0.99)] * 1000 if flat else 0.0,
        "max_wait_ms": flat[-1] * 1000 if flat else 0.0,
        "fairness": min(counts) / mean if mean else 0.0,
        "errors": errors[0],
    }


def run_part(mode: str, kw: dict[str, Any], url: str, workers: int, size: int, rounds: int, seconds: float
             ) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    if mode == "gevent":
        import gevent

        def spawn(fn: Callable[[int], None], i: int) -> Any:
            return gevent.spawn(fn, i)

        def join(items: list) -> None:
            gevent.joinall(items, timeout=seconds + 60)
    else:
        import threading

        def spawn(fn: Callable[[int], None], i: int) -> Any:
            t = threading.Thread(target=fn, args=(i,), daemon=True)
            t.start()
            return t

        def join(items: list) -> None:
            for t in items:
                t.join(seconds + 60)

    few = f"raw connection per worker, only {size} workers"
    names = [*NAMES, few]
    callers = {name: size if name == few else workers for name in names}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            # One row's connections at a time: 100 raw ones plus every pool's would pass max_connections.
            variant = make(NAMES[0] if name == few else name, kw, url, callers[name], size)
            try:
                run_once(variant, callers[name], min(0.2, seconds), spawn, join)  # warm-up, not reported
                results[name].append(run_once(variant, callers[name], seconds, spawn, join))
            finally:
                variant.close()
    return results


def report(title: str, results: dict[str, list[dict[str, Any]]]) -> str:
    base = [r["ops"] for r in results[NAMES[0]]]
    rows = []
    for name, runs in results.items():
        ops = [r["ops"] for r in runs]
        rel = [o / b for o, b in zip(ops, base)]
        med, lo, hi = spread(rel)
        p99 = spread([r["p99_wait_ms"] for r in runs])
        rows.append([
            name, fmt(spread(ops)[0], 0), f"{fmt(min(ops), 0)}–{fmt(max(ops), 0)}",
            f"**{med:.2f}** ({lo:.2f}–{hi:.2f})", f"{p99[0]:.2f}",
            f"{max(r['max_wait_ms'] for r in runs):.1f}", f"{spread([r['fairness'] for r in runs])[0]:.2f}",
            sum(r["errors"] for r in runs),
        ])  # fmt: skip
    heads = ["row", "median ops/s", "min–max", "÷ raw", "p99 wait ms", "worst wait ms", "fairness", "errors"]
    return f"### {title}\n\n" + table(heads, rows)


def gevent_child(args: argparse.Namespace) -> None:
    from gevent import monkey

    monkey.patch_all()
    kw = json.loads(os.environ["GPB_KW"])
    results = run_part("gevent", kw, os.environ["GPB_URL"], args.greenlets, args.gsize, args.rounds, args.seconds)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of one row in one round")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=4, help="connections shared by the threads")
    parser.add_argument("--greenlets", type=int, default=100)
    parser.add_argument("--gsize", type=int, default=10, help="connections shared by the greenlets")
    parser.add_argument("--only", choices=("threads", "gevent"), help="run one part only")
    parser.add_argument("--gevent-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gevent_child:
        return gevent_child(args)
    out = []
    with BenchUser() as user:
        kw, url = user.kwargs(), user.url("mysql+pymysql")
        if args.only in (None, "threads"):
            res = run_part("threads", kw, url, args.threads, args.size, args.rounds, args.seconds)
            out.append(report(f"threads: {args.threads} threads, {args.size} connections", res))
        if args.only in (None, "gevent"):
            env = dict(os.environ, GPB_KW=json.dumps(kw), GPB_URL=url)
            cmd = [sys.executable, str(Path(__file__)), "--gevent-child", "--rounds", str(args.rounds),
                   "--seconds", str(args.seconds), "--greenlets", str(args.greenlets), "--gsize", str(args.gsize)]
            budget = 60 + args.rounds * (len(NAMES) + 1) * (args.seconds + 8)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=budget, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"gevent part failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(report(f"gevent: {args.greenlets} greenlets, {args.gsize} connections (patch_all)", res))
    print(preamble("Contention: callers sharing fewer connections",
                   f"{args.rounds} interleaved rounds × {args.seconds:g} s per row; ÷ raw = per-round ops/s "
                   "÷ raw ops/s, median (min–max); waits are checkout times over all rounds"))  # fmt: skip
    print("\n\n".join(out))
    print("\nTarget: gunicorn_pool ≥ 0.8 × raw in both parts, worst wait bounded.")


if __name__ == "__main__":
    main()
