"""The asyncio front end on the core's rules: sizes, FIFO waits, timeouts, checks, returns,
reclaim, and cancellation at every await, with a stand-in connector (no server: the pool's own
bookkeeping). The same script run on the synchronous and the asyncio pool leaves the same
figures: one copy of the rules.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gunicorn_pool import ConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests, request_scope
from gunicorn_pool.connectors.base import Connector
from gunicorn_pool.connectors.base_async import AsyncConnector
from gunicorn_pool.core import DROP, REUSE
from gunicorn_pool.pool_async import AsyncConnectionPool, task_ident
from gunicorn_pool.request import RequestScope


class Conn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.in_transaction = False
        self.dead = False


class AsyncStandIn(AsyncConnector):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(pool_name="a", address="stand-in:0", dsn="standin://a")
        self.made = 0
        self.delay = delay  # seconds each round trip awaits
        self.calls: list[tuple[str, int]] = []
        self.outcome = REUSE

    async def connect(self) -> Conn:
        await asyncio.sleep(self.delay)
        self.made += 1
        return Conn(self.made)

    async def close(self, raw: Conn) -> None:
        self.calls.append(("close", raw.n))

    def discard(self, raw: Conn) -> None:
        self.calls.append(("discard", raw.n))

    async def ping(self, raw: Conn, timeout: float) -> None:
        self.calls.append(("ping", raw.n))
        await asyncio.sleep(self.delay)
        if raw.dead:
            raise OSError("gone")

    def check_in(self, raw: Conn) -> bool:
        return not raw.in_transaction

    async def finish(self, raw: Conn, *, commit: bool, failed: bool = False) -> str:
        self.calls.append(("commit" if commit else "rollback", raw.n))
        await asyncio.sleep(self.delay)
        raw.in_transaction = False
        return self.outcome


class SyncStandIn(Connector):
    def __init__(self) -> None:
        super().__init__(pool_name="a", address="stand-in:0", dsn="standin://a")
        self.made = 0
        self.calls: list[tuple[str, int]] = []

    def connect(self) -> Conn:
        self.made += 1
        return Conn(self.made)

    def close(self, raw: Conn) -> None:
        self.calls.append(("close", raw.n))

    def discard(self, raw: Conn) -> None:
        self.calls.append(("discard", raw.n))

    def ping(self, raw: Conn, timeout: float) -> None:
        self.calls.append(("ping", raw.n))

    def check_in(self, raw: Conn) -> bool:
        return not raw.in_transaction

    def finish(self, raw: Conn, *, commit: bool, failed: bool = False) -> str:
        self.calls.append(("commit" if commit else "rollback", raw.n))
        raw.in_transaction = False
        return REUSE


class _TaskScope(RequestScope):
    """A request scope owned by the current task (as the ASGI layer's)."""

    __slots__ = ()

    def owner(self) -> int:
        return task_ident()


def make(delay: float = 0.0, **options: Any) -> tuple[AsyncConnectionPool, AsyncStandIn]:
    connector = AsyncStandIn(delay)
    options.setdefault("check_interval", 60.0)
    return AsyncConnectionPool(connector, name="a", **options), connector


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_open_lend_return_and_close():
    async def main() -> None:
        pool, c = make(min_size=2, max_size=3)
        assert await pool.open() == 2
        async with pool.connection() as conn:
            assert conn.n == 1  # warm-up stacks its connections cold: the first opened is on top
            conn.in_transaction = True
        assert ("commit", 1) in c.calls
        raw = await pool.getconn()
        await pool.putconn(raw)
        stats = pool.stats()
        assert stats["requests_num"] == 2 and stats["pool_size"] == 2 and stats["pool_available"] == 2, stats
        await pool.close()
        assert sorted(c.calls[-2:]) == [("close", 1), ("close", 2)]
        with pytest.raises(PoolClosed):
            await pool.getconn()

    run(main())


def test_waiters_are_served_in_arrival_order_and_time_out_on_time():
    async def main() -> None:
        pool, _ = make(min_size=1, max_size=1, timeout=0.3)
        await pool.open()
        held = await pool.getconn()
        order: list[int] = []

        async def taker(i: int) -> None:
            raw = await pool.getconn()
            order.append(i)
            await pool.putconn(raw)

        tasks = [asyncio.create_task(taker(i)) for i in range(4)]
        await asyncio.sleep(0.05)
        assert pool.stats()["requests_waiting"] == 4
        await pool.putconn(held)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]
        held = await pool.getconn()
        started = asyncio.get_running_loop().time()
        with pytest.raises(PoolTimeout):
            await pool.getconn()
        assert 0.25 < asyncio.get_running_loop().time() - started < 1.0
        assert pool.stats()["requests_timeouts"] == 1 and not pool._waiters
        await pool.putconn(held)

    run(main())


def test_max_waiting_turns_the_next_caller_away_at_once():
    async def main() -> None:
        pool, _ = make(min_size=1, max_size=1, timeout=1, max_waiting=1)
        await pool.open()
        held = await pool.getconn()

        async def wait_and_give_back() -> None:
            await pool.putconn(await pool.getconn())  # a lease is its task's: given back by it

        waiting = asyncio.create_task(wait_and_give_back())
        await asyncio.sleep(0.01)
        with pytest.raises(TooManyRequests):
            await pool.getconn()
        await pool.putconn(held)
        await waiting

    run(main())


def test_a_task_cancelled_while_it_waits_leaves_the_queue():
    async def main() -> None:
        pool, _ = make(min_size=1, max_size=1, timeout=5)
        await pool.open()
        held = await pool.getconn()
        waiting = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not pool._waiters
        await pool.putconn(held)
        assert pool.stats()["pool_available"] == 1  # not handed to the cancelled waiter

    run(main())


@pytest.mark.parametrize("where", ["in the block", "in the return's rollback", "in the connect"])
def test_a_task_cancelled_mid_round_trip_never_returns_its_connection_and_frees_the_capacity(where):
    """asyncio.timeout / a client gone / task.cancel(): CancelledError is a BaseException. The
    connection may be mid-protocol: dropped without a word, never lent again, capacity back."""

    async def main() -> None:
        pool, c = make(delay=0.2, min_size=0, max_size=1, timeout=2)

        async def request() -> None:
            async with pool.connection() as conn:
                conn.in_transaction = True  # the return must roll back (a round trip of 0.2 s)
                if where == "in the block":
                    await asyncio.sleep(1)
                raise RuntimeError("the view failed")

        task = asyncio.create_task(request())
        await asyncio.sleep({"in the block": 0.3, "in the return's rollback": 0.3, "in the connect": 0.1}[where])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert stats["pool_size"] == 0 and stats["pool_available"] == 0, stats  # capacity back, nothing kept
        if where != "in the connect":
            assert ("discard", 1) in c.calls
        async with pool.connection() as conn:  # the next request gets a fresh connection at once
            assert conn.n == 2 if where != "in the connect" else conn.n == 1

    run(main())


def test_checks_follow_the_core_rules_ping_after_idle_and_replace_after_lifetime():
    async def main() -> None:
        pool, c = make(min_size=1, max_size=1, check_interval=0.05, probe_after=None)
        await pool.open()
        await asyncio.sleep(0.1)
        async with pool.connection() as conn:
            assert conn.n == 1
        assert ("ping", 1) in c.calls
        await asyncio.sleep(0.1)
        pool._slots[id(conn)].raw.dead = True
        async with pool.connection() as conn:
            assert conn.n == 2  # the dead one was replaced in the same checkout
        assert pool.stats()["connections_lost"] == 1

    run(main())


def test_a_lease_its_request_left_out_is_reclaimed_when_the_request_ends():
    async def main() -> None:
        pool, c = make(min_size=1, max_size=1, timeout=0.2)
        await pool.open()
        scope = _TaskScope("GET /leak").begin()
        leaked = await pool.getconn()
        assert scope.end(failed=False) == 1
        assert ("discard", leaked.n) in c.calls and pool.stats()["connections_leaked"] == 1
        async with pool.connection() as conn:  # the capacity came back
            assert conn.n == 2

    run(main())


def test_finish_outcomes_settle_as_in_the_sync_pool():
    async def main() -> None:
        pool, c = make(min_size=1, max_size=1)
        await pool.open()
        c.outcome = DROP
        async with pool.connection() as conn:
            conn.in_transaction = True
        assert pool.stats()["pool_size"] == 0 and ("discard", 1) in c.calls

    run(main())


def _script_sync(pool: ConnectionPool) -> dict[str, int]:
    pool.open()
    for i in range(5):
        with pool.connection() as conn:
            conn.in_transaction = i % 2 == 0
    raw = pool.getconn()
    pool.putconn(raw)
    with pytest.raises(RuntimeError), pool.connection():
        raise RuntimeError
    with request_scope():
        pool.getconn()
    return pool.stats()


async def _script_async(pool: AsyncConnectionPool) -> dict[str, int]:
    await pool.open()
    for i in range(5):
        async with pool.connection() as conn:
            conn.in_transaction = i % 2 == 0
    raw = await pool.getconn()
    await pool.putconn(raw)
    with pytest.raises(RuntimeError):
        async with pool.connection():
            raise RuntimeError
    scope = _TaskScope().begin()
    await pool.getconn()
    scope.end(failed=False)
    return pool.stats()


def test_the_same_script_leaves_the_same_figures_in_both_front_ends():
    sync = _script_sync(ConnectionPool(SyncStandIn(), name="a", min_size=1, max_size=2, check_interval=60.0))
    asynchronous = run(_script_async(make(min_size=1, max_size=2)[0]))
    sync.pop("usage_ms"), asynchronous.pop("usage_ms")
    assert sync == asynchronous


def test_a_pool_belongs_to_the_loop_that_opened_it():
    """Its connections are bound to that loop's sockets: a checkout from another loop is refused."""
    pool, _ = make(min_size=0, max_size=1)
    run(pool.open())
    with pytest.raises(PoolError, match="another event loop"):
        run(pool.getconn())


def test_the_warm_up_stops_at_its_deadline_in_both_front_ends():
    """open(deadline=...) opens what it can before the deadline and then raises, its reservation
    released: one rule (PoolCore._warm_up_next) under both front ends."""
    from gunicorn_pool.errors import ConnectError

    sync = ConnectionPool(SyncStandIn(), name="a", min_size=3, max_size=3)
    with pytest.raises(ConnectError, match="warm-up deadline passed after 0 connection"):
        sync.open(deadline=0.0)
    assert sync.stats()["pool_size"] == 0 and sync.open() == 3
    sync.close()

    async def script() -> None:
        pool, connector = make(delay=0.5, min_size=3, max_size=3)
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectError, match="warm-up deadline passed after 1 connection"):
            await pool.open(deadline=loop.time() + 0.25)  # the loop's clock is time.monotonic()
        assert pool.stats()["pool_size"] == 1 and connector.made == 1
        connector.delay = 0.0
        assert await pool.open() == 2
        await pool.close()

    run(script())


def test_nowait_checkout_and_return_do_only_what_needs_no_round_trip():
    """getconn_nowait()/putconn_nowait() (SQLAlchemy's greenlet bridge avoids an await with them):
    a connection only if one is idle and due no check; a clean return is done at once, a dirty
    one hands back the round trips left (the rollback) to await."""

    async def main() -> None:
        pool, c = make(min_size=1, max_size=1, check_interval=0.2)
        assert pool.getconn_nowait() is None  # nothing open yet: the awaited path opens
        await pool.open()
        await pool.putconn(await pool.getconn())  # its first use (a fresh connection's first checkout looks at it)
        raw = pool.getconn_nowait()
        assert raw is not None and pool.has_lent(raw) and pool.getconn_nowait() is None
        assert pool.putconn_nowait(raw) is None  # clean: back on the idle stack, nothing to await
        assert pool.stats()["pool_available"] == 1
        await asyncio.sleep(0.3)  # idle past check_interval: due a ping, which needs an await
        assert pool.getconn_nowait() is None and pool.stats()["pool_available"] == 1
        raw = await pool.getconn()
        assert ("ping", raw.n) in c.calls
        raw.in_transaction = True
        rest = pool.putconn_nowait(raw)
        assert rest is not None and ("rollback", raw.n) not in c.calls
        await rest
        assert ("rollback", raw.n) in c.calls and pool.stats()["pool_available"] == 1
        with pytest.raises(PoolError):
            pool.putconn_nowait(raw)  # given back already
        await pool.close()

    run(main())
