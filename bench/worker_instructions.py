"""Instructions per request of a whole gunicorn worker, stock against ours (callgrind on the real worker).

bench/instructions.py, django_cpu.py and flask_sa_cpu.py count loops in one
process; this counts everything a real worker runs in user space per request:
gunicorn's parser and response code, the worker loop, the app, the driver and
our worker class and request scope. For each variant (rows: bench/_worker.py)
the gunicorn master runs under ``valgrind --tool=callgrind
--trace-children=yes`` with ``-w 1``, ``--timeout 900`` and
``PYTHONHASHSEED=0``. After ``--warmup`` requests, for each of two windows
(N1 and N2 requests): ``callgrind_control -z <worker pid>``, N requests one
after another (one TCP connection each, as wrk against a sync worker),
``callgrind_control -d <worker pid>``, and the dump's ``summary:`` line. Per
request = (W2 - W1) / (N2 - N1): start-up, warm-up and the fixed cost of a
window cancel out. Windows of 1,000 requests or more are needed: one gen-2
collection of a Django worker is ~18 M instructions.

    python bench/worker_instructions.py [--n1 100 --n2 1100] [--rounds 1] [--only hello,plain,django,flask-sa]
                                        [--base REF]

With ``--base REF`` the ours side also runs on that commit's package (a
temporary git worktree), side by side with this checkout's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from _common import preamble, spread, table
from _worker import ROWS, Logins, Variant, check_package, drive, package_at, pick_rows, server, settle, worker_pid

SUMMARY = re.compile(r"^summary:\s+(\d+)", re.M)
TOTALS = re.compile(r"^totals:\s+(\d+)", re.M)


def control(flag: str, pid: int) -> None:
    """``callgrind_control -z|-d <pid>`` (vgdb reaches the worker even while it waits in select)."""
    proc = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "OK" not in proc.stdout:
        raise RuntimeError(f"callgrind_control {flag} {pid}: {proc.stdout} {proc.stderr}")


def dumped(out_dir: Path, pid: int, number: int, timeout: float = 60.0) -> int:
    """The instructions since the last zeroing in the worker's dump number *number*: its ``summary:``
    line, read once the ``totals:`` line at the end shows the file complete. (``totals:``, the sum of the
    file's cost lines, can read more than ``summary:`` in a fresh worker's first dumps, by costs older
    than the zeroing, not by the window's work; the first dump after the warm-up is discarded.)"""
    path = out_dir / f"cg.{pid}.{number}"
    for _ in range(int(timeout / 0.1)):
        text = path.read_text() if path.exists() else ""
        summary, totals = SUMMARY.search(text), TOTALS.search(text)
        if summary is not None and totals is not None:
            if summary.group(1) != totals.group(1):
                print(f"# {path.name}: summary {summary.group(1)}, totals {totals.group(1)}", file=sys.stderr)
            return int(summary.group(1))
        settle(0.1)
    raise RuntimeError(f"no complete callgrind dump {path} after {timeout:g} s")


def per_request(variant: Variant, env: dict[str, str], package: Optional[Path], args: argparse.Namespace) -> float:
    """(W2 - W1) / (N2 - N1) for one fresh worker of *variant* under callgrind."""
    python = os.path.realpath(sys.executable)  # the interpreter itself, not a shim script
    with tempfile.TemporaryDirectory(prefix="gpb_cg_") as tmp:
        out_dir = Path(tmp)
        wrap = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out_dir}/cg.%p"]
        srv = server(variant, env, package, wrap=wrap, python=python, extra=("--timeout", "900"))
        check_package(srv, package)
        srv.start()
        try:
            pid = worker_pid(srv, timeout=900)
            drive(srv.port, args.warmup)
            control("-z", pid)
            control("-d", pid)  # dump 1, discarded
            dumped(out_dir, pid, 1)
            windows = []
            for number, n in enumerate((args.n1, args.n2), start=2):
                settle()
                control("-z", pid)
                drive(srv.port, n)
                control("-d", pid)
                windows.append(dumped(out_dir, pid, number))
        finally:
            srv.stop(timeout=120)
    return (windows[1] - windows[0]) / (args.n2 - args.n1)


def cell(values: list[float]) -> str:
    med, lo, hi = spread(values)
    return f"{med:,.0f}" if len(values) == 1 else f"{med:,.0f} ({lo:,.0f}–{hi:,.0f})"


def ratio_cell(values: list[float], base: list[float]) -> str:
    med, lo, hi = spread([v / b for v, b in zip(values, base)])
    return f"**{med:.3f}**" if len(values) == 1 else f"**{med:.3f}** ({lo:.3f}–{hi:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n1", type=int, default=100, help="requests in the first window")
    parser.add_argument("--n2", type=int, default=1100, help="requests in the second window")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the first window")
    parser.add_argument("--rounds", type=int, default=1, help="fresh workers per variant (ranges if > 1)")
    parser.add_argument("--only", help=f"comma-separated rows among {', '.join(ROWS)}")
    parser.add_argument("--base", help="a git commit whose package runs the ours side too, side by side")
    args = parser.parse_args()
    if args.n2 <= args.n1:
        parser.error("--n2 must be larger than --n1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is needed: apt-get install valgrind")
    names = pick_rows(args.only)
    sides = ["stock", "ours"] + (["base"] if args.base else [])
    counts: dict[tuple[str, str], list[float]] = {(name, side): [] for name in names for side in sides}
    with Logins() as logins, package_at(args.base) as base_root:
        for r in range(args.rounds):
            for name in names:
                for side in sides if r % 2 == 0 else reversed(sides):
                    row = ROWS[name]
                    variant = row.stock if side == "stock" else row.ours
                    env = logins.env(f"{name}/{side}", variant)
                    value = per_request(variant, env, base_root if side == "base" else None, args)
                    counts[(name, side)].append(value)
                    print(f"# {name} {side} round {r + 1}: {value:,.0f}", file=sys.stderr, flush=True)
    heads = ["row", "stock", "ours", "ours ÷ stock"]
    if args.base:
        heads += [f"ours at {args.base}", f"at {args.base} ÷ stock"]
    rows = []
    for name in names:
        stock = counts[(name, "stock")]
        cells = [ROWS[name].label, cell(stock), cell(counts[(name, "ours")]), ratio_cell(counts[(name, "ours")], stock)]
        if args.base:
            cells += [cell(counts[(name, "base")]), ratio_cell(counts[(name, "base")], stock)]
        rows.append(cells)
    rounds = f"{args.rounds} rounds (a fresh worker each), median (min–max)" if args.rounds > 1 else "1 round"
    print(preamble("Whole worker: instructions per request (callgrind)",
                   f"`gunicorn -w 1 --timeout 900` under callgrind, PYTHONHASHSEED=0, {args.warmup} warm-up requests, "
                   f"windows of {args.n1} and {args.n2} sequential requests, (W2 - W1) / {args.n2 - args.n1}; "
                   f"{rounds}"))  # fmt: skip
    print(table(heads, rows))


if __name__ == "__main__":
    main()
