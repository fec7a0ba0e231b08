"""Drive a DatabasePool under gevent in a fresh process; print one JSON result.

Run by tests/test_pool.py as ``python gevent_pool.py MODE [--no-patch]`` with
the pool config (a dict, it holds the password) as JSON on stdin, so nothing
secret shows in the process list. The pool is built *before*
``gevent.monkey.patch_all()``, as an app imported by ``--preload`` would, and
opened with ``init_pool()`` after it, as the worker does.

Modes:
  burst N SLEEP    N greenlets each run SELECT SLEEP(SLEEP) while a ticker
                   greenlet ticks every 5 ms; reports timings and tick coverage
  timeout-discard  gevent.Timeout kills a greenlet mid-query inside
                   ``with pool.connection()``; reports the old and next CONNECTION_ID
  waiter-killed    a greenlet waiting for the only connection is killed by
                   gevent.Timeout; reports whether capacity survived
  rollback-killed TABLE   an error leaves ``with pool.connection()`` after a
                   300,000-row INSERT into TABLE; gevent.Timeout fires during
                   the pool's ROLLBACK; reports what the next borrower gets
"""

import json
import sys
import time

import pymysql  # noqa: F401 - imported before patching, as a preloaded app would

from gunicorn_pool import DatabasePool

CONFIG = json.loads(sys.stdin.read())
DB = DatabasePool({"default": CONFIG})
POOL = DB.pool("default")  # the ConnectionPool object exists before patching
PATCHED = "--no-patch" not in sys.argv
if PATCHED:
    from gevent import monkey

    monkey.patch_all()

import _ticks  # noqa: E402
import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

DB.init_pool()


def conn_id(conn):
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    return cur.fetchone()[0]


def burst(count, sleep):
    return dict(_ticks.burst(DB, count, "SELECT SLEEP(%s)", (sleep,)), stats=POOL.stats())


def timeout_discard():
    old = [None]

    def job():
        with DB.connection("default") as conn:
            old[0] = conn_id(conn)
            conn.cursor().execute("SELECT SLEEP(2)")

    killed = False
    try:
        with gevent.Timeout(0.2):
            job()
    except gevent.Timeout:
        killed = True
    with DB.connection("default") as conn:
        new = conn_id(conn)
    return {"killed": killed, "old": old[0], "new": new, "stats": POOL.stats()}


def waiter_killed():
    held = Event()

    def holder():
        with DB.connection("default"):
            held.set()
            gevent.sleep(0.3)

    h = gevent.spawn(holder)
    held.wait(5)
    killed = False
    try:
        with gevent.Timeout(0.1):
            with DB.connection("default"):
                pass
    except gevent.Timeout:
        killed = True
    h.join(5)
    start = time.monotonic()
    with DB.connection("default", timeout=2) as conn:
        conn_id(conn)
    return {"killed": killed, "next_wait": time.monotonic() - start, "stats": POOL.stats()}


def rollback_killed(table):
    old = [None]
    outcome = "no exception"
    try:
        with DB.connection("default") as conn:
            old[0] = conn_id(conn)
            conn.begin()
            conn.cursor().execute(f"INSERT INTO {table} (v) SELECT seq FROM seq_1_to_300000")
            gevent.Timeout(0.05).start()  # fires while the pool rolls the INSERT back
            raise ValueError("application error")
    except gevent.Timeout:
        outcome = "Timeout"
    except ValueError:
        outcome = "ValueError"
    start = time.monotonic()
    try:
        with DB.connection("default", timeout=1) as conn:
            new = conn_id(conn)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        new = f"{type(exc).__name__}: {exc}"
    return {"outcome": outcome, "old": old[0], "new": new, "next_wait": time.monotonic() - start,
            "stats": POOL.stats()}  # fmt: skip


def main():
    mode = sys.argv[1]
    if mode == "burst":
        result = burst(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "timeout-discard":
        result = timeout_discard()
    elif mode == "waiter-killed":
        result = waiter_killed()
    elif mode == "rollback-killed":
        result = rollback_killed(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["patched"] = PATCHED
    result["lock"] = type(POOL._lock).__module__
    DB.close_pool()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
