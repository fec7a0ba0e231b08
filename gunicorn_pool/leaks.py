"""Leases held too long outside requests: reported after ``leak_timeout`` (HikariCP's leakDetectionThreshold).

Inside a request a lease not given back is reclaimed when the request ends
(:mod:`gunicorn_pool.request`). Background threads and scripts have no such
end, so a pool with ``leak_timeout`` set is watched instead: one daemon thread
per process (a greenlet once gevent patched ``threading``) wakes a few times per
``leak_timeout`` and logs, once per lease, every lease held longer than that,
with the ``file:line`` where it was taken. It only reports; the holder may be
slow rather than lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Optional, Protocol

__all__ = ["Watched", "watch"]

logger = logging.getLogger("gunicorn_pool")


class Watched(Protocol):
    """What the watcher needs of a pool: its name, its ``leak_timeout`` and a report call."""

    name: str

    @property
    def leak_timeout(self) -> Optional[float]: ...

    def report_long_leases(self, now: float) -> None: ...


_pools: weakref.WeakSet[Watched] = weakref.WeakSet()
_thread: list[Optional[threading.Thread]] = [None]
_pid = [0]
_lock = threading.Lock()


def watch(pool: Watched) -> None:
    """Watch *pool*'s leases (it has ``leak_timeout`` set); start the watcher in this process if needed."""
    _pools.add(pool)
    thread = _thread[0]
    if thread is not None and thread.is_alive() and _pid[0] == os.getpid():
        return
    with _lock:
        thread = _thread[0]
        if thread is not None and thread.is_alive() and _pid[0] == os.getpid():
            return
        thread = threading.Thread(target=_run, name="gunicorn_pool-leaks", daemon=True)
        _thread[0], _pid[0] = thread, os.getpid()
        thread.start()


def _interval() -> float:
    timeouts = [t for p in list(_pools) if (t := p.leak_timeout)]
    return min(5.0, max(0.05, min(timeouts, default=5.0) / 4))


def _run() -> None:
    me = threading.current_thread()
    while _thread[0] is me and _pid[0] == os.getpid():
        time.sleep(_interval())
        now = time.monotonic()
        for pool in list(_pools):
            try:
                pool.report_long_leases(now)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one pool
                logger.debug("gunicorn_pool: leak check of %s failed: %s", pool.name, exc)
