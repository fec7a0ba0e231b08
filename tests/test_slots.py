"""The slot state machine of gunicorn_pool/slot.py, transition by transition, with no server.

A stand-in connector counts every call the pool makes; the assertions are
about the pool's own bookkeeping (states, capacity, which connector call
closes what), which no database decides.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Optional

import pytest

from gunicorn_pool import ConnectError, ConnectionPool, LeaseError, PoolClosed, PoolTimeout, _frames, request_scope
from gunicorn_pool.connectors.base import DROP, RESET, REUSE, Connector
from gunicorn_pool.slot import CLOSED, IDLE, LENT


class Conn:
    """A stand-in connection: flags say what its user left behind."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.in_transaction = False
        self.changed = False
        self.dead = False


class StandIn(Connector):
    def __init__(self, **kw: Any) -> None:
        super().__init__(pool_name="s", address="stand-in:0", dsn="standin://s", **kw)
        self.made = 0
        self.calls: list[tuple[str, int]] = []
        self.fail_connect: Optional[BaseException] = None
        self.finish_outcome = REUSE

    def connect(self) -> Conn:
        if self.fail_connect is not None:
            raise self.fail_connect
        self.made += 1
        return Conn(self.made)

    def close(self, raw: Conn) -> None:
        self.calls.append(("close", raw.n))

    def discard(self, raw: Conn) -> None:
        self.calls.append(("discard", raw.n))

    def ping(self, raw: Conn, timeout: float) -> None:
        self.calls.append(("ping", raw.n))
        if raw.dead:
            raise OSError("gone")

    def lend(self, raw: Conn, holder: Optional[int], taken_at: str = "") -> None:
        self.calls.append(("lend", raw.n))

    def check_in(self, raw: Conn) -> bool:
        return not (raw.in_transaction or raw.changed)

    def finish(self, raw: Conn, *, commit: bool, failed: bool = False) -> str:
        self.calls.append(("commit" if commit else "rollback", raw.n))
        raw.in_transaction = raw.changed = False
        return self.finish_outcome


def make(**options: Any) -> tuple[ConnectionPool, StandIn]:
    connector = StandIn()
    options.setdefault("check_interval", 60.0)
    pool = ConnectionPool(connector, name="s", **options)
    return pool, connector


def slot_of(pool: ConnectionPool, raw: Any) -> Any:
    return pool._slots[id(raw)]


def test_a_lease_moves_a_slot_opening_idle_lent_idle_and_closed():
    pool, c = make(min_size=1, max_size=2)
    assert pool.open() == 1
    (slot,) = pool._slots.values()
    assert slot.state is IDLE and pool._size == 1
    raw = pool.getconn()
    assert slot.state is LENT and pool._lent == {slot.key: slot} and slot.uses == 1
    pool.putconn(raw)
    assert slot.state is IDLE and pool._lent == {} and list(pool._idle) == [slot]
    pool.close()
    assert slot.state is CLOSED and pool._size == 0 and ("close", 1) in c.calls


def test_capacity_is_released_exactly_once_per_slot():
    pool, c = make(min_size=0, max_size=1)
    raw = pool.getconn()
    slot = slot_of(pool, raw)
    pool._remove(slot, polite=False)
    pool._remove(slot, polite=True)  # a second remove of the same slot changes nothing
    assert pool._size == 0 and c.calls.count(("discard", 1)) == 1 and ("close", 1) not in c.calls
    with pytest.raises(LeaseError):
        pool.putconn(raw)  # its lease ended with the remove
    assert pool._size == 0


def test_a_failed_connect_gives_the_reservation_back_and_backs_off():
    pool, c = make(min_size=0, max_size=1, reconnect_backoff_max=5)
    c.fail_connect = OSError("refused")
    with pytest.raises(ConnectError, match="stand-in:0"):
        pool.getconn()
    assert pool._size == 0 and pool.stats()["connections_errors"] == 1
    c.fail_connect = None
    with pytest.raises(ConnectError, match="next attempt in"):
        pool.getconn()  # backing off: refused at once, no connect tried
    assert c.made == 0 and pool._size == 0


def test_an_expired_slot_is_closed_on_return_and_replaced_on_checkout():
    pool, c = make(min_size=1, max_size=1, max_lifetime=1e-6)
    pool.open()
    raw = pool.getconn()  # expired already: replaced before it is lent
    assert raw.n == 2 and ("close", 1) in c.calls
    pool.putconn(raw)  # expired again: closed politely, capacity freed
    assert ("close", 2) in c.calls and pool._size == 0


def test_a_dead_idle_connection_is_dropped_and_replaced_within_the_same_reservation():
    pool, c = make(min_size=1, max_size=1, check_interval=0.0)
    pool.open()
    next(iter(pool._slots.values())).raw.dead = True
    raw = pool.getconn()
    assert raw.n == 2 and ("discard", 1) in c.calls and pool._size == 1
    assert pool.stats()["connections_lost"] == 1


@pytest.mark.parametrize("outcome, kept", [(REUSE, True), (RESET, True), (DROP, False)])
def test_return_of_a_dirty_connection_settles_it_by_the_connectors_outcome(outcome, kept):
    pool, c = make(min_size=0, max_size=1)
    c.finish_outcome = outcome
    with pool.connection() as raw:
        raw.in_transaction = True
    assert ("commit", raw.n) in c.calls  # a clean exit commits
    assert (pool._size == 1) is kept and (("discard", raw.n) in c.calls) is not kept
    assert pool.stats()["connections_reset"] == (1 if outcome == RESET else 0)
    with pytest.raises(RuntimeError):
        with pool.connection() as raw2:
            raw2.changed = True
            raise RuntimeError("view failed")
    assert ("rollback", raw2.n) in c.calls


def test_a_base_exception_drops_the_connection_without_a_word():
    pool, c = make(min_size=1, max_size=1)
    pool.open()
    with pytest.raises(KeyboardInterrupt):
        with pool.connection():
            raise KeyboardInterrupt
    assert ("discard", 1) in c.calls and pool._size == 0 and ("close", 1) not in c.calls


def test_a_waiter_is_handed_the_returned_slot_directly():
    pool, c = make(min_size=1, max_size=1, timeout=5)
    pool.open()
    raw = pool.getconn()
    got: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: got.update(raw=pool.getconn()))
    waiter.start()
    while not pool._waiters:
        threading.Event().wait(0.001)
    pool.putconn(raw)
    waiter.join(5)
    assert got["raw"] is raw and slot_of(pool, raw).state is LENT and not pool._idle
    assert pool.stats()["requests_queued"] == 1


def test_a_slot_returned_to_a_closed_pool_is_closed_not_shelved():
    pool, c = make(min_size=0, max_size=2)
    raw = pool.getconn()
    pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn()
    pool.putconn(raw)
    assert ("close", raw.n) in c.calls and pool._size == 0 and not pool._idle


def test_a_waiter_times_out_and_leaves_the_queue():
    pool, c = make(min_size=0, max_size=1, timeout=0.05)
    raw = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn()
    assert not pool._waiters and pool.stats()["requests_timeouts"] == 1
    pool.putconn(raw)
    assert pool.getconn() is raw


def _taken_at(pool: ConnectionPool, raw: Any) -> str:
    return str(slot_of(pool, raw).taken_at)


def test_a_lease_in_a_request_records_the_line_that_took_it_per_call_site():
    """caller() memoizes per code object and call site: two lines of one function stay two places,
    frames of a framework module are skipped, and a memo entry left by a dead code object whose id
    was reused is not trusted."""
    pool, _ = make(min_size=0, max_size=4)
    pool._record_places = True  # as after a first leak: every lease records its line
    here = __file__.rstrip("c")
    with request_scope():
        for _ in range(2):  # the second round is served from the memo
            first_line = sys._getframe().f_lineno + 1
            first = pool.getconn()
            second_line = sys._getframe().f_lineno + 1
            second = pool.getconn()
            assert _taken_at(pool, first) == f"{here}:{first_line}"
            assert _taken_at(pool, second) == f"{here}:{second_line}"
            pool.putconn(first)
            pool.putconn(second)
        framework: dict[str, Any] = {"__name__": "django.db.backends.fake"}
        exec(compile("def take(pool):\n    return pool.getconn()\n", "/fake/django/take.py", "exec"), framework)
        line = sys._getframe().f_lineno + 1
        raw = framework["take"](pool)
        assert _taken_at(pool, raw) == f"{here}:{line}"  # the framework's frame is skipped
        pool.putconn(raw)
        app: dict[str, Any] = {"__name__": "myapp.views"}
        exec(compile("def take(pool):\n    return pool.getconn()\n", "/srv/myapp/views.py", "exec"), app)
        code = app["take"].__code__
        _frames._code_memo[id(code)] = (framework["take"].__code__, None)  # as if a dead code's id came back
        raw = app["take"](pool)
        assert _taken_at(pool, raw) == "/srv/myapp/views.py:2"
        pool.putconn(raw)


def _chain(module: str, length: int) -> Any:
    """A function *length* frames deep in a module named *module*, ending in ``pool.getconn()``."""
    src = "def f0(pool):\n    return pool.getconn()\n"
    for i in range(1, length):
        src += f"def f{i}(pool):\n    return f{i - 1}(pool)\n"
    space: dict[str, Any] = {"__name__": module}
    exec(compile(src, f"/fake/{module.replace('.', '/')}.py", "exec"), space)
    return space[f"f{length - 1}"]


def test_a_lease_names_its_line_on_every_path_from_one_entry_point():
    """caller() jumps to the depth where an earlier walk from the same entry point (here
    getconn()) found the app, and checks the boundary there: paths of other depths, taken in
    any order, and a thread's shorter stack still name the app's own line."""
    pool, _ = make(min_size=0, max_size=2)
    pool._record_places = True  # as after a first leak: every lease records its line
    here = __file__.rstrip("c")
    deep, shallow = _chain("django.db.models.deep", 5), _chain("sqlalchemy.orm.shallow", 2)
    _frames._depths.clear()
    with request_scope():
        for take in [deep, shallow, pool.getconn.__func__, deep, pool.getconn.__func__, shallow, deep] * 2:
            line = sys._getframe().f_lineno + 1
            raw = take(pool)
            assert _taken_at(pool, raw) == f"{here}:{line}", take
            pool.putconn(raw)
        (code, depths), = _frames._depths.values()  # fmt: skip
        assert code is ConnectionPool._take.__code__ and sorted(depths) == [4, 7], depths  # 2: walked
        places: list[str] = []

        def in_a_thread() -> None:
            with request_scope():
                raw = shallow(pool)
                places.append(_taken_at(pool, raw))
                pool.putconn(raw)

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join(5)
        assert places == [f"{here}:{in_a_thread.__code__.co_firstlineno + 2}"]


def test_a_package_is_judged_by_its_whole_name_and_servers_are_not_the_app():
    """``djangoproj.views`` is the app's, not Django's (a prefix match took it for Django, and a
    Django lease under gevent was named after gunicorn's request handler). A stack with no app
    frame at all (framework code called by the server) is named by the framework call that took
    the lease, never by the server's frames."""
    pool, _ = make(min_size=0, max_size=2, leak_timeout=60)  # leak_timeout: places recorded outside requests too
    project: dict[str, Any] = {"__name__": "djangoproj.views"}
    exec(compile("def view(pool):\n    return pool.getconn()\n", "/srv/djangoproj/views.py", "exec"), project)
    framework: dict[str, Any] = {"__name__": "django.core.handlers.fake"}
    exec(compile("def handler(pool):\n    return pool.getconn()\n", "/fake/django/handler.py", "exec"), framework)
    server: dict[str, Any] = {"__name__": "gunicorn.workers.fake", "handler": framework["handler"]}
    exec(compile("def handle(pool, out):\n    out.append(handler(pool))\n", "/fake/gunicorn/worker.py", "exec"), server)
    raw = project["view"](pool)
    assert _taken_at(pool, raw) == "/srv/djangoproj/views.py:2"
    pool.putconn(raw)
    # No app frame on the stack at all (a thread whose target is the server's code, which calls
    # Django's, which takes the lease): named by Django's call, not by gunicorn or threading.
    taken: list[Any] = []
    thread = threading.Thread(target=server["handle"], args=(pool, taken))
    thread.start()
    thread.join(5)
    assert _taken_at(pool, taken[0]) == "/fake/django/handler.py:2"


class _FullPathsPool(ConnectionPool):
    """A pool whose Lease never takes the inline checkout and return (its twins)."""

    def _refresh_fast(self) -> None:
        self._fast = False


def _script(pool: ConnectionPool, c: StandIn) -> list[Any]:
    """The same leases on any pool: clean, dirty, failing, interleaved with getconn(); what they left."""
    seen: list[Any] = []
    for round_ in range(3):
        with pool.connection() as a:
            seen.append(("a", a.n))
            if round_ == 1:
                a.in_transaction = True  # the return must settle it
        raw = pool.getconn()
        with pool.connection() as b:  # a second connection while raw is out
            seen.append(("b", b.n))
        pool.putconn(raw)
        if round_ == 1:
            raw.dead = True  # the server ended it: a probe (where there is one) finds it, the ping replaces it
        with pytest.raises(RuntimeError), pool.connection() as a:
            raise RuntimeError("the block failed")
    with pool.connection() as a:
        seen.append(("last", a.n, slot_of(pool, a).uses, slot_of(pool, a).state))
    stats = pool.stats()
    stats.pop("usage_ms")
    slots = sorted((s.raw.n, s.state, s.uses, s.taken_at, round(s.recheck_at - s.last_used, 3), s.usage > 0)
                   for s in pool._slots.values())  # fmt: skip
    return [seen, c.calls, stats, slots, [s.raw.n for s in pool._idle]]


class ProbedStandIn(StandIn):
    """A stand-in whose probe reports a connection the server ended (``dead``)."""

    def probe(self, raw: Conn) -> Any:
        return lambda: raw.dead


@pytest.mark.parametrize("connector", [StandIn, ProbedStandIn])
@pytest.mark.parametrize("in_request", [False, True])
@pytest.mark.parametrize("probe_after", [None, 0.0])
def test_the_inline_lease_agrees_with_the_full_paths(probe_after, in_request, connector):
    """Lease runs the common checkout and return inline (twins of _take, _begin_lease, _shelve):
    the same script leaves the same connections, calls, figures and idle order either way, also
    when every checkout must look at its connection again (probe_after=0)."""
    c1 = connector()
    inline = ConnectionPool(c1, name="s", min_size=1, max_size=2, probe_after=probe_after, check_interval=60.0)
    full = _FullPathsPool(connector(), name="s", min_size=1, max_size=2, probe_after=probe_after, check_interval=60.0)
    c2 = full.connector
    assert inline._fast and not full._fast
    inline.open()
    full.open()
    if in_request:  # leases recorded in the request's sink, with the line that took them
        with request_scope():
            first = _script(inline, c1)
            inline.getconn()  # a leak: reclaimed when the request ends
        with request_scope():
            second = _script(full, c2)  # type: ignore[arg-type]
            full.getconn()
        assert inline.stats()["connections_leaked"] == full.stats()["connections_leaked"] == 1
    else:
        first, second = _script(inline, c1), _script(full, c2)  # type: ignore[arg-type]
    assert first == second



def test_a_pool_records_taking_lines_once_a_lease_outlived_its_request():
    """Reading the taking frame costs a lease ~4,000 instructions, so a request's lease records
    nothing until one of the pool's leases outlives its request: that first leak is logged without
    its line (and says the next will have it); from then on every lease records it."""
    pool, _ = make(min_size=0, max_size=2)
    with request_scope():
        first = pool.getconn()
        assert _taken_at(pool, first) == ""
    assert pool.stats()["connections_leaked"] == 1 and pool._record_places
    with request_scope():
        line = sys._getframe().f_lineno + 1
        second = pool.getconn()
        assert _taken_at(pool, second) == f"{__file__.rstrip('c')}:{line}"
