"""Where a lease was taken: the ``file:line`` of the first frame outside the pool and the frameworks.

A leaf (stdlib only): the pool calls :func:`caller` when a lease starts in a
request scope or on a pool with ``leak_timeout``, and leak reports name the
place it returned.

Which frames are "inside" is decided by the module's top-level package, as a
whole name: ``django.db.models`` is Django's, ``djangoproj.views`` is the app's.
gunicorn's own frames are inside too: a lease taken by framework code alone
(no app frame between the pool and gunicorn's request handler) is named by
the first frame outside gunicorn_pool, the framework call that took it, never
by ``gunicorn/workers/...``.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

__all__ = ["INTERNAL", "caller", "place"]

#: Top-level packages whose frames are never "where a lease was taken" (the pool's own, the
#: frameworks that call it, and the servers that call the app).
INTERNAL = frozenset({
    "gunicorn_pool", "sqlalchemy", "flask_sqlalchemy", "django", "contextlib", "dbutils", "redis", "gunicorn",
    "asyncio", "concurrent", "anyio", "starlette", "fastapi", "uvicorn", "uvicorn_worker", "threading",
})  # fmt: skip
_OWN = "gunicorn_pool"

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


def _package(frame: Any) -> str:
    name = frame.f_globals.get("__name__", "")
    return name.partition(".")[0] if isinstance(name, str) else ""


def _places(frame: Any) -> Optional[dict[int, str]]:
    """None if *frame* runs the pool's or a framework's code, else its call sites' places."""
    code = frame.f_code
    entry = _code_memo.get(id(code))
    if entry is None or entry[0] is not code:
        if len(_code_memo) >= _MEMO_MAX:
            _code_memo.clear()
        entry = _code_memo[id(code)] = (code, None if _package(frame) in INTERNAL else {})
    return entry[1]


def _place(frame: Any, places: dict[int, str]) -> str:
    lasti = frame.f_lasti
    where = places.get(lasti)
    if where is None:
        where = places[lasti] = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    return where


def place(frame: Any) -> str:
    """``file:line`` of *frame* if it runs the app's code (outside the pool and the frameworks),
    else "": the one-frame answer for a caller known to be the taker's frame (a ``with`` block's
    ``__enter__``, ``getconn()``'s caller), without a walk."""
    places = _places(frame)
    return "" if places is None else _place(frame, places)


def caller() -> str:
    """``file:line`` of the first frame outside the pool and the frameworks that call it.

    Each code object is judged once (its module's top-level package) and each
    call site formatted once. A walk remembers at which depth it found the
    first frame outside, per entry point (the code that called the pool); the
    next lease from that entry point jumps there (``sys._getframe``, no frame
    object for the frames between) and takes the frame if it is outside and
    the one below it inside, else walks. A Django query reaches the pool ~25
    frames below the view, on every lease of a request.

    The jump checks the boundary, not every frame below it: where app code
    runs inside framework code (a signal handler that queries) on a path of
    the same depth and boundary as one seen before, the place named is an
    outer app frame of the same stack. A stack with no app frame at all is
    named by its first frame outside gunicorn_pool.
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
            break
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
    return _framework_caller(start)


def _framework_caller(frame: Any) -> str:
    """The first frame outside gunicorn_pool from *frame* up (no app frame on this stack)."""
    for _ in range(64):
        if frame is None:
            return ""
        if _package(frame) != _OWN:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""
