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
  why mixing classes in one loop costs more);
- the same three with an ORM-like ``SELECT`` instead (built-ins, an ``IN``
  list, a derived table, an e-mail address as a parameter that differs on
  every query, so no verdict is reused), and the statement scan alone
  (``statement_verdict``) on those texts and on an ``INSERT INTO ... VALUES``
  with such an address (which takes the scan's second, precise pass): what
  reading each statement for session changes costs (``--part mysql``);
- PostgreSQL (``--part postgresql``): checkout + an ORM-like ``SELECT`` with
  ordinary builtins (``lower``, ``coalesce``, ``date_trunc``, ``now``) +
  return, beside a raw persistent psycopg connection running the same
  statement; and the same with a statement text never seen before on every
  operation, so each one is scanned for session-changing calls (the first
  execution of each of an application's statements); and the same statement through a cursor on
  psycopg2 (``driver: psycopg2``), beside a raw persistent psycopg2 connection.
- SQLAlchemy (``--part sqlalchemy``): a Flask-SQLAlchemy-like request
  (``Session(engine)``, ``SELECT 1``, closed) on MariaDB through a stock
  QueuePool engine and through the same engine adopted (``AdoptedEngines``:
  the exact status, the statement verdicts, no ROLLBACK when none is open).

Instructions are not time: a Python process here runs ~2-9 instructions per
ns depending on cache misses, and a round trip to the server is mostly
waiting. They show what a change adds to each operation, reproducibly.

    python bench/instructions.py [--n1 2000 --n2 10000] [--base REF] [--part stand-in|mysql|postgresql|sqlalchemy]

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

from _common import BenchUser, PGBenchUser, preamble, table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LOOP = r'''
import sys
sys.path.insert(0, {bench!r})
row, n = sys.argv[1], int(sys.argv[2])
kw = {kw!r}
STATEMENT = ("SELECT t.id, lower(t.name), coalesce(t.qty, 0), date_trunc('day', now()) AS day"
             " FROM (VALUES (1, 'A', 2)) AS t(id, name, qty) WHERE t.id = %s")
ORM = ("SELECT u.id, u.name, LOWER(u.email) AS email, COALESCE(u.score, 0) AS score FROM"
       " (SELECT 1 AS id, 'bob' AS name, %s AS email, NULL AS score) AS u"
       " WHERE u.email = %s AND u.id IN (1, 2, 3) ORDER BY u.id LIMIT 21")
ORM_INSERT = "INSERT INTO users (name, email, login, created) VALUES ('bob', %s, LOWER(%s), NOW())"
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
elif row.startswith("PG2"):
    import psycopg2
    def op(c):
        cur = c.cursor(); cur.execute(STATEMENT, (1,)); cur.fetchall(); cur.close()
    if row == "PG2 raw psycopg2":
        c = psycopg2.connect(**{{k: v for k, v in {pg_kw!r}.items() if k != "autocommit"}})
        c.autocommit = True
        for _ in range(n):
            op(c)
    else:
        from gunicorn_pool import DatabasePool
        db = DatabasePool({{"default": dict({pg_config!r}, driver="psycopg2", min_size=1, max_size=1)}}, name="i")
        db.init_pool()
        for _ in range(n):
            with db.connection() as c:
                op(c)
elif row.startswith("PG"):
    import psycopg
    def same(c, i):
        c.execute(STATEMENT, (1,)).fetchall()
    def new(c, i):
        c.execute(STATEMENT + " AND t.qty > " + str(-i), (1,)).fetchall()
    work = new if "new statement" in row else same
    if row.startswith("PG raw"):
        c = psycopg.connect(**{pg_kw!r})
        for i in range(n):
            work(c, i)
    else:
        from gunicorn_pool import DatabasePool
        db = DatabasePool({{"default": dict({pg_config!r}, min_size=1, max_size=1)}}, name="i")
        db.init_pool()
        for i in range(n):
            with db.connection() as c:
                work(c, i)
elif row.startswith("SA "):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session
    url = URL.create("mysql+pymysql", username=kw["user"], password=kw["password"], host=kw["host"],
                     port=kw["port"], database=kw["database"])
    engine = create_engine(url, pool_size=1, max_overflow=0)
    if row.startswith("SA adopted"):
        from gunicorn_pool.options import PoolOptions
        from gunicorn_pool.sqlalchemy import AdoptedEngines
        # probe_after=None: under valgrind every checkout would look stale, a path that almost never runs natively
        service = AdoptedEngines(lambda: {{"default": engine}}, name="i",
                                 options=PoolOptions(max_size=1, probe_after=None))
        service.init_pool()
    query = text("SELECT 1")
    for _ in range(n):  # a Flask-SQLAlchemy request: a session, one query, closed at teardown
        with Session(engine) as session:
            session.execute(query).all()
elif row.startswith("statement_verdict"):
    from gunicorn_pool.connectors.mysql import statement_verdict
    text = ORM if row.endswith("SELECT") else ORM_INSERT
    for i in range(n):
        mail = "'user%d@example.com'" % i
        statement_verdict((text % (mail, mail)).encode())
else:
    import pymysql
    orm = row.endswith(", ORM-like SELECT")
    row = row.replace(", ORM-like SELECT", "")
    counter = iter(range(10**9))
    def op(c):
        cur = c.cursor()
        if orm:
            mail = "user%d@example.com" % next(counter)  # a new text every time: no verdict reused
            cur.execute(ORM, (mail, mail))
        else:
            cur.execute("SELECT 1")
        cur.fetchall(); cur.close()
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

PARTS = {
    "stand-in": ("stand-in with", "stand-in with, in a request scope", "stand-in getconn/putconn",
                 "minimal FIFO pool"),
    "mysql": ("raw PyMySQL", "raw PooledMySQLConnection", "gunicorn_pool DatabasePool.connection()",
              "raw PyMySQL, ORM-like SELECT", "raw PooledMySQLConnection, ORM-like SELECT",
              "gunicorn_pool DatabasePool.connection(), ORM-like SELECT", "statement_verdict, ORM-like SELECT",
              "statement_verdict, ORM-like INSERT"),
    "sqlalchemy": ("SA stock QueuePool engine, Session + SELECT 1", "SA adopted engine, Session + SELECT 1"),
    "postgresql": ("PG raw psycopg", "PG DatabasePool.connection()", "PG raw psycopg, a new statement each op",
                   "PG DatabasePool.connection(), a new statement each op", "PG2 raw psycopg2",
                   "PG2 DatabasePool.connection(), psycopg2"),
}  # fmt: skip


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
    parser.add_argument("--part", choices=("all", *PARTS), default="all", help="which rows (default: all)")
    args = parser.parse_args()
    rows_wanted = [row for part, rows in PARTS.items() if args.part in ("all", part) for row in rows]
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    python = os.path.realpath(sys.executable)  # the interpreter itself, not a shim script
    base_dir: Optional[Path] = None
    with BenchUser() as user, PGBenchUser() as pg_user, tempfile.TemporaryDirectory() as tmp:
        kw = dict(user.kwargs(), ssl_disabled=True)
        script = Path(tmp) / "loop.py"
        script.write_text(LOOP.format(bench=str(HERE), kw=kw, pg_kw=pg_user.kwargs(), pg_config=pg_user.config()))
        if args.base:
            base_dir = Path(tmp) / "base"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_dir), args.base],
                           check=True)  # fmt: skip
        try:
            rows = []
            for row in rows_wanted:
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
    settings = f"{args.n2 - args.n1} operations per row, PYTHONHASHSEED=0"
    print(preamble("Instructions per operation (callgrind)", settings,
                   postgresql=args.part in ("all", "postgresql"), mysql=args.part != "postgresql"))  # fmt: skip
    headers = ["row", "instructions / op"] + ([f"at {args.base}", "now ÷ then"] if args.base else [])
    print(table(headers, rows))


if __name__ == "__main__":
    main()
