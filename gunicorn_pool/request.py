"""The current request: where it begins and ends, what it borrowed, and what it leaked.

A general pool cannot know when a borrower is done. gunicorn_pool can: the
worker runs every request inside a :class:`RequestScope` (through
:mod:`gunicorn_pool.wsgi`, in every worker model and with the hooks), and any
code can open one with :func:`request_scope`.

- A scope is the pool core's lease sink (:data:`gunicorn_pool.core.LEASE_SINK`):
  every lease taken while it is current is recorded in it, with the
  ``file:line`` of the caller that took it.
- When the scope ends, :func:`request_connection` leases are given back first
  (commit when the request succeeded, rollback when it failed), then every
  lease still out is **reclaimed**: logged once (pool, masked DSN, where it
  was taken), its connection closed without a word to the server and its
  capacity freed. The leaker may still hold the object; the lease guard makes
  any later use of it raise :class:`~gunicorn_pool.errors.LeaseError` instead
  of touching a connection someone else now uses.

The current scope is a ``contextvars`` variable: per thread under gthread,
per greenlet under gevent, per task under asyncio. A thread started in a copy
of the request's context (``asyncio.to_thread``, an executor, Starlette's
thread pool for ``def`` endpoints) sees the same scope. Such a lease is the
request's if that thread has finished the request's work when the request
ends (it ended, or it is back idle in its executor): it is reclaimed then. A
lease whose thread still runs application code (a background job the request
started) is not: it is logged once and left to ``leak_timeout``. Under gevent
another greenlet cannot be looked into, so its leases are left too.

This module knows nothing of gunicorn or WSGI.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

from . import _concurrency as cc
from ._frames import INTERNAL
from .core import LEASE_SINK
from .errors import PoolError
from .slot import LENT

if TYPE_CHECKING:
    from .pool import ConnectionPool
    from .slot import Slot

__all__ = ["RequestScope", "current", "request_connection", "request_scope"]

logger = logging.getLogger("gunicorn_pool")

S = TypeVar("S", bound="RequestScope")

#: Packages whose frames are a thread's idle machinery, not application work.
_IDLE = INTERNAL | {"threading", "queue", "selectors", "socketserver"}


class RequestScope(list):  # type: ignore[type-arg]  # of (pool, slot, that lease's number)
    """One request's leases and end-of-request callbacks: the pool core's lease sink.

    The scope is the list of its leases (the pool appends ``(pool, slot, lease
    number)`` as each starts: no attribute lookup). ``begin()`` makes it
    current, ``end(failed=...)`` ends it (see the module docstring);
    :func:`request_scope` does both around a block. The request's own thread,
    greenlet or task (:meth:`owner`) is asked when it ends, in that thread.
    """

    __slots__ = ("_label", "finalizers", "generation", "_token", "__weakref__")

    def __init__(self, label: str = "") -> None:
        list.__init__(self)
        self._label: Any = label  # the label, or a WSGI environ it is read from when needed
        #: request_connection() leases, given back first when the request ends (created on first use).
        self.finalizers: Optional[dict[Any, Callable[[bool], None]]] = None
        self.generation = cc._generation[0]  # forks so far: a scope forked mid-request owns nothing
        self._token: Any = None

    @property
    def label(self) -> str:
        """What the request is (its path), for log lines."""
        label = self._label
        return str(label.get("PATH_INFO", "")) if isinstance(label, dict) else str(label)

    @property
    def leases(self) -> list[tuple[ConnectionPool, Slot, int]]:
        """The leases taken in this request so far (a copy)."""
        return list(self)

    def owner(self) -> int:
        """The thread or greenlet running the request (asked in it): a lease taken by another one
        was handed off."""
        return cc.get_ident()

    def begin(self: S) -> S:
        """Make this scope the current one (its request starts)."""
        self._token = LEASE_SINK.set(self)
        return self

    def end(self, *, failed: bool) -> int:
        """End the request: the scope stops being current, then :meth:`settle`."""
        token, self._token = self._token, None
        if token is not None:
            try:
                LEASE_SINK.reset(token)
            except ValueError:  # ended in another context than it began in: leave that one as it is
                pass
        return self.settle(failed=failed)

    def settle(self, *, failed: bool) -> int:
        """Give back request_connection() leases, then reclaim what is still lent; return how many were."""
        finalizers, self.finalizers = self.finalizers, None
        if finalizers:
            for finalize in list(finalizers.values()):
                try:
                    finalize(failed)
                except Exception as exc:  # noqa: BLE001 - one failing return must not skip the reclaim
                    logger.warning("gunicorn_pool: giving back a request connection failed: %s", exc)
        if not self:
            return 0
        leases = self[:]
        del self[:]
        if self.generation != cc._generation[0]:
            return 0  # forked mid-request: those leases belong to the parent
        reclaimed = 0
        owner = None
        for pool, slot, number in leases:
            if slot.uses != number or slot.state is not LENT:
                continue  # given back (the common case): no call
            if owner is None:
                owner = self.owner()
            if slot.holder is not None and slot.holder != owner and not _finished(slot.holder):
                _handed_off(pool, slot, self.label)
                continue
            if pool.reclaim(slot, number, self.label):
                reclaimed += 1
        return reclaimed


def _finished(holder: int) -> bool:
    """Has the thread that took a lease in a copy of the request's context finished the request's
    work? True if it ended, or runs no application code now (idle in its executor). A greenlet
    cannot be looked into: False."""
    if cc.gevent_patched():
        return False
    frame = sys._current_frames().get(holder)
    for _ in range(200):
        if frame is None:
            return True
        name = frame.f_globals.get("__name__", "")
        if not isinstance(name, str) or name.partition(".")[0] not in _IDLE:
            return False
        frame = frame.f_back
    return False


def _handed_off(pool: ConnectionPool, slot: Slot, label: str) -> None:
    logger.warning(
        "pool %s (%s): a connection taken at %s by another thread than its request's%s is still in use when"
        " the request ends; not reclaimed (set leak_timeout to be told if it stays out)",
        pool.name, pool.dsn, slot.taken_at or "an unknown place", f" ({label})" if label else "",
    )  # fmt: skip


def current() -> Optional[RequestScope]:
    """The scope of the request running in this thread, greenlet or task, if any."""
    sink = LEASE_SINK.get()
    return sink if isinstance(sink, RequestScope) else None


@contextlib.contextmanager
def request_scope(label: str = "") -> Iterator[RequestScope]:
    """``with request_scope():`` treat the block as one request (scripts, tests, other servers)."""
    scope = RequestScope(label).begin()
    failed = True
    try:
        yield scope
        failed = False
    finally:
        scope.end(failed=failed)


def request_connection(service: Any, name: str = "default") -> Any:
    """The connection of *service*'s pool *name* for the rest of the current request.

    The same connection on every call in one request; given back when the
    request ends. The request is one transaction whatever the pool's
    ``autocommit``: it is begun when the connection is first lent, committed
    when the request succeeded and rolled back when it raised or answered 5xx
    (the connection's own ``commit()``/``rollback()`` still work in between).
    *service* is a service object with a ``pool(name)`` method
    (:class:`~gunicorn_pool.DatabasePool`); ``gunicorn_pool.request_connection``
    also takes a registered name. Raises :class:`~gunicorn_pool.errors.PoolError`
    outside a request.
    """
    scope = current()
    if scope is None:
        raise PoolError(
            "request_connection() outside a request: use it in a view served by a gunicorn_pool worker or hook,"
            " or inside gunicorn_pool.request_scope()"
        )
    finalizers = scope.finalizers
    if finalizers is None:
        finalizers = scope.finalizers = {}
    key = (id(service), name)
    held = finalizers.get(key)
    if held is not None:
        return held.raw  # type: ignore[attr-defined]
    pool = service.pool(name)
    raw = pool.getconn()
    try:
        pool.connector.begin(raw)
    except BaseException:
        pool.putconn(raw, discard=True)
        raise
    if hasattr(raw, "_gp_request"):  # a lease guard: close() waits for the request's end
        raw._gp_request = True
    finalizers[key] = _RequestLease(pool, raw)
    return raw


class _RequestLease:
    """Gives a request_connection() lease back when its request ends."""

    __slots__ = ("pool", "raw")

    def __init__(self, pool: ConnectionPool, raw: Any) -> None:
        self.pool = pool
        self.raw = raw

    def __call__(self, failed: bool) -> None:
        raw = self.raw
        if getattr(raw, "_gp_request", False):
            raw._gp_request = False
            if raw._gp_close_asked:  # the app's teardown still closes its connection: counted, told once
                raw._gp_close_asked = False
                self.pool.count_user_close()
        self.pool.putconn(raw, commit=not failed)
