"""Which concurrency primitives this process has: gevent or threads, GIL or not, before or after fork.

The pool core asks this module, never ``gevent.monkey`` itself, so there is
one answer per question (psycopg_pool keeps the same split in ``_acompat``):

- :func:`gevent_patched`: has gevent monkey-patched ``threading``? Then a
  waiter parks on the hub (:class:`HubWaiter`) instead of an OS lock.
- :func:`native_lock`: the OS lock, also once gevent patched ``threading``.
  The pool's lock guards only short sections that never yield, so an OS lock
  is never contended between greenlets and costs a fraction of gevent's.
- :func:`get_ident`: who is running: the thread, or the greenlet once patched.
- :func:`original_poll`: the OS ``select.poll``, for zero-timeout socket checks.
- :func:`lock_free_ok`: may the pool's fast paths rely on the GIL making
  ``deque.pop()``/``append()`` and ``dict.pop()`` atomic steps? False on a
  free-threaded CPython build running without its GIL; the pool then takes its
  lock on those paths too.
- :class:`ForkAware`: objects that must be told, in a forked child, that
  what they hold belongs to the parent.
- :func:`run_all`: run a few blocking tasks at once (threads, or greenlets
  once patched), so several slow servers cost one timeout, not one each.

Every answer is looked up when a pool (re)initialises in its process, so a pool
built in the master before gevent patched (``--preload``) still gets the
worker's primitives.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

__all__ = [
    "ForkAware",
    "HubWaiter",
    "ThreadWaiter",
    "Waiter",
    "fork_generation",
    "gevent_patched",
    "get_ident",
    "lock_free_ok",
    "native_lock",
    "original_poll",
    "run_all",
    "waiter_class",
]


def _monkey() -> Any:
    return sys.modules.get("gevent.monkey")


def gevent_patched() -> bool:
    """True once gevent has monkey-patched ``threading`` in this process."""
    monkey = _monkey()
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def native_lock() -> Any:
    """A new OS lock, also once gevent patched ``threading``."""
    if gevent_patched():
        return _monkey().get_original("_thread", "allocate_lock")()
    return threading.Lock()


def get_ident() -> int:
    """The running thread's id, or the running greenlet's once gevent patched ``threading``."""
    return threading.get_ident()  # looked up on each call: gevent replaces it when patching


def original_poll() -> Optional[Callable[[], Any]]:
    """The OS ``select.poll`` (None where there is none), also after gevent patched it.

    A zero-timeout poll never blocks, so it needs no gevent cooperation.
    """
    monkey = _monkey()
    if monkey is not None:
        try:
            return monkey.get_original("select", "poll")  # type: ignore[no-any-return]
        except (AttributeError, ImportError):
            return None
    return getattr(select, "poll", None)


#: Tests set this to False to run the pool as it runs on a free-threaded build.
FORCE_LOCKED = False
#: Set by an ASGI worker's boot: a synchronous lease taken on a thread whose event loop is running
#: is refused (it would stall every request of the worker); read when a pool (re)initialises.
REFUSE_ON_EVENT_LOOP = False


def lock_free_ok() -> bool:
    """May the pool's fast paths rely on the GIL? (False on free-threaded CPython without it.)"""
    if FORCE_LOCKED:
        return False
    gil_enabled = getattr(sys, "_is_gil_enabled", None)  # CPython >= 3.13
    return gil_enabled is None or bool(gil_enabled())


# -- waiters -----------------------------------------------------------------------------


class Waiter:
    """A queued caller, woken with a connection slot, leave to open one, or an error.

    The pool fills exactly one of ``slot``, ``may_open`` or ``error`` under its
    lock, then calls :meth:`wake`.
    """

    __slots__ = ("slot", "may_open", "error")

    def __init__(self) -> None:
        self.slot: Any = None
        self.may_open = False
        self.error: Optional[BaseException] = None

    def wake(self) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> bool:
        """Block until woken (True) or until *timeout* seconds pass (False)."""
        raise NotImplementedError


class ThreadWaiter(Waiter):
    """Blocks on its own ``threading`` lock (gevent's, if patched when it was made)."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()  # looked up now: gevent's lock once patched
        self.lock.acquire()

    def wake(self) -> None:
        self.lock.release()

    def wait(self, timeout: float) -> bool:
        return self.lock.acquire(timeout=timeout)


class HubWaiter(Waiter):
    """A waiter parked on the gevent hub itself, used once gevent patched threading.

    gevent's ``Lock.acquire(timeout=...)`` builds a ``gevent.Timeout`` (an
    exception object and a timer) for every wait; a hub ``Waiter`` and a raw
    loop timer do the same job for a fraction of the cost (bench/contention.py).
    An interrupted wait (gevent.Timeout, GreenletExit) closes the timer and the
    pool takes the waiter out of its queue; a late wake-up then only stores its
    value in the abandoned hub Waiter.
    """

    __slots__ = ("_waiter", "_loop", "_thread")
    _gevent: Any = None  # (hub Waiter type, get_hub, the native get_ident), set by waiter_class()

    def __init__(self) -> None:
        super().__init__()
        waiter_type, get_hub, native_ident = self._gevent
        hub = get_hub()
        self._loop = hub.loop
        self._waiter = waiter_type(hub)
        self._thread = native_ident()

    def wake(self) -> None:
        if self._gevent[2]() == self._thread:
            self._loop.run_callback(self._waiter.switch, True)
        else:  # woken from another native thread: that thread's loop must be woken
            self._loop.run_callback_threadsafe(self._waiter.switch, True)

    def wait(self, timeout: float) -> bool:
        timer = self._loop.timer(timeout)
        timer.start(self._waiter.switch, False)
        try:
            return bool(self._waiter.get())
        finally:
            timer.close()


def waiter_class() -> type[Waiter]:
    """:class:`HubWaiter` once gevent has patched threading, else :class:`ThreadWaiter`."""
    if not gevent_patched():
        return ThreadWaiter
    if HubWaiter._gevent is None:
        from gevent.hub import Waiter as HubWaiterType
        from gevent.hub import get_hub

        HubWaiter._gevent = (HubWaiterType, get_hub, _monkey().get_original("_thread", "get_ident"))
    return HubWaiter


# -- fork ------------------------------------------------------------------------------------

_generation = [0]  # bumped in every forked child


def fork_generation() -> int:
    """How many forks separate this process from the first one that imported us."""
    return _generation[0]


class ForkAware:
    """Mixin: after a fork, every live instance gets ``inherited = True``.

    The instance checks the flag (one attribute read) on its hot paths and
    adopts the new process on first use; nothing else runs at fork time, so a
    lock held by a parent thread at the moment of the fork is never touched.
    """

    inherited = False
    _instances: weakref.WeakSet[ForkAware] = weakref.WeakSet()

    def _track_forks(self) -> None:
        ForkAware._instances.add(self)

    def _forked(self) -> None:
        """Called in a forked child, for every live instance (nothing else runs at fork time)."""
        self.inherited = True

    @classmethod
    def live_instances(cls) -> list[ForkAware]:
        return [obj for obj in list(ForkAware._instances) if isinstance(obj, cls)]


def _after_fork_in_child() -> None:
    _generation[0] += 1
    for obj in list(ForkAware._instances):
        obj._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- several blocking tasks at once -----------------------------------------------------------


def run_all(tasks: Sequence[tuple[str, Callable[[], Any]]], *,
            deadline: Optional[float]) -> dict[str, Optional[BaseException]]:  # fmt: skip
    """Run *tasks* (name, callable) at once and wait for them until *deadline* (``time.monotonic()``;
    None: until they end).

    Returns what each raised (None: it returned). A task still running at the
    deadline is left to finish on its own (a daemon thread) and reported as
    :class:`TimeoutError`. One task runs inline, with no thread.
    """
    if len(tasks) == 1:
        name, task = tasks[0]
        try:
            task()
            return {name: None}
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            return {name: exc}
    results: dict[str, Optional[BaseException]] = {}

    def run(name: str, task: Callable[[], Any]) -> None:
        try:
            task()
            results[name] = None
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            results[name] = exc

    threads = [threading.Thread(target=run, args=task, name=f"gunicorn_pool-{task[0]}", daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return {name: results[name] if name in results else TimeoutError(f"{name}: still running at the deadline")
            for name, _ in tasks}  # fmt: skip


async def arun_all(coroutines: Mapping[str, Awaitable[Any]], *,
                   deadline: Optional[float]) -> dict[str, Optional[BaseException]]:  # fmt: skip
    """:func:`run_all` for coroutines, in the running event loop: run them at once until *deadline*
    (``time.monotonic()``; None: until they end); what each raised (None: it returned). One still
    running at the deadline is cancelled and reported as :class:`TimeoutError`."""
    import asyncio

    tasks = {name: asyncio.ensure_future(coro) for name, coro in coroutines.items()}
    if not tasks:
        return {}
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    _, pending = await asyncio.wait(tasks.values(), timeout=left)
    for task in pending:
        task.cancel()
    results: dict[str, Optional[BaseException]] = {}
    for name, task in tasks.items():
        if task in pending:
            results[name] = TimeoutError(f"{name}: still running at the deadline")
        elif task.cancelled():
            results[name] = asyncio.CancelledError()
        else:
            results[name] = task.exception()
    return results
