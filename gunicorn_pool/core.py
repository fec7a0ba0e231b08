"""The pool core: state and rules, no I/O; and what the layers above plug into.

:class:`PoolCore` holds one pool's state (sizes, the idle stack, the queue of
waiters, the lent map, capacity, backoff, figures) and every rule of the
pool, written once: who gets a connection and when one is opened or queued
for, when a checkout must look at a connection again, what a return does,
when a connection is closed. Its methods never block and never make a round
trip; they are called with or without the pool's lock as each one says. Two
front ends subclass it and add only how to wait, how to call the driver and
who the holder is:

- :class:`gunicorn_pool.pool.ConnectionPool`: threads and gevent greenlets
  (blocking calls; a lock-free common checkout and return; fork adoption);
- :class:`gunicorn_pool.pool_async.AsyncConnectionPool`: asyncio (``await``
  on every round trip; waiters are futures).

A front end reads the core's fields directly on its hot path (a subclass, not
a wrapper), so the split costs the synchronous checkout nothing.

The layers above plug in, the core imports none of them:

- :data:`LEASE_SINK`: a context variable the core owns and reads on every
  checkout. The request layer sets it to the current request's scope; a lease
  taken while it is set is appended to the sink's ``leases``, so the request
  can reclaim what its code left out when it ends. Unset (None), nothing is
  recorded.
- ``pool.observer``: a :class:`PoolObserver`, told of each connect, wait and
  lease as it happens (OpenTelemetry's histograms).

The slot states and the invariants behind the lock-free paths are in
:mod:`gunicorn_pool.slot`; the life cycle in docs/lifecycle.md.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from . import _concurrency as cc
from . import leaks
from . import stats as keys
from ._frames import caller
from .errors import ConnectError, LeaseError, PoolClosed, PoolTimeout, TooManyRequests
from .options import DEFAULTS, PoolOptions
from .slot import CLOSED, IDLE, LENT, Slot

if TYPE_CHECKING:
    from .connectors.base import ConnectorBase

__all__ = [
    "DROP", "LEASE_SINK", "PING", "REPLACE", "RESET", "REUSE", "USE", "LeaseSink", "PoolCore", "PoolObserver",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")
monotonic = time.monotonic

#: Outcomes of a connector's ``finish()``: lend it again as it is, lend it again after its
#: session was reset, or close it.
REUSE = "reuse"
RESET = "reset"
DROP = "drop"

#: What a checkout does with an idle connection (:meth:`PoolCore._check_of`).
USE = 0  #: lend it
PING = 1  #: ping it first (idle a while, or the probe says the server may have closed it)
REPLACE = 2  #: past its lifetime: close it and open another

#: Counters the pool keeps itself (requests_num and usage are summed from the slots).
_POOL_COUNTERS = (
    keys.REQUESTS_QUEUED, keys.REQUESTS_WAIT_MS, keys.REQUESTS_TIMEOUTS, keys.REQUESTS_ERRORS,
    keys.CONNECTIONS_NUM, keys.CONNECTIONS_MS, keys.CONNECTIONS_ERRORS, keys.CONNECTIONS_LOST,
    keys.CONNECTIONS_LEAKED, keys.CONNECTIONS_RESET, keys.CONNECTIONS_CLOSED,
)  # fmt: skip
_NOTHING: tuple[Slot, ...] = ()


class LeaseSink(Protocol):
    """Where leases taken during one request are recorded (the request layer's scope is one):
    ``append((pool, slot, lease number))`` for each lease that starts while the sink is current
    (a list: the request scope is one)."""

    def append(self, lease: tuple[Any, Slot, int], /) -> None: ...


#: The sink of the request running in this thread, greenlet or task (None: no request).
LEASE_SINK: contextvars.ContextVar[Optional[LeaseSink]] = contextvars.ContextVar("gunicorn_pool_lease_sink",
                                                                                 default=None)  # fmt: skip


class PoolObserver(Protocol):
    """What a pool tells an observer (``pool.observer``), in seconds, as it happens:
    the distributions behind OpenTelemetry's histograms (gunicorn_pool.otel)."""

    def connected(self, seconds: float) -> None:
        """A new connection opened, taking *seconds*."""

    def waited(self, seconds: float) -> None:
        """A caller obtained a connection *seconds* after asking (0 from the idle stack)."""

    def used(self, seconds: float) -> None:
        """A lease of *seconds* ended."""


class PoolCore:
    """One pool's state and rules (see the module docstring); front ends subclass it.

    *options* (a :class:`~gunicorn_pool.options.PoolOptions`, or a config that
    is one) says how it sizes, waits, checks and ages its connections; keyword
    *overrides* replace single fields. Sizes left at ``None`` take
    *default_sizes* (``(min, max)``): the service that builds the pool passes
    the worker type's (:func:`gunicorn_pool.service.fit`); the core reads no
    process global.
    """

    #: What a front end's waiters are (threads and greenlets: set per process; asyncio: futures).
    _waiter_class: type[cc.Waiter]
    _lock_free = False  #: may the front end pop and append without the lock (GIL-atomic deque ops)

    def __init__(self, connector: ConnectorBase, *, name: str, options: PoolOptions = DEFAULTS,
                 default_sizes: tuple[int, int] = (1, 1), **overrides: Any) -> None:  # fmt: skip
        options = dataclasses.replace(options, **overrides) if overrides else options
        options.check(name)
        self.name = name
        self.options = options
        self.dsn = connector.dsn or name
        self.min_size, self.max_size = options.sizes(default_sizes)
        self._connector = connector
        self._observer: Optional[PoolObserver] = None
        # A lease starts with attribute writes on the connection (its LeaseGuard) and no call,
        # unless the connector has more to do then (set by the front end); a plain return is
        # one call (check_in).
        self._guarded = connector.guarded
        self._lend: Optional[Callable[[Any, Optional[int], str], None]] = None
        self._check_in = connector.check_in
        self._init_state()

    def _init_state(self) -> None:
        """(Re)create everything that belongs to one process (and, for asyncio, one loop)."""
        self.pid = os.getpid()
        self._generation = cc.fork_generation()
        self._lock = cc.native_lock()  # guards short sections that never yield or block
        self._idle: deque[Slot] = deque()  # IDLE slots; the last returned on the right
        self._lent: dict[int, Slot] = {}  # slots lent by getconn(), by id() of the driver's connection
        self._waiters: deque[cc.Waiter] = deque()
        self._slots: dict[int, Slot] = {}  # every registered slot (IDLE, LENT or in a thread's hands)
        self._size = 0  # registered slots plus reservations (OPENING): never above max_size
        self.closed = False  #: True once close() ran (read by DatabasePool on every connection())
        self._watched = False  # by the leak watcher of this process (leak_timeout)
        self._told_closed = False  # the "closed by its user" warning was logged
        # Record the file:line that took each lease (for leak reports): with leak_timeout, and once a
        # lease of this pool outlived its request. Until then a request's lease records nothing (the
        # frame read costs ~4,000 instructions a lease: bench/instructions.py).
        self._record_places = self._leak_timeout is not None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._last_error = ""
        # Figures of slots already closed (a slot counts its own while it lives).
        self._retired_uses = 0
        self._retired_usage = 0.0
        self._counts = dict.fromkeys(_POOL_COUNTERS, 0)

    # -- settings ---------------------------------------------------------------------------

    @property
    def options(self) -> PoolOptions:
        """The options this pool runs by (replace them whole: ``pool.options = replace(...)``)."""
        return self._options

    @options.setter
    def options(self, options: PoolOptions) -> None:
        self._options = options
        # Read on every return: a connection is looked at again on checkout only this long after.
        self._recheck_after = options.check_interval if options.probe_after is None else options.probe_after
        # _check_of's common case, read by the front ends' inline checkouts: probe a connection idle
        # past probe_after but not past check_interval (None: the probe is off).
        self._probe_window = None if options.probe_after is None else options.check_interval
        self._owner_check = options.owner_check
        self._leak_timeout = options.leak_timeout
        if options.leak_timeout is not None:
            self._record_places = True

    @property
    def observer(self) -> Optional[PoolObserver]:
        """Told of each connect, wait and lease (None: nobody asks, the default)."""
        return self._observer

    @observer.setter
    def observer(self, observer: Optional[PoolObserver]) -> None:
        self._observer = observer
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        """A front end recomputes what its inline paths depend on (the observer, a fork)."""

    @property
    def leak_timeout(self) -> Optional[float]:
        """Seconds after which a lease held outside a request is reported (None: never)."""
        return self._leak_timeout

    @property
    def connector(self) -> Any:
        """The connector this pool opens, checks and closes its connections with (a
        :class:`~gunicorn_pool.connectors.base.Connector`, or an asyncio one)."""
        return self._connector

    @property
    def busy(self) -> int:
        """Connections out now (lent, or being opened): a snapshot read without the lock."""
        return self._size - len(self._idle)

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the sizes (the worker profile may be known only after the pool was built)."""
        if max_size < 1 or not 0 <= min_size <= max_size:
            raise ValueError(f"pool {self.name!r}: need 0 <= min_size <= max_size and max_size >= 1")
        self.min_size, self.max_size = min_size, max_size

    # -- opening (reservation -> OPENING -> a registered slot) -----------------------

    def _reserve_for_warm_up(self) -> bool:
        """With the lock: take capacity for one more warm-up connection; False once ``min_size``
        are open or being opened."""
        if self._size >= self.min_size:
            return False
        self._size += 1
        return True

    def _warm_up_next(self, opened: int, deadline: Optional[float]) -> bool:
        """The warm-up's step (``open()`` of either front end): capacity reserved for one more
        connection (True), or ``min_size`` reached (False). Past *deadline* (``time.monotonic()``)
        the reservation is released and :class:`ConnectError` raised."""
        with self._lock:
            if not self._reserve_for_warm_up():
                return False
        if deadline is not None and time.monotonic() >= deadline:
            self._release_capacity()
            raise ConnectError(f"pool {self.name!r} ({self.dsn}): warm-up deadline passed after {opened} connection(s)")
        return True

    def _connect_refusal(self, now: float) -> Optional[ConnectError]:
        """The error for a connect attempted while the pool backs off after a failed one (None:
        go ahead)."""
        if now >= self._next_attempt:
            return None
        return ConnectError(
            f"pool {self.name!r}: cannot connect to {self._connector.address}: {self._last_error}"
            f" (next attempt in {self._next_attempt - now:.1f}s)"
        )

    def _connect_failed(self, exc: Exception) -> ConnectError:
        """A connect failed: count it, back off (exponential, with jitter), log it; the error
        to raise. The caller releases its reservation."""
        self._counts[keys.CONNECTIONS_ERRORS] += 1
        self._last_error = self._connector.describe_error(exc)
        self._backoff = min(self._options.reconnect_backoff_max, max(0.1, self._backoff * 2))
        self._next_attempt = monotonic() + self._backoff * random.uniform(0.5, 1.0)
        logger.error(
            "pool %s (%s): cannot connect to %s: %s", self.name, self.dsn, self._connector.address, self._last_error
        )
        return ConnectError(f"pool {self.name!r}: cannot connect to {self._connector.address}: {self._last_error}")

    def _connected(self, raw: Any, started: float) -> Slot:
        """OPENING -> registered: a connection opened since *started*; its slot (still in the
        opener's hands). The probe is prepared here; if that raises, *raw* is dropped."""
        if self._backoff:
            logger.info("pool %s (%s): reconnected to %s", self.name, self.dsn, self._connector.address)
        self._backoff = 0.0
        self._counts[keys.CONNECTIONS_NUM] += 1
        took = monotonic() - started
        ms = int(took * 1000)  # before the read-modify-write: no thread switch inside it
        self._counts[keys.CONNECTIONS_MS] += ms
        if self._observer is not None:
            self._observer.connected(took)
        try:
            probe = self._connector.probe(raw)
        except BaseException:
            self._connector.discard(raw)
            raise
        slot = Slot(raw, probe, self._options.max_lifetime)
        self._slots[slot.key] = slot
        return slot

    # -- checkout (IDLE or OPENING -> LENT) -----------------------------------------------

    def _reserve(self) -> tuple[Optional[Slot], Optional[cc.Waiter]]:
        """With the lock: what a checkout the fast path could not serve gets. ``(slot, None)``:
        an idle slot; ``(None, None)``: capacity reserved, the caller opens a connection;
        ``(None, waiter)``: queued, in arrival order. Raises PoolClosed or TooManyRequests."""
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")
        waiters = self._waiters
        if not waiters:
            slot = self._pop_idle()
            if slot is not None:
                return slot, None
            if self._size < self.max_size:
                self._size += 1  # a reservation: this caller opens a connection
                return None, None
        limit = self._options.max_waiting
        if limit and len(waiters) >= limit:
            self._counts[keys.REQUESTS_ERRORS] += 1
            raise TooManyRequests(f"pool {self.name!r}: {len(waiters)} requests already waiting (max_waiting={limit})")
        waiter = self._waiter_class()
        waiters.append(waiter)
        self._counts[keys.REQUESTS_QUEUED] += 1
        if self._idle:  # invariant 4: a lock-free return raced this queueing
            self._hand_over_idle()
        return None, waiter

    def _quiet(self, slot: Slot, now: float) -> bool:
        """:meth:`_check_of` is USE for a connection an inline checkout found due for a look: not
        expired, idle no longer than ``check_interval``, and its probe (no round trip) quiet. The
        common case of a worker whose requests come more than ``probe_after`` apart; the front
        ends write it out (a twin of _check_of's USE with *peek*)."""
        window = self._probe_window
        probe = slot.probe
        return (
            window is not None and probe is not None and now < slot.expires and now - slot.last_used <= window
            and not probe()
        )  # fmt: skip

    def _check_of(self, slot: Slot, now: float, *, peek: bool) -> int:
        """:data:`USE`, :data:`PING` or :data:`REPLACE` for an idle *slot* a checkout took.

        Past its lifetime: replace it. Idle longer than ``check_interval`` (HikariCP's rule), or,
        idle ``probe_after`` or more and the connector's probe (no round trip) says the server
        may have closed it: ping it. *peek* is False for a connection handed to a waiter: it came
        back after the caller asked for one, so the wake-up latency is not idle time and the
        probe is not run."""
        if now >= slot.expires:
            return REPLACE
        idle = now - slot.last_used
        if idle > self._options.check_interval:
            return PING
        probe_after = self._options.probe_after
        if peek and slot.probe is not None and probe_after is not None and idle >= probe_after and slot.probe():
            return PING
        return USE

    def _lost(self, slot: Slot, exc: BaseException) -> None:
        """A checkout's ping failed: *slot*'s connection is dead (or its state unknown after an
        interruption): unregister and drop it, keeping the caller's reservation for a
        replacement; counted and logged when it was an ordinary error."""
        self._unregister(slot)
        self._connector.discard(slot.raw)
        if isinstance(exc, Exception):
            self._counts[keys.CONNECTIONS_LOST] += 1
            logger.warning(
                "pool %s (%s): dropping dead connection: %s", self.name, self.dsn, self._connector.describe_error(exc)
            )

    def _checkout_failed(self) -> None:
        """A checkout gave up after it took capacity (its connect or its checks failed)."""
        self._counts[keys.REQUESTS_ERRORS] += 1
        self._release_capacity()

    def _begin_lease(self, slot: Slot, now: float, taker: int, where: str = "") -> None:
        """-> LENT: *slot*'s lease starts at *now*, taken by *taker* (a thread, greenlet or task
        id); the slot is the taker's alone from here (invariant 5). Recorded in the current
        request's sink, with the ``file:line`` that took it (*where*, if the front end knows it
        already; else the frame walk), also for ``leak_timeout``, and the connection's lease
        guard armed."""
        slot.state = LENT
        slot.lent_at = now
        slot.uses += 1
        sink = LEASE_SINK.get()
        if sink is not None or self._leak_timeout is not None:
            slot.taken_at = (where or caller()) if self._record_places else ""
            if sink is not None:
                sink.append((self, slot, slot.uses))  # reclaimed if still out when the request ends
            if self._leak_timeout is not None and not self._watched:
                self._watched = True
                leaks.watch(self)
        elif slot.taken_at:
            slot.taken_at = ""
        # The taker is recorded even without the owner check: a request tells its own leases
        # from those of a thread it handed work to.
        slot.holder = taker
        holder = taker if self._owner_check else None
        raw = slot.raw
        if self._guarded:
            raw._gp_holder = holder
            raw._gp_taken_at = slot.taken_at
        if self._lend is not None:
            self._lend(raw, holder, slot.taken_at)

    def _pop_idle(self) -> Optional[Slot]:
        if not self._idle:  # raising IndexError costs more than this test
            return None
        try:
            return self._idle.pop()
        except IndexError:  # taken by a lock-free checkout meanwhile
            return None

    def _hand_over_idle(self) -> None:
        """With the lock held: give idle slots to waiters (a race left both)."""
        while self._waiters and (slot := self._pop_idle()) is not None:
            waiter = self._waiters.popleft()
            waiter.slot = slot
            waiter.wake()

    # -- waiting ---------------------------------------------------------------------------------

    def _wait_ended(
        self, waiter: cc.Waiter, started: float, timeout: float, woken: bool
    ) -> tuple[Optional[Slot], float]:
        """A wait that began at *started* ended, *woken* or not: (the slot handed over, or None:
        leave to open one; now). A waiter still queued when its *timeout* ran out leaves the
        queue: PoolTimeout (logged); one woken with an error raises it."""
        if not woken:
            with self._lock:
                timed_out = waiter in self._waiters
                if timed_out:
                    self._waiters.remove(waiter)
                    self._counts[keys.REQUESTS_TIMEOUTS] += 1
                    self._counts[keys.REQUESTS_WAIT_MS] += int((monotonic() - started) * 1000)
                    in_use, waiting = self.busy, len(self._waiters)
            if timed_out:  # logged outside the lock: a log handler may block
                logger.warning(
                    "pool %s (%s): timed out after %.2fs waiting for a connection (%d in use, %d waiting)",
                    self.name, self.dsn, timeout, in_use, waiting,
                )  # fmt: skip
                raise PoolTimeout(
                    f"pool {self.name!r}: no connection available within {timeout:g}s"
                    f" (max_size={self.max_size}, in use={in_use})"
                )
            # Handed a connection just as the wait ran out: take it.
        now = monotonic()
        ms = int((now - started) * 1000)  # computed first: see connections_ms
        self._counts[keys.REQUESTS_WAIT_MS] += ms
        if waiter.error is not None:
            raise waiter.error
        slot: Optional[Slot] = waiter.slot
        return slot, now

    def _abandon(self, waiter: cc.Waiter) -> tuple[Slot, ...]:
        """A waiter was interrupted: it leaves the queue, and what it was given passes on.
        Returns the slots the front end must close (see :meth:`_shelve`)."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return _NOTHING
        if waiter.slot is not None:
            return self._shelve(waiter.slot)
        if waiter.may_open:
            self._release_capacity()
        return _NOTHING

    # -- return (LENT -> IDLE, or -> CLOSED) ----------------------------------------------

    def _unlend(self, raw: Any, holder: int) -> Optional[Slot]:
        """LENT -> in the returner's hands, for ``putconn(raw)`` by *holder*: the lent map's
        ``dict.pop()`` is the one move (invariant 1), so two returns of one lease never both
        succeed. None: taken before a fork (the child's pool never lent it)."""
        key = id(raw)
        slot = self._lent.get(key)
        if slot is not None and slot.raw is raw and self._owner_check and slot.holder != holder:
            where = f" (taken at {slot.taken_at})" if slot.taken_at else ""
            raise LeaseError(
                f"pool {self.name!r}: putconn() by a thread or greenlet other than the one that took the"
                f" connection{where}"
            )
        slot = self._lent.pop(key, None)
        if slot is None or slot.raw is not raw:
            if self._generation != cc.fork_generation():
                return None
            raise LeaseError(
                f"pool {self.name!r}: putconn() of a connection this pool has not lent out (given back"
                " already, reclaimed at the end of its request, or not from this pool)"
            )
        return slot

    def has_lent(self, raw: Any) -> bool:
        """True if *raw* is out on a lease of this pool now."""
        return self.lent_slot(raw) is not None

    def lent_slot(self, raw: Any) -> Optional[Slot]:
        """The slot of *raw* while it is out on a ``getconn()`` lease of this pool, else None: for
        its holder, who alone may read and write it (invariant 5 of :mod:`gunicorn_pool.slot`)."""
        slot = self._lent.get(id(raw))
        return slot if slot is not None and slot.raw is raw else None

    def _settled(self, slot: Slot, outcome: str) -> tuple[Slot, ...]:
        """What a return does after the connector's ``finish()`` said *outcome*: drop the
        connection (counting a close by its user), or shelve it (counting a reset). Returns the
        slots the front end must close (see :meth:`_shelve`)."""
        if outcome == DROP:
            if getattr(slot.raw, "_gp_closed_by_user", False):
                self.count_user_close()
            self._drop(slot)
            return _NOTHING
        if outcome == RESET:
            self._counts[keys.CONNECTIONS_RESET] += 1
        return self._shelve(slot)

    def count_user_close(self) -> None:
        """Count a ``close()`` of a lent connection by its user (a teardown kept from code that
        connected per request: a closed connection is replaced, a connect per lease); say so
        once per pool."""
        self._counts[keys.CONNECTIONS_CLOSED] += 1
        if not self._told_closed:
            self._told_closed = True
            logger.warning(
                "pool %s (%s): conn.close() on a lent connection (in a teardown?): a request_connection()"
                " connection is given back when its request ends anyway, any other is closed and replaced,"
                " a new connection per lease; give connections back instead of closing them."
                " Logged once per pool; counted in connections_closed",
                self.name, self.dsn,
            )  # fmt: skip

    def _end_lease(self, slot: Slot, now: float) -> None:
        """LENT -> in the returner's hands: the lease's figures, and when a checkout must look at
        the slot again (capped by its expiry)."""
        slot.usage += now - slot.lent_at
        if self._observer is not None:
            self._observer.used(now - slot.lent_at)
        slot.last_used = now
        recheck = now + self._recheck_after
        slot.recheck_at = recheck if recheck < slot.expires else slot.expires

    def _shelve(self, slot: Slot) -> tuple[Slot, ...]:
        """-> IDLE: to the first waiter, else onto the idle stack. Returns the slots the front end
        must close politely (this one if it expired, surplus ones past ``max_idle``, what a
        closed pool still held): usually none.

        The common case (nobody waiting) takes no lock (invariant 4).
        """
        now = monotonic()
        if slot.state is LENT:
            self._end_lease(slot, now)
        if now >= slot.expires:
            return self._closing(slot)
        if self._waiters or self.closed or not self._lock_free:
            return self._shelve_locked(slot, cold=False)
        slot.state = IDLE
        self._idle.append(slot)
        return self._after_append(now)

    def _after_append(self, now: float) -> tuple[Slot, ...]:
        """After a lock-free append to the idle stack: look at the queue and ``closed`` again
        (invariant 4: a waiter or close() may have come meanwhile), and close what has been
        idle past ``max_idle`` above ``min_size``. Returns the slots to close (see _shelve)."""
        if self._waiters or self.closed:
            return self._shelve_locked(None, cold=False)
        if self._size > self.min_size:
            try:
                oldest = self._idle[0].last_used
            except IndexError:  # emptied by lock-free checkouts meanwhile
                return _NOTHING
            if now - oldest > self._options.max_idle:
                return self._shrink(now)
        return _NOTHING

    def _shelve_locked(self, slot: Optional[Slot], *, cold: bool) -> tuple[Slot, ...]:
        """-> IDLE under the lock (*slot* may be None: only settle races); a closed pool's idle
        slots are returned to be closed. *cold* puts it at the bottom of the stack (warm-up)."""
        with self._lock:
            if slot is not None:
                slot.state = IDLE
                if self._waiters:  # straight to the first waiter (invariant 3)
                    waiter = self._waiters.popleft()
                    waiter.slot = slot
                    waiter.wake()
                else:
                    self._idle.appendleft(slot) if cold else self._idle.append(slot)
            if self._idle:
                self._hand_over_idle()
            if not self.closed:
                return _NOTHING
            leftover = []
            while (extra := self._pop_idle()) is not None:
                leftover.append(extra)
        return tuple(s for s in leftover if self._unregister(s))

    def _shrink(self, now: float) -> tuple[Slot, ...]:
        """Idle connections above ``min_size`` unused for ``max_idle`` seconds, to close."""
        surplus: list[Slot] = []
        with self._lock:
            while self._size - len(surplus) > self.min_size and not self._waiters:
                try:
                    oldest = self._idle[0]
                    if now - oldest.last_used <= self._options.max_idle:
                        break
                    surplus.append(self._idle.popleft())
                except IndexError:  # emptied by lock-free checkouts meanwhile
                    break
        return tuple(s for s in surplus if self._unregister(s))

    # -- leases not given back ---------------------------------------------------------------

    def reclaim(self, slot: Slot, number: int, request: str) -> bool:
        """LENT -> CLOSED for a lease its request left out; called by the request layer.

        *number* is the lease's number on the slot: a slot given back and lent
        again since is someone else's now. Returns True if it was reclaimed.
        """
        if self.inherited or slot.uses != number or slot.state is not LENT:
            return False  # given back (or lent again) already: nothing leaked
        if slot.key in self._lent and self._lent.pop(slot.key, None) is not slot:
            return False  # a putconn() from another thread won the race
        self._counts[keys.CONNECTIONS_LEAKED] += 1
        if self._record_places:
            where, later = slot.taken_at or "an unknown place", ""
        else:  # the first leak of this pool: from now on its leases record the line that takes them
            self._record_places = True
            where, later = "a place not recorded yet", "; the next leak of this pool names the line that took it"
        logger.warning(
            "pool %s (%s): a connection taken at %s was not given back by the end of its request%s;"
            " reclaimed: closed and its capacity freed%s",
            self.name, self.dsn, where, f" ({request})" if request else "", later,
        )  # fmt: skip
        self._drop(slot)
        return True

    def report_long_leases(self, now: float) -> None:
        """Log, once per lease, each lease held longer than ``leak_timeout``; called by gunicorn_pool.leaks."""
        limit = self._leak_timeout
        if limit is None or self.inherited:
            return
        for slot in list(self._slots.values()):
            if slot.state is LENT and slot.reported != slot.uses and now - slot.lent_at > limit:
                slot.reported = slot.uses
                logger.warning(
                    "pool %s (%s): a connection taken at %s has been out for %.1fs (leak_timeout=%gs)",
                    self.name, self.dsn, slot.taken_at or "an unknown place", now - slot.lent_at, limit,
                )  # fmt: skip

    inherited = False  #: a front end that survives fork sets this in a forked child

    # -- closing (-> CLOSED) and capacity -----------------------------------------------------

    def _closing(self, slot: Slot) -> tuple[Slot, ...]:
        """*slot* is to be closed politely by the front end: unregistered here; empty if it was
        unregistered already (invariant 2: capacity is released once, after the close)."""
        return (slot,) if self._unregister(slot) else _NOTHING

    def _drop(self, slot: Slot) -> None:
        """-> CLOSED without a word to the server (after an interruption mid-protocol, a leak, a
        user's close), and its capacity freed. No round trip: either front end calls it."""
        if self._unregister(slot):
            self._connector.discard(slot.raw)
            self._release_capacity()

    def _unregister(self, slot: Slot) -> bool:
        """Forget *slot*, keeping its figures; False if it was not registered."""
        slot.state = CLOSED
        with self._lock:
            if self._slots.pop(slot.key, None) is None:
                return False
            self._lent.pop(slot.key, None)
            self._retired_uses += slot.uses
            self._retired_usage += slot.usage
        return True

    def _release_capacity(self) -> None:
        """One connection less: let the first waiter open a new one instead."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.may_open = True
                waiter.wake()
            else:
                self._size -= 1

    def _start_closing(self) -> Optional[list[Slot]]:
        """close()'s rules: refuse new requests, fail the waiters, take the idle slots (returned,
        unregistered, to be closed politely); None if the pool was closed already. Connections
        in use are closed when they come back (:meth:`_shelve`)."""
        with self._lock:
            if self.closed:
                return None
            self.closed = True
            idle = []
            while (slot := self._pop_idle()) is not None:
                idle.append(slot)
            waiters, self._waiters = list(self._waiters), deque()
            for waiter in waiters:
                waiter.error = PoolClosed(f"pool {self.name!r} closed while waiting")
                waiter.wake()
        return [slot for slot in idle if self._unregister(slot)]

    # -- figures -----------------------------------------------------------------------------

    def connections(self, state: str) -> list[Any]:
        """The driver connections whose slots are in *state* now (``slot.IDLE`` or
        ``slot.LENT``): a snapshot, for adapters and tests; they stay the pool's."""
        return [slot.raw for slot in list(self._slots.values()) if slot.state is state]

    def stats(self) -> dict[str, int]:
        """Current figures, under the names of :mod:`gunicorn_pool.stats`."""
        with self._lock:
            slots = list(self._slots.values())
            uses, usage = self._retired_uses, self._retired_usage
            out = {
                keys.POOL_MIN: self.min_size,
                keys.POOL_MAX: self.max_size,
                keys.POOL_SIZE: self._size,
                keys.POOL_AVAILABLE: len(self._idle),
                keys.REQUESTS_WAITING: len(self._waiters),
            }
            out.update(self._counts)
        uses += sum(slot.uses for slot in slots)
        # Every request ends in a use, a timeout or an error.
        out[keys.REQUESTS_NUM] = uses + out[keys.REQUESTS_TIMEOUTS] + out[keys.REQUESTS_ERRORS]
        out[keys.USAGE_MS] = int((usage + sum(slot.usage for slot in slots)) * 1000)
        return {key: out[key] for key in keys.KEYS}

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self.dsn} size={self._size}/{self.max_size}"
            f" idle={len(self._idle)} pid={self.pid}{' closed' if self.closed else ''}>"
        )
