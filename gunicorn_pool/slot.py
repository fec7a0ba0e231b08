"""A pool slot: one physical connection and its bookkeeping, and the states it moves through.

A :class:`Slot` lives as long as its connection (SQLAlchemy's
``_ConnectionRecord``, HikariCP's ``PoolEntry``). The pool moves it between
four states, each move one method of :class:`~gunicorn_pool.pool.ConnectionPool`::

                 _connect()            _lend()
    (capacity) ------------> OPENING ---------------------> LENT
         ^                     |  \\    _shelve()            |   \\
         |                     |   '-----------> IDLE <------'   | _unlend() + _give_back()
         |                     |                 |  ^  _lend()   |   (commit/rollback/reset
         |      failed connect |     _remove()   |  '-----------'|    when the user left
         |                     v                 v               v    something open)
         '---- _release_capacity() <--------- CLOSED <---------- (dead, expired, interrupted,
                                                                   leaked, pool closed)

- ``OPENING``: capacity is reserved (``_size`` counts it) and the connect runs
  in the reserving thread, outside the lock.
- ``IDLE``: in the idle stack, or in the hands of the one thread moving it
  (a taker that just popped it, a returner handing it to a waiter).
- ``LENT``: used by whoever took it: a :class:`~gunicorn_pool.pool.Lease`
  (``with pool.connection()``) holds it, or the pool's lent map does
  (``getconn()``, until ``putconn()``).
- ``CLOSED``: unregistered, closed politely (``polite=True``: the server is
  told) or dropped (the socket is closed without a word: after fork, after an
  interruption mid-protocol, after a leak), and its capacity freed.

Invariants the pool relies on, stated once:

1. A slot is in at most one place: the idle stack, one lease (a ``Lease``
   object, or the lent map for ``getconn()``), or the hands of exactly one
   thread. ``deque.pop()``/``append()`` and ``dict.pop()`` are the moves
   between places; each is atomic under the GIL, so two takers never pop the
   same slot and two ``putconn()`` of one lease never both succeed. On a
   free-threaded build without a GIL the pool takes its lock around them
   (:func:`gunicorn_pool._concurrency.lock_free_ok`). A ``Lease`` ends on its
   own thread; only a leak reclaimed by another thread at the end of its
   request could meet it, and the lease number (``uses``) tells that one.
2. ``_size`` counts registered slots plus reservations (``OPENING``), never
   more than ``max_size``; capacity is released exactly once per slot, by
   :meth:`~gunicorn_pool.pool.ConnectionPool._remove` (which unregisters first
   and releases only what it unregistered) or for a failed reservation.
3. Waiters are served in arrival order: while anyone waits, no taker pops the
   idle stack without the lock, and a return goes to the first waiter.
4. A taker that queues looks at the idle stack again after queueing, and a
   returner that appended without the lock looks at the queue again after
   appending, so a lock-free return and a queueing taker never miss each other.
5. A slot's counters (``uses``, ``usage``) and lease fields are written only
   by whoever holds it, so they need no lock.
6. A closed pool's idle stack is empty once ``close()`` has drained it, and a
   slot returned to a closed pool is closed instead of shelved.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Optional

__all__ = ["CLOSED", "IDLE", "LENT", "OPENING", "Slot"]

OPENING = "opening"
IDLE = "idle"
LENT = "lent"
CLOSED = "closed"


class Slot:
    """One physical connection of a pool and its bookkeeping (see the module docstring)."""

    __slots__ = ("raw", "key", "probe", "state", "expires", "last_used", "recheck_at", "lent_at", "uses",
                 "usage", "holder", "taken_at", "reported")  # fmt: skip

    def __init__(self, raw: Any, probe: Optional[Callable[[], Any]], lifetime: float) -> None:
        now = time.monotonic()
        self.raw = raw
        self.key = id(raw)  # the lent map's key; raw stays alive while the slot is registered
        self.probe = probe  # the connector's no-round-trip liveness check, prepared once
        self.state = OPENING
        self.expires = now + lifetime * (1.0 - 0.1 * random.random())  # -10 % jitter
        self.last_used = self.lent_at = now
        self.recheck_at = now  # checkout looks at it before its first use
        self.uses = 0  # leases, counted by the holder (invariant 5)
        self.usage = 0.0  # seconds lent out (stats() reports milliseconds: no conversion per lease)
        # The current lease: who took it and where (for leak reports), set when it starts.
        self.holder: Optional[int] = None
        self.taken_at = ""
        self.reported = 0  # the lease number last reported as held past leak_timeout

    def __repr__(self) -> str:
        return f"<Slot {self.state} uses={self.uses}{' taken at ' + self.taken_at if self.taken_at else ''}>"
