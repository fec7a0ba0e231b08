"""Drive a RedisPool under gevent in a fresh process; print one JSON result.

Run by tests/test_redis.py as ``python gevent_redis.py N BLOCK [--no-patch]``
with the pool config (a dict) as JSON on stdin. The service is built *before*
``gevent.monkey.patch_all()``, as a ``--preload`` app would build it, and
opened with ``init_pool()`` after it, as the worker does.

N greenlets each run ``BLPOP <missing key> BLOCK`` (the server holds the
connection for BLOCK seconds) through ``client()``, while a ticker greenlet
ticks every 5 ms. Reports how many succeeded, how long it took, in what order
the greenlets were served (their spawn order is 0..N-1), how many of the
server-side waits the ticker ticked inside, and the pool's stats.
"""

import json
import sys
import time

import redis  # noqa: F401 - imported before patching, as a preloaded app would

from gunicorn_pool.redis import RedisPool

CONFIG = json.loads(sys.stdin.read())
SERVICE = RedisPool({"default": CONFIG})
SERVICE.pool("default")  # the pool objects exist before patching
PATCHED = "--no-patch" not in sys.argv
if PATCHED:
    from gevent import monkey

    monkey.patch_all()

import gevent  # noqa: E402

SERVICE.init_pool()
CLIENT = SERVICE.client()


def main():
    count, block = int(sys.argv[1]), float(sys.argv[2])
    ticks, windows, served, errors = [], [], [], []
    running = [True]

    def ticker():
        while running[0]:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    def job(i):
        try:
            start = time.monotonic()
            CLIENT.blpop(f"gunicorn_pool:test:missing:{i}", timeout=block)
            windows.append((start, time.monotonic()))
            served.append(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")

    tick = gevent.spawn(ticker)
    gevent.sleep(0.02)
    start = time.monotonic()
    gevent.joinall([gevent.spawn(job, i) for i in range(count)], timeout=60)
    elapsed = time.monotonic() - start
    running[0] = False
    tick.join(1)
    covered = sum(1 for s, e in windows if any(s + 0.01 < t < e - 0.01 for t in ticks))
    result = {
        "ok": len(windows), "errors": errors[:5], "elapsed": elapsed, "served": served,
        "covered": covered, "stats": SERVICE.stats()["default"], "patched": PATCHED,
    }  # fmt: skip
    SERVICE.close_pool()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
