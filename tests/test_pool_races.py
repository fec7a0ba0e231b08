"""The lock-free checkout and return, under fire: no connection lent twice, no wake-up lost,
close() racing users, fork with the lock held, and the same on a build without a GIL.

These run the pool's own bookkeeping over SQLite (no server decides anything
here). Each race test holds its window open on purpose; the mutation checks at
the end prove each test fails when the re-check it covers is removed from
gunicorn_pool/pool.py, and the locked-mode checks run the same races down the
paths a free-threaded CPython takes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import textwrap
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from support import join_all, sqlite_pool, start_threads, wait_until

from gunicorn_pool import ConnectionPool, PoolClosed, PoolError, _concurrency


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond, so races between pool steps happen often."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- fork ---------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["stats", "getconn", "close"])
def test_child_forked_while_the_lock_was_held_does_not_hang(tmp_path, call):
    """A thread of the parent held the pool's lock when the process forked (gunicorn
    --preload with a thread using the pool): the child's copy of that lock is held
    forever. Every entry point must adopt the process (fresh lock, inherited
    connections dropped) before taking it."""
    pool = sqlite_pool(tmp_path, min_size=1, max_size=2, timeout=2)
    with pool._lock:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 1
            try:
                signal.alarm(5)  # a hang ends the child with SIGALRM
                if call == "stats":
                    code = 0 if pool.stats()["pool_size"] == 0 else 2
                elif call == "getconn":
                    conn = pool.getconn()
                    code = 0 if conn.execute("SELECT 1").fetchone() == (1,) else 3
                else:
                    pool.close()
                    code = 0
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    assert pool.stats()["pool_size"] == 1  # the parent's pool is untouched
    pool.close()



# -- lock-free checkout and return (the pool's own bookkeeping: SQLite) ----------


def test_no_connection_is_lent_twice_and_no_wake_up_is_lost(tmp_path, fast_switching):
    """12 threads x 1,500 uses on 3 connections, threads switching every microsecond.

    Checkout takes an idle connection without a lock and return appends without
    one when nobody waits; a waiter that queues re-checks the idle stack. A
    connection lent twice shows as two holders at once; a lost wake-up leaves a
    waiter asleep with a connection idle, which ends in PoolTimeout (5 s here,
    while a use takes microseconds).
    """
    pool = sqlite_pool(tmp_path, min_size=3, max_size=3, timeout=5)
    holders: dict[int, int] = {}
    errors: list[BaseException] = []
    threads, uses = 12, 1500

    def user(i: int) -> None:
        try:
            for n in range(uses):
                ctx = pool.connection() if n % 2 else contextlib.nullcontext(pool.getconn())
                with ctx as conn:
                    if holders.setdefault(id(conn), i) != i:
                        raise AssertionError(f"connection lent to threads {holders[id(conn)]} and {i}")
                    time.sleep(0) if n % 3 == 0 else None
                    del holders[id(conn)]
                    if not n % 2:
                        pool.putconn(conn)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    join_all(start_threads(user, [(i,) for i in range(threads)]), 120)
    stats = pool.stats()
    pool.close()
    assert not errors, errors[:3]
    assert stats["requests_num"] == threads * uses, stats
    assert stats["pool_size"] == 3 and stats["pool_available"] == 3, stats
    assert stats["requests_waiting"] == 0 and stats["requests_timeouts"] == 0, stats
    assert stats["requests_queued"] > 0, "no contention: the test proved nothing"


class _Paused:
    """Runs *step* only after signalling ``entered`` and waiting (at most 5 s) until
    *until* holds: holds one race window of the pool open on purpose, whatever
    the machine's speed."""

    def __init__(self, until: Callable[[], bool]) -> None:
        self.until = until
        self.entered = threading.Event()

    def __call__(self, step: Callable[..., Any], *args: Any) -> Any:
        self.entered.set()
        wait_until(self.until, 5, interval=0.01, what="the other side of the race")
        return step(*args)


def _timed_taker(pool: ConnectionPool) -> tuple[dict[str, Any], Callable[[], None]]:
    """A getconn() to run in a thread; its result, error and duration land in the dict."""
    got: dict[str, Any] = {}

    def taker() -> None:
        start = time.monotonic()
        try:
            got["conn"] = pool.getconn(timeout=2)
        except PoolError as exc:
            got["error"] = exc
        got["s"] = time.monotonic() - start

    return got, taker


def test_waiter_queueing_while_a_connection_returns_is_served_at_once(tmp_path):
    """A taker finds nothing idle; before it queues (paused here), the holder returns
    its connection without the lock, sees nobody waiting and leaves it idle. The
    taker must look at the idle stack again after queueing, or it sleeps next to an
    idle connection until PoolTimeout."""
    pool = sqlite_pool(tmp_path, min_size=1, max_size=1, timeout=2)
    held = pool.getconn()
    returned = threading.Event()
    paused = _Paused(returned.is_set)  # the taker queues only once the holder returned
    make_waiter = pool._waiter_class
    pool._waiter_class = lambda: paused(make_waiter)
    got, taker = _timed_taker(pool)
    thread = start_threads(taker, [()])[0]
    assert paused.entered.wait(5)
    pool.putconn(held)  # lock-free: nobody is queued yet
    returned.set()
    join_all([thread], 10)
    pool._waiter_class = make_waiter
    assert "error" not in got, got
    assert got["s"] < 1.0, f"waited {got['s']:.2f}s next to an idle connection"
    pool.putconn(got["conn"])
    pool.close()


def test_return_racing_a_new_waiter_hands_the_connection_over(tmp_path):
    """The holder saw nobody waiting and is about to put its connection on the idle
    stack (paused here); meanwhile a taker queues. The holder must look at the
    queue again after the append and hand the connection over."""
    pool = sqlite_pool(tmp_path, min_size=1, max_size=1, timeout=2)
    held = pool.getconn()
    paused = _Paused(lambda: len(pool._waiters) == 1)  # the append waits until the taker queued

    class PausedAppend(deque):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            paused(super().append, item)

    pool._idle = PausedAppend(pool._idle)
    got, taker = _timed_taker(pool)
    returner = start_threads(lambda: pool.putconn(held), [()])[0]
    assert paused.entered.wait(5)
    thread = start_threads(taker, [()])[0]
    join_all([returner, thread], 10)
    pool._idle = deque(pool._idle)  # no more pauses from here on
    assert "error" not in got, got
    assert got["s"] < 1.0, f"waited {got['s']:.2f}s next to an idle connection"
    pool.putconn(got["conn"])
    pool.close()


def test_close_during_lock_free_use_closes_every_connection_once(tmp_path, fast_switching):
    """close() while threads check out and return without the lock: every connection
    is closed exactly once, none is lent after being closed, and no thread hangs."""
    from gunicorn_pool.connectors import SQLiteConnector

    closed: list[Any] = []

    class Counting(SQLiteConnector):
        def close(self, raw: Any) -> None:
            closed.append(raw)
            super().close(raw)

    from gunicorn_pool.config import parse_config

    cfg = parse_config("p", f"sqlite:///{tmp_path / 'c.db'}")
    pool = ConnectionPool(Counting(cfg), name="p", min_size=6, max_size=6, timeout=5)
    pool.open()
    stop = threading.Event()
    errors: list[BaseException] = []

    def user() -> None:
        while not stop.is_set():
            try:
                with pool.connection() as conn:
                    assert conn not in closed, "lent a closed connection"
                    conn.execute("SELECT 1")
                time.sleep(0.0005)  # between uses, so some thread is checking out when close() runs
            except PoolClosed:
                return  # expected once close() ran; a LeaseError (closed under its user) is not
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    workers = start_threads(user, [()] * 3)  # fewer than the connections: some always idle
    time.sleep(0.3)
    pool.close()
    stop.set()
    join_all(workers, 30)
    assert not errors, errors[:3]
    assert len(closed) == 6 and len({id(c) for c in closed}) == 6, closed
    assert pool.stats()["pool_size"] == 0


# -- the tests above fail when the re-check they cover is removed ---------------------------------


def _mutant(name: str, old: str, new: str) -> Callable[..., Any]:
    """ConnectionPool.<name> with the statement *old* replaced by *new* in its source.

    Whitespace in *old* matches any run of whitespace; *new* takes the indentation
    of the line it replaces."""
    method = getattr(ConnectionPool, name)
    source = textwrap.dedent(inspect.getsource(method))
    pattern = r"(?m)^([ \t]*)" + r"\s+".join(map(re.escape, old.split()))
    found = re.search(pattern, source)
    assert found, f"{name} no longer contains the statement this mutation removes: {old!r}"
    indent = found.group(1)
    mutated = source[: found.start()] + "\n".join(indent + line for line in new.split("\n")) + source[found.end() :]
    namespace: dict[str, Any] = {}
    exec(compile(mutated, f"<mutant {name}>", "exec"), dict(vars(inspect.getmodule(method))), namespace)
    return namespace[name]  # type: ignore[no-any-return]


MUTATIONS = {
    # invariant 4, taker side: a taker that queued must look at the idle stack again
    "no re-check of the idle stack after queueing": (
        "_reserve", "if self._idle:", "if False:",
        test_waiter_queueing_while_a_connection_returns_is_served_at_once,
    ),
    # invariant 4, returner side: a lock-free return must look at the queue again
    "no re-check of the queue after a lock-free append": (
        "_after_append", "return self._shelve_locked(None, cold=False)", "pass",
        test_return_racing_a_new_waiter_hands_the_connection_over,
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_each_race_test_fails_without_the_recheck_it_covers(tmp_path, monkeypatch, mutation):
    name, old, new, race_test = MUTATIONS[mutation]
    monkeypatch.setattr(ConnectionPool, name, _mutant(name, old, new))
    with pytest.raises(AssertionError):
        race_test(tmp_path)


def test_close_while_a_return_is_mid_append_closes_that_connection_too(tmp_path):
    """A lock-free return took the idle stack and is about to append to it (paused here) when
    close() runs. close() must leave that very stack in place and drain it, so the return,
    seeing the pool closed after its append, finds its connection there and closes it."""
    pool = sqlite_pool(tmp_path, min_size=1, max_size=1, timeout=2)
    held = pool.getconn()
    closed = threading.Event()
    paused = _Paused(closed.is_set)  # the append waits until close() ran

    class PausedAppend(deque):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            paused(super().append, item)

    pool._idle = PausedAppend(pool._idle)
    returner = start_threads(lambda: pool.putconn(held), [()])[0]
    assert paused.entered.wait(5)
    pool.close()
    closed.set()
    join_all([returner], 10)
    assert pool.stats()["pool_size"] == 0, "the returned connection was left open in a stack nobody drains"
    with pytest.raises(Exception, match="closed"):
        held.execute("SELECT 1")


def test_close_race_test_fails_against_a_close_that_swaps_the_idle_stack(tmp_path, monkeypatch):
    """The close() of before took the idle deque away at once instead of popping it one by one."""
    monkeypatch.setattr(ConnectionPool, "_start_closing", _mutant(
        "_start_closing",
        "idle = [] while (slot := self._pop_idle()) is not None: idle.append(slot)",
        "idle = list(self._idle)\nself._idle = deque()",
    ))  # fmt: skip
    with pytest.raises(AssertionError, match="left open"):
        test_close_while_a_return_is_mid_append_closes_that_connection_too(tmp_path)


# -- a build without a GIL: the same races down the locked paths -------------------------------------


@pytest.fixture
def locked_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run pools as on free-threaded CPython without its GIL: every fast path takes the lock."""
    monkeypatch.setattr(_concurrency, "FORCE_LOCKED", True)
    yield


def test_without_a_gil_the_pool_takes_its_lock_on_every_checkout_and_return(tmp_path, locked_mode):
    pool = sqlite_pool(tmp_path, min_size=1, max_size=1)
    assert pool._lock_free is False
    taken = []

    class CountingLock:
        def __init__(self, lock: Any) -> None:
            self.lock = lock

        def __enter__(self) -> Any:
            taken.append(1)
            return self.lock.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self.lock.__exit__(*exc)

    pool._lock = CountingLock(pool._lock)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    assert len(taken) >= 2  # checkout and return
    pool.close()


# The queueing and return races hold a window between two lock-free steps open; the
# locked paths have no such window, so there is nothing to hold open for them.
@pytest.mark.parametrize("race", ["lent twice", "close"])
def test_without_a_gil_no_connection_is_lent_twice_and_no_wake_up_is_lost(tmp_path, locked_mode, fast_switching,
                                                                          race):  # fmt: skip
    if race == "lent twice":
        test_no_connection_is_lent_twice_and_no_wake_up_is_lost(tmp_path, None)
    else:
        test_close_during_lock_free_use_closes_every_connection_once(tmp_path, None)
