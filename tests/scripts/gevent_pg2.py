"""Drive a psycopg2 DatabasePool under gevent in a fresh process; print one JSON result.

Run by tests/test_psycopg2.py as ``python gevent_pg2.py burst N SLEEP`` or ``python gevent_pg2.py
blackhole`` with the pool config (a dict: it holds the password) as JSON on stdin. psycopg2 is
imported and the pool object built *before* ``gevent.monkey.patch_all()``, as an app imported by
``--preload`` (or a gunicorn.conf.py registering the pool) would; the pool opens after patching,
as the worker does, and the worker's boot step installs psycopg2's wait callback.

Modes:
  burst N SLEEP  N greenlets each run ``SELECT pg_sleep(SLEEP)`` while a ticker greenlet ticks
                 every 5 ms (tests/scripts/_ticks.py)
  blackhole      one checkout from a server that accepts and never answers: how long it took,
                 its error, and the longest gap between ticks meanwhile
"""

import json
import sys
import time

import psycopg2  # noqa: F401 - imported before patching, as a preloaded app would

from gunicorn_pool import DatabasePool

CONFIG = json.loads(sys.stdin.read())
DB = DatabasePool({"default": CONFIG})
POOL = DB.pool("default")

from gevent import monkey  # noqa: E402

monkey.patch_all()

import psycopg2.extensions  # noqa: E402
from _ticks import burst, max_gap, ticking  # noqa: E402

from gunicorn_pool import lifecycle  # noqa: E402


def callback():
    found = psycopg2.extensions.get_wait_callback()
    return None if found is None else getattr(found, "__module__", "?").rpartition(".")[0].partition(".")[0]


def blackhole():
    start = time.monotonic()
    error = ""

    def checkout():
        nonlocal error
        try:
            POOL.getconn()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            error = f"{type(exc).__name__}: {exc}"

    _, ticks = ticking(checkout)
    end = time.monotonic()
    print(json.dumps({"error": error, "took": end - start - 0.02, "max_gap": max_gap(ticks, start + 0.02, end)}))


def main():
    lifecycle._green_psycopg2()  # what boot() does in a gevent worker
    if sys.argv[1] == "blackhole":
        blackhole()
        return
    count, sleep = int(sys.argv[2]), float(sys.argv[3])
    start = time.monotonic()
    _, ticks = ticking(DB.init_pool)
    connect_gap = max_gap(ticks, start, time.monotonic())
    result = dict(burst(DB, count, "SELECT pg_sleep(%s)", (sleep,)), connect_gap=connect_gap, stats=POOL.stats(),
                  callback=callback())  # fmt: skip
    DB.close_pool()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
