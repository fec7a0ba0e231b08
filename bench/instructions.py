"""Instructions per operation, counted by valgrind's callgrind: the same figure on a busy machine.

Wall-clock tables on a shared 2-core VM move by ±5 % between runs; an
instruction count does not (the same interpreter, inputs and PYTHONHASHSEED
give the same total). Each row runs its loop twice in a fresh interpreter
under callgrind, N1 and N2 times, and reports (total(N2) - total(N1)) / (N2 -
N1): start-up and warm-up cancel out. Rows:

- the pool's own bookkeeping on a stand-in connection (no socket, no server),
  as bench/cpu.py times it (and inside a request scope, as every lease in a
  worker is: recorded with the ``file:line`` that took it), beside the
  minimal FIFO pool;
- checkout + ``SELECT 1`` + return on the real server, beside a raw
  persistent PyMySQL connection and a raw connection of the class the pool
  lends (``PooledMySQLConnection``: the lease guard and session tracking, no
  pool), each loop on one connection class only (see docs/performance.md on
  why mixing classes in one loop costs more).

Instructions are not time: a Python process here runs ~2-9 instructions per
ns depending on cache misses, and a round trip to the server is mostly
waiting. They show what a change adds to each operation, reproducibly.

    python bench/instructions.py [--n1 2000 --n2 10000] [--base REF]

With ``--base REF`` (a git commit) the same rows run for that commit's
package too (checked out into a temporary worktree), side by side.
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

from _common import BenchUser, preamble, table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LOOP = r'''
import sys
sys.path.insert(0, {bench!r})
row, n = sys.argv[1], int(sys.argv[2])
kw = {kw!r}
if row.startswith("stand-in"):
    from cpu import StandInConnection, StandInConnector
    from gunicorn_pool import ConnectionPool
    # probe_after=None: under valgrind every checkout would look stale, a path that almost never runs natively
    pool = ConnectionPool(StandInConnector(), name="i", min_size=1, max_size=1, probe_after=None, check_interval=60)
    pool.open()
    if row == "stand-in with":
        for _ in range(n):
            with pool.connection():
                pass
    elif row == "stand-in with, in a request scope":
        from gunicorn_pool import request_scope
        with request_scope():  # as in a worker: each lease recorded with the line that took it
            for _ in range(n):
                with pool.connection():
                    pass
    else:
        for _ in range(n):
            pool.putconn(pool.getconn())
elif row == "minimal FIFO pool":
    from _variants import MinimalFifoPool
    from cpu import StandInConnection
    ref = MinimalFifoPool([StandInConnection()])
    for _ in range(n):
        ref.putconn(ref.getconn())
else:
    import pymysql
    def op(c):
        cur = c.cursor(); cur.execute("SELECT 1"); cur.fetchall(); cur.close()
    if row == "raw PyMySQL":
        c = pymysql.connect(**kw)
        for _ in range(n):
            op(c)
    elif row == "raw PooledMySQLConnection":
        from gunicorn_pool.connectors.mysql import PooledMySQLConnection
        c = PooledMySQLConnection(**kw)
        for _ in range(n):
            op(c)
    else:
        from gunicorn_pool import DatabasePool
        db = DatabasePool({{"default": dict(kw, min_size=1, max_size=1)}}, name="i")
        db.init_pool()
        for _ in range(n):
            with db.connection() as c:
                op(c)
'''

ROWS = ("stand-in with", "stand-in with, in a request scope", "stand-in getconn/putconn", "minimal FIFO pool",
        "raw PyMySQL", "raw PooledMySQLConnection", "gunicorn_pool DatabasePool.connection()")  # fmt: skip


def count(python: str, script: Path, row: str, n: int, package_root: Path) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(package_root))
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, str(script), row, str(n)],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{row}: callgrind failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def per_op(python: str, script: Path, row: str, n1: int, n2: int, package_root: Path) -> float:
    return (count(python, script, row, n2, package_root) - count(python, script, row, n1, package_root)) / (n2 - n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n1", type=int, default=2000)
    parser.add_argument("--n2", type=int, default=10000)
    parser.add_argument("--base", help="a git commit to count side by side (its package, this bench)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    python = os.path.realpath(sys.executable)  # the interpreter itself, not a shim script
    base_dir: Optional[Path] = None
    with BenchUser() as user, tempfile.TemporaryDirectory() as tmp:
        kw = dict(user.kwargs(), ssl_disabled=True)
        script = Path(tmp) / "loop.py"
        script.write_text(LOOP.format(bench=str(HERE), kw=kw))
        if args.base:
            base_dir = Path(tmp) / "base"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_dir), args.base],
                           check=True)  # fmt: skip
        try:
            rows = []
            for row in ROWS:
                now = per_op(python, script, row, args.n1, args.n2, ROOT)
                cells = [row, f"{now:,.0f}"]
                if base_dir is not None:
                    try:
                        before = per_op(python, script, row, args.n1, args.n2, base_dir)
                        cells += [f"{before:,.0f}", f"{now / before:.3f}"]
                    except RuntimeError:
                        cells += ["-", "-"]  # the row does not exist in that commit
                rows.append(cells)
        finally:
            if base_dir is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], check=False)
    print(preamble("Instructions per operation (callgrind)",
                   f"{args.n2 - args.n1} operations per row, PYTHONHASHSEED=0"))  # fmt: skip
    headers = ["row", "instructions / op"] + ([f"at {args.base}", "now ÷ then"] if args.base else [])
    print(table(headers, rows))


if __name__ == "__main__":
    main()
