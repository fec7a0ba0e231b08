"""Drive a PostgreSQL DatabasePool under gevent in a fresh process; print one JSON result.

Run by tests/test_postgresql.py as ``python gevent_pg.py burst N SLEEP [--import-after-patch]``
or ``python gevent_pg.py foreign`` with the pool config (a dict: it holds the password) as JSON on stdin. By
default psycopg is imported and the pool object built *before*
``gevent.monkey.patch_all()``, as an app imported by ``--preload`` (or a
gunicorn.conf.py importing psycopg) would: psycopg then picked its C wait
function, which blocks the hub. The pool is opened with ``init_pool()`` after
patching, as the worker does.

Modes:
  burst N SLEEP  N greenlets each run ``SELECT pg_sleep(SLEEP)`` while a ticker
                 greenlet ticks every 5 ms; the result says how many queries saw
                 a tick while they waited, the longest gap between ticks, and
                 the longest gap while ``init_pool()`` connected
  foreign        greenlet A runs ``SELECT pg_sleep(0.3)``; meanwhile greenlet B
                 uses A's connection: B must wait for A's statement without
                 blocking the hub, then get LeaseError
"""

import json
import sys
import time

LATE = "--import-after-patch" in sys.argv
CONFIG = json.loads(sys.stdin.read())
if not LATE:
    import psycopg  # noqa: F401 - imported before patching, as a preloaded app would

    from gunicorn_pool import DatabasePool

    DB = DatabasePool({"default": CONFIG})
    POOL = DB.pool("default")  # the ConnectionPool object exists before patching

from gevent import monkey  # noqa: E402

monkey.patch_all()

import gevent  # noqa: E402
from _ticks import burst, max_gap, ticking  # noqa: E402

if LATE:
    from gunicorn_pool import DatabasePool

    DB = DatabasePool({"default": CONFIG})
    POOL = DB.pool("default")


def foreign():
    from gevent.event import Event

    from gunicorn_pool import LeaseError

    DB.init_pool()
    held, ready = [], Event()

    def holder():
        with DB.connection("default") as conn:
            held.append(conn)
            ready.set()
            conn.execute("SELECT pg_sleep(0.3)").fetchall()
            held.append(conn.execute("SELECT 42").fetchone()[0])

    def intruder():
        ready.wait(5)
        gevent.sleep(0.05)  # A is inside its statement, holding the connection's lock
        try:
            held[0].execute("SELECT 1")
        except LeaseError as exc:
            return f"LeaseError: {exc}"
        return "no error"

    def both():
        a, b = gevent.spawn(holder), gevent.spawn(intruder)
        gevent.joinall([a, b], timeout=10)
        return b.value

    start = time.monotonic()
    outcome, ticks = ticking(both)
    result = {"intruder": outcome, "holder": held[1:], "max_gap": max_gap(ticks, start, time.monotonic()),
              "stats": POOL.stats()}  # fmt: skip
    DB.close_pool()
    print(json.dumps(result))


def main():
    if sys.argv[1] == "foreign":
        foreign()
        return
    count, sleep = int(sys.argv[2]), float(sys.argv[3])
    # The connects (min_size of them) happen in init_pool(): cooperative too?
    start = time.monotonic()
    _, ticks = ticking(DB.init_pool)
    connect_gap = max_gap(ticks, start, time.monotonic())

    result = dict(burst(DB, count, "SELECT pg_sleep(%s)", (sleep,)), connect_gap=connect_gap, stats=POOL.stats(),
                  lock=type(POOL._lock).__module__, late_import=LATE)  # fmt: skip
    DB.close_pool()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
