"""The current request: where it begins and ends, what it borrowed, and what it leaked.

A general pool cannot know when a borrower is done. gunicorn_pool can: the
worker runs every request inside a :class:`RequestScope` (through
:class:`gunicorn_pool.wsgi.RequestScopeMiddleware`, in every worker model and
with the hooks), and any code can open one with :func:`request_scope`.

- Every lease taken while a scope is current is recorded in it, with the
  ``file:line`` of the caller that took it.
- When the scope ends, :func:`request_connection` leases are given back first
  (commit when the request succeeded, rollback when it failed), then every
  lease still out is **reclaimed**: logged once (pool, masked DSN, where it
  was taken), its connection closed without a word to the server and its
  capacity freed. The leaker may still hold the object; the lease guard makes
  any later use of it raise :class:`~gunicorn_pool.errors.LeaseError` instead
  of touching a connection someone else now uses.

The current scope is a ``contextvars`` variable: per thread under gthread,
per greenlet under gevent. This module knows nothing of gunicorn or WSGI.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from .errors import PoolError

if TYPE_CHECKING:
    from .pool import ConnectionPool
    from .slot import Slot

__all__ = ["RequestScope", "begin", "caller", "current", "end", "request_connection", "request_scope"]

logger = logging.getLogger("gunicorn_pool")

#: The scope of the request running in this thread or greenlet (the pool reads it on every checkout).
CURRENT: contextvars.ContextVar[Optional[RequestScope]] = contextvars.ContextVar("gunicorn_pool_request",
                                                                                   default=None)  # fmt: skip

#: Where a lease is "taken": the first frame outside these packages.
_INTERNAL = ("gunicorn_pool", "sqlalchemy", "flask_sqlalchemy", "django", "contextlib", "dbutils", "redis")


class RequestScope:
    """One request's leases and end-of-request callbacks."""

    __slots__ = ("label", "leases", "finalizers", "pid", "__weakref__")

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.leases: list[tuple[ConnectionPool, Slot, int]] = []  # (pool, slot, that lease's number)
        self.finalizers: dict[Any, Callable[[bool], None]] = {}  # run at the end, with "failed"
        self.pid = os.getpid()

    def record(self, pool: ConnectionPool, slot: Slot) -> None:
        """A lease of *slot* started in this request (the pool calls this)."""
        self.leases.append((pool, slot, slot.uses))

    def close(self, *, failed: bool) -> int:
        """End the request: run the finalizers, then reclaim what is still lent; return how many were."""
        finalizers, self.finalizers = list(self.finalizers.values()), {}
        for finalize in finalizers:
            try:
                finalize(failed)
            except Exception as exc:  # noqa: BLE001 - one failing return must not skip the reclaim
                logger.warning("gunicorn_pool: giving back a request connection failed: %s", exc)
        leases, self.leases = self.leases, []
        if os.getpid() != self.pid:  # forked mid-request: those leases belong to the parent
            return 0
        reclaimed = 0
        for pool, slot, number in leases:
            if pool.reclaim(slot, number, self.label):
                reclaimed += 1
        return reclaimed


def current() -> Optional[RequestScope]:
    """The scope of the request running in this thread or greenlet, if any."""
    return CURRENT.get()


def begin(label: str = "") -> tuple[RequestScope, contextvars.Token[Optional[RequestScope]]]:
    """Start a request scope here; pass both values to :func:`end`."""
    scope = RequestScope(label)
    return scope, CURRENT.set(scope)


def end(scope: RequestScope, token: contextvars.Token[Optional[RequestScope]], *, failed: bool) -> int:
    """End a scope started by :func:`begin`: see :meth:`RequestScope.close`."""
    try:
        CURRENT.reset(token)
    except ValueError:  # ended in another context than it began in: leave that one as it is
        pass
    return scope.close(failed=failed)


@contextlib.contextmanager
def request_scope(label: str = "") -> Iterator[RequestScope]:
    """``with request_scope():`` treat the block as one request (scripts, tests, other servers)."""
    scope, token = begin(label)
    failed = True
    try:
        yield scope
        failed = False
    finally:
        end(scope, token, failed=failed)


#: id(code object) -> (that code object, None if it is the pool's or a framework's, else its
#: places: f_lasti -> "file:line"). Keyed by id: hashing a code object hashes its constants,
#: hundreds of instructions per frame; the stored object tells a reused id apart.
_code_memo: dict[int, tuple[Any, Optional[dict[int, str]]]] = {}
#: id(code of the frame that called the pool) -> (that code object, the depths above it at which
#: the first frame outside was found before): tried first, so a lease taken 25 framework frames
#: below the app does not build 25 frame objects (CPython builds one per ``f_back``).
_depths: dict[int, tuple[Any, tuple[int, ...]]] = {}
_MEMO_MAX = 50_000  # code objects made at run time (exec, eval) must not grow them for ever
_DEPTHS_KEPT = 8  # call paths remembered per entry point
_JUMP_FROM = 3  # a walk of fewer frames costs less than a jump and its check


def _places(frame: Any) -> Optional[dict[int, str]]:
    """None if *frame* runs the pool's or a framework's code, else its call sites' places."""
    code = frame.f_code
    entry = _code_memo.get(id(code))
    if entry is None or entry[0] is not code:
        if len(_code_memo) >= _MEMO_MAX:
            _code_memo.clear()
        inside = frame.f_globals.get("__name__", "").startswith(_INTERNAL)
        entry = _code_memo[id(code)] = (code, None if inside else {})
    return entry[1]


def _place(frame: Any, places: dict[int, str]) -> str:
    lasti = frame.f_lasti
    where = places.get(lasti)
    if where is None:
        where = places[lasti] = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    return where


def caller() -> str:
    """``file:line`` of the first frame outside the pool and the frameworks that call it.

    Each code object is judged once (its module's name) and each call site
    formatted once. A walk remembers at which depth it found the first frame
    outside, per entry point (the code that called the pool); the next lease
    from that entry point jumps there (``sys._getframe``, no frame object for
    the frames between) and takes the frame if it is outside and the one below
    it inside, else walks. A Django query reaches the pool ~25 frames below the
    view, on every lease of a request.

    The jump checks the boundary, not every frame below it: where app code
    runs inside framework code (a signal handler that queries) on a path of
    the same depth and boundary as one seen before, the place named is an
    outer app frame of the same stack.
    """
    start: Any = sys._getframe(2)
    start_code = start.f_code
    known = _depths.get(id(start_code))
    hints = known[1] if known is not None and known[0] is start_code else ()
    for depth in hints:
        try:
            below = sys._getframe(1 + depth)
        except ValueError:  # a shorter stack than that path's
            continue
        frame = below.f_back
        if frame is not None and _places(below) is None and (places := _places(frame)) is not None:
            return _place(frame, places)
    frame = start
    memo = _code_memo
    for depth in range(64):
        if frame is None:
            return ""
        code = frame.f_code  # _places() inlined for the known code objects: most leases walk 1-2 frames
        entry = memo.get(id(code))
        places = entry[1] if entry is not None and entry[0] is code else _places(frame)
        if places is not None:
            if depth >= _JUMP_FROM:
                if len(_depths) >= _MEMO_MAX:
                    _depths.clear()
                _depths[id(start_code)] = (start_code, ((depth,) + hints)[:_DEPTHS_KEPT])
            where = places.get(frame.f_lasti)
            return where if where is not None else _place(frame, places)
        frame = frame.f_back
    return ""


def request_connection(service: Any, name: str = "default") -> Any:
    """The connection of *service*'s pool *name* for the rest of the current request.

    The same connection on every call in one request; given back when the
    request ends (commit if it succeeded, rollback if it failed), so a view
    needs no ``with`` block and no teardown code::

        conn = gunicorn_pool.request_connection("db")

    *service* is a registered name or a service object with a ``pool(name)``
    method (:class:`~gunicorn_pool.DatabasePool`). Raises
    :class:`~gunicorn_pool.errors.PoolError` outside a request.
    """
    scope = CURRENT.get()
    if scope is None:
        raise PoolError(
            "request_connection() outside a request: use it in a view served by a gunicorn_pool worker or hook,"
            " or inside gunicorn_pool.request_scope()"
        )
    if isinstance(service, str):
        from .registry import get

        service = get(service)
    key = (id(service), name)
    held = scope.finalizers.get(key)
    if held is not None:
        return held.raw  # type: ignore[attr-defined]
    pool = service.pool(name)
    raw = pool.getconn()
    scope.finalizers[key] = _RequestLease(pool, raw)
    return raw


class _RequestLease:
    """Gives a request_connection() lease back when its request ends."""

    __slots__ = ("pool", "raw")

    def __init__(self, pool: ConnectionPool, raw: Any) -> None:
        self.pool = pool
        self.raw = raw

    def __call__(self, failed: bool) -> None:
        self.pool.putconn(self.raw, commit=not failed)
