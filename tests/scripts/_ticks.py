"""What the gevent scripts share (import it after ``monkey.patch_all()``, if the script patches):
a ticker greenlet that shows whether the hub ran, and a burst of greenlets each running one query.
"""

import time

import gevent


def ticking(body):
    """Run *body* while a ticker greenlet ticks every 5 ms; return (its result, tick times)."""
    ticks = []
    running = [True]

    def ticker():
        while running[0]:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    tick = gevent.spawn(ticker)
    gevent.sleep(0.02)
    try:
        return body(), ticks
    finally:
        running[0] = False
        tick.join(1)


def max_gap(ticks, start, end):
    """The longest time between two ticks from *start* to *end* (all of it if there were none)."""
    inside = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip(inside, inside[1:])]
    return max(gaps, default=end - start)


def burst(db, count, sql, args):
    """*count* greenlets each run ``sql`` on a connection of *db*'s pool "default", under the ticker.

    The result: how many queries ran (``ok``) and the first errors, the burst's ``elapsed``
    seconds, how many queries saw a tick while they waited (``covered``), the ticks during the
    burst and the longest gap between them (``max_gap``)."""
    windows, errors = [], []

    def job():
        try:
            with db.connection("default") as conn:
                cur = conn.cursor()
                begin = time.monotonic()
                cur.execute(sql, args)
                cur.fetchall()
                windows.append((begin, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")

    def run():
        begin = time.monotonic()
        gevent.joinall([gevent.spawn(job) for _ in range(count)], timeout=60)
        return begin, time.monotonic()

    (begin, end), ticks = ticking(run)
    return {
        "ok": len(windows), "errors": errors[:5], "elapsed": end - begin,
        "covered": sum(1 for s, e in windows if any(s < t < e for t in ticks)),
        "ticks": sum(1 for t in ticks if begin <= t <= end), "max_gap": max_gap(ticks, begin, end),
    }  # fmt: skip
