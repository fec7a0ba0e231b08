"""gunicorn_pool.sqlalchemy for ``create_async_engine()`` engines, in one process with an event loop,
against real MariaDB (aiomysql) and PostgreSQL (psycopg's AsyncConnection): adopt(async_engine)
and EnginePool(..., asyncio=True) put the engine on an AsyncGunicornPool opened in the loop
(min_size sessions), FIFO waits bounded by ``timeout`` (SQLAlchemy's TimeoutError), at most
max_size sessions, SQLAlchemy's transactions honoured and read back without a round trip, leaks
reclaimed at request end, a task cancelled mid-query gives its capacity back, the checkout probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any, Iterator

import pytest
from sqlalchemy import Integer, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util.concurrency import greenlet_spawn
from support import wait_until

from gunicorn_pool import request_scope
from gunicorn_pool.errors import PoolTimeout
from gunicorn_pool.registry import unregister
from gunicorn_pool.sqlalchemy import AsyncGunicornPool, EnginePool, SQLAlchemyPoolTimeout, adopt
from gunicorn_pool.sqlalchemy.service_async import AsyncAdoptedEngines, AsyncEnginePool

pytestmark = pytest.mark.timeout(60)

#: Each server: its login fixture, its async driver, a statement that sleeps 5 s.
SERVERS = {
    "mysql": ("mysql_user", "mysql+aiomysql", "SELECT SLEEP(5)"),
    "postgresql": ("pg_user", "postgresql+psycopg", "SELECT pg_sleep(5)"),
    "asyncpg": ("pg_user", "postgresql+asyncpg", "SELECT pg_sleep(5)"),
}


class Base(DeclarativeBase):
    pass


class Server:
    def __init__(self, kind: str, user: Any) -> None:
        self.kind = kind
        self.user = user
        self.sleep = SERVERS[kind][2]

    def url(self) -> str:
        """The login's URL with the asyncio driver."""
        return self.user.url().replace(f"{self.user.scheme}://", f"{SERVERS[self.kind][1]}://", 1)

    def sessions(self) -> int:
        return int(self.user.count())


@pytest.fixture(
    params=[
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("asyncpg", marks=pytest.mark.postgresql),
    ]
)
def server(request: Any) -> Iterator[Server]:
    yield Server(request.param, request.getfixturevalue(SERVERS[request.param][0]))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def adopted(engine: AsyncEngine, **options: Any) -> AsyncAdoptedEngines:
    name = f"adopted_{secrets.token_hex(3)}"
    service = adopt(engine, name=name, **options)
    unregister(name)  # the test opens and closes it itself
    assert isinstance(service, AsyncAdoptedEngines)
    return service


def test_adopt_async_engine_opens_min_size_in_the_loop_and_closes_them(server: Server) -> None:
    engine = create_async_engine(server.url())
    service = adopted(engine, min_size=2, max_size=3)
    service.init_pool()  # what boot() calls outside the loop: nothing opens there
    assert server.sessions() == 0

    async def main() -> None:
        await service.ainit_pool()
        pool = engine.sync_engine.pool
        assert isinstance(pool, AsyncGunicornPool)
        assert server.sessions() == 2
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        async with AsyncSession(engine) as session:
            assert (await session.execute(text("SELECT 2"))).scalar() == 2
        assert service.engine() is engine  # the app's own AsyncEngine
        stats = service.stats()["default"]
        assert stats["pool_size"] == 2 and stats["pool_available"] == 2 and stats["pool_max"] == 3
        await service.aclose_pool()

    run(main())
    wait_until(lambda: server.sessions() == 0, 10, what="sessions closed")


def test_engine_pool_asyncio_true_bounds_sessions_and_times_out_on_time(server: Server) -> None:
    service = EnginePool({"default": {"url": server.url(), "max_size": 3, "timeout": 0.5}}, name="aorm",
                         asyncio=True)  # fmt: skip
    assert isinstance(service, AsyncEnginePool)

    async def main() -> None:
        await service.ainit_pool()
        engine = service.engine()
        assert isinstance(engine, AsyncEngine)
        assert engine.dialect.driver in ("aiomysql", "psycopg", "asyncpg")
        peak = 0

        async def query() -> None:
            nonlocal peak
            async with engine.connect() as conn:
                peak = max(peak, server.sessions())
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(0.05)

        await asyncio.gather(*(query() for _ in range(12)))
        assert peak <= 3 and server.sessions() <= 3
        held = [await engine.connect() for _ in range(3)]
        started = time.monotonic()
        with pytest.raises(SQLAlchemyPoolTimeout) as caught:
            await engine.connect()
        waited = time.monotonic() - started
        assert isinstance(caught.value, SATimeoutError) and isinstance(caught.value, PoolTimeout)
        assert 0.4 <= waited < 3.0, waited  # bounded by timeout (a bound, not a benchmark)
        for conn in held:
            await conn.close()
        await service.aclose_pool()

    run(main())
    wait_until(lambda: server.sessions() == 0, 10, what="sessions closed")


def test_a_transaction_left_open_without_sqlalchemys_reset_is_rolled_back_by_the_pool(server: Server) -> None:
    """pool_reset_on_return=None: SQLAlchemy returns the connection mid-transaction; the core reads
    the driver's state (no round trip), rolls back, and the row is gone."""
    table = f"gp_saa_{secrets.token_hex(4)}"
    Row = type(f"Row_{table}", (Base,), {
        "__tablename__": table, "id": mapped_column(Integer, primary_key=True, autoincrement=True),
        "v": mapped_column(Integer), "__annotations__": {"id": Mapped[int], "v": Mapped[int]},
    })  # fmt: skip
    engine = create_async_engine(server.url(), pool_reset_on_return=None)
    service = adopted(engine, max_size=1, min_size=1)

    async def main() -> None:
        await service.ainit_pool()
        async with engine.begin() as conn:
            await conn.run_sync(Row.__table__.create)
        def leave_open() -> None:  # a DBAPI connection of the pool, given back mid-transaction
            fairy = engine.sync_engine.raw_connection()
            cursor = fairy.cursor()
            cursor.execute(f"INSERT INTO {table} (v) VALUES (1)")
            cursor.close()
            fairy.close()  # no reset by SQLAlchemy (pool_reset_on_return=None): the pool's finish() ends it

        try:
            await greenlet_spawn(leave_open)
            core = engine.sync_engine.pool.core
            assert core.stats()["pool_available"] == 1
            async with engine.connect() as conn2:
                assert (await conn2.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar() == 0
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Row.__table__.drop)
            await service.aclose_pool()

    run(main())


def test_a_connection_left_out_is_reclaimed_when_its_request_ends(server: Server, caplog: Any) -> None:
    engine = create_async_engine(server.url())
    service = adopted(engine, max_size=1, min_size=1)

    async def main() -> None:
        await service.ainit_pool()
        core = engine.sync_engine.pool.core
        for _ in range(2):  # the first leak names "a place not recorded yet", the next one the line
            with request_scope("GET /leak"):
                leaked = await engine.connect()
                await leaked.execute(text("SELECT 1"))
            assert core.stats()["pool_size"] == 0  # reclaimed: closed, its capacity freed
            with contextlib.suppress(DBAPIError):  # given back late: its connection is closed already
                await leaked.close()
            assert core.stats()["pool_size"] == 0  # and it did not come back to the pool
        async with engine.connect() as conn:  # the capacity came back
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert core.stats()["connections_leaked"] == 2
        await service.aclose_pool()

    with caplog.at_level(logging.WARNING, logger="gunicorn_pool"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "not given back" in r.getMessage()]
    assert len(lines) == 2 and "test_sqlalchemy_async.py:" in lines[1], lines
    wait_until(lambda: server.sessions() == 0, 10, what="sessions closed")


def test_a_task_cancelled_mid_query_gives_its_capacity_back(server: Server) -> None:
    engine = create_async_engine(server.url())
    service = adopted(engine, max_size=1, min_size=1, timeout=2.0)

    async def main() -> None:
        await service.ainit_pool()
        core = engine.sync_engine.pool.core

        async def slow() -> None:
            async with AsyncSession(engine) as session:
                await session.execute(text(server.sleep))

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # SQLAlchemy invalidated the record: it came back without its connection, the core dropped
        # the slot (never shelved mid-protocol) and freed its capacity
        stats = core.stats()
        assert stats["pool_size"] == 0 and stats["pool_available"] == 0, stats
        for _ in range(3):  # the capacity came back: a new connection, then reused
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 7"))).scalar() == 7
        stats = core.stats()
        assert stats["pool_size"] == 1 and stats["connections_num"] == 2, stats
        await service.aclose_pool()

    run(main())
    wait_until(lambda: server.sessions() == 0, 10, what="sessions closed")


def test_a_session_killed_while_idle_is_replaced_at_checkout(server: Server) -> None:
    engine = create_async_engine(server.url())
    service = adopted(engine, max_size=1, min_size=1)

    async def main() -> None:
        await service.ainit_pool()
        core = engine.sync_engine.pool.core
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        server.user.kill_all()
        await asyncio.sleep(0.3)  # the server's goodbye reaches the socket
        async with engine.connect() as conn:  # the probe sees it: replaced, no error for the app
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert core.stats()["connections_lost"] >= 1
        await service.aclose_pool()

    run(main())


def test_the_app_walk_adopts_an_async_engine_as_an_asyncio_service_on_aiosqlite(tmp_path: Any) -> None:
    """An ``AsyncEngine`` the app walk meets becomes an asyncio service (opened in the loop, never
    by boot's synchronous init_pool()); SQLite through aiosqlite, whose transaction state
    SQLAlchemy's reset on return looks after."""
    from gunicorn_pool import integrations

    class App:
        pass

    app = App()
    app.engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'walk.db'}")  # type: ignore[attr-defined]
    found = dict(integrations.discover(app))
    service = found["app.engine"]
    assert isinstance(service, AsyncAdoptedEngines)
    service.init_pool()
    engine = app.engine  # type: ignore[attr-defined]
    assert not isinstance(engine.sync_engine.pool, AsyncGunicornPool)  # nothing outside the loop

    async def main() -> None:
        await service.ainit_pool()
        core = engine.sync_engine.pool.core
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v INTEGER)"))
        async with AsyncSession(engine) as session:
            await session.execute(text("INSERT INTO t VALUES (1)"))  # rolled back by SQLAlchemy's reset
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT COUNT(*) FROM t"))).scalar() == 0
        assert core.stats()["connections_num"] == 1
        await service.aclose_pool()
        assert core.closed and core.stats()["pool_size"] == 0

    run(main())


def test_engine_dispose_closes_the_pool_and_the_recreated_one_is_closed_with_the_service(server: Server) -> None:
    """``await engine.dispose()`` closes the core in the loop (SQLAlchemy's greenlet) and puts a
    fresh AsyncGunicornPool in place (recreate()); it connects on demand and closes with the service."""
    engine = create_async_engine(server.url())
    service = adopted(engine, max_size=2, min_size=1)

    async def main() -> None:
        await service.ainit_pool()
        first = engine.sync_engine.pool
        await engine.dispose()
        assert first.core.closed
        wait_until(lambda: server.sessions() == 0, 10, what="the disposed pool's session closed")
        second = engine.sync_engine.pool
        assert isinstance(second, AsyncGunicornPool) and second is not first
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 3"))).scalar() == 3
        assert server.sessions() == 1 and service.stats()["default"]["pool_size"] == 1
        await service.aclose_pool()
        assert second.core.closed

    run(main())
    wait_until(lambda: server.sessions() == 0, 10, what="sessions closed")


def test_the_ping_of_an_idle_connection_keeps_it(server: Server) -> None:
    """check_interval 0: every checkout pings first (each driver's ping: psycopg's empty query,
    aiomysql's COM_PING, asyncpg's simple query); a live connection passes and is kept, so one
    connection serves every checkout."""
    engine = create_async_engine(server.url())
    service = adopted(engine, max_size=1, min_size=1, check_interval=0.0)

    async def main() -> None:
        await service.ainit_pool()
        core = engine.sync_engine.pool.core
        for _ in range(5):
            await asyncio.sleep(0.01)
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        stats = core.stats()
        assert stats["connections_num"] == 1 and stats["connections_lost"] == 0, stats
        await service.aclose_pool()

    run(main())


@pytest.mark.parametrize("kind", [pytest.param("mysql", marks=pytest.mark.mysql),
                                  pytest.param("asyncpg", marks=pytest.mark.postgresql)])  # fmt: skip
def test_a_connect_to_a_server_that_never_answers_ends_at_the_default_connect_timeout(
    kind: str, monkeypatch: Any, request: Any
) -> None:
    """An engine whose URL and connect_args set no connect timeout gets gunicorn_pool's
    (``CONNECT_TIMEOUT``, 1 s here), as a whole: aiomysql's own ``connect_timeout`` bounds only
    its TCP connect, so to a server that accepts and never sends its greeting (the proxy's
    blackhole) the lifespan's warm-up and every connect waited forever; asyncpg's ``timeout``
    is 60 s by default. The warm-up fails after about 1 s, a checkout raises within 4 s, and no
    socket is left open to the blackhole."""
    from test_sqlalchemy_async_faults import established_to

    from gunicorn_pool.errors import ConnectError
    from gunicorn_pool.sqlalchemy import service as sa_service

    monkeypatch.setattr(sa_service, "CONNECT_TIMEOUT", 1)
    proxy = request.getfixturevalue("tcp_proxy" if kind == "mysql" else "pg_proxy")
    user = Server(kind, request.getfixturevalue(SERVERS[kind][0]))
    proxy.blackhole()
    url = user.url().replace(f":{user.user.port}/", f":{proxy.port}/", 1)
    service = adopted(create_async_engine(url), min_size=1, max_size=2, timeout=5)

    async def main() -> None:
        start = time.monotonic()
        with contextlib.suppress(Exception):  # the boot policy may raise the warm-up's failure
            await asyncio.wait_for(service.ainit_pool(), 10)
        assert time.monotonic() - start < 4.0
        await asyncio.sleep(0.3)  # past the reconnect backoff (0.1 s): the checkout connects again
        start = time.monotonic()
        with pytest.raises(ConnectError, match="timed out|[Tt]imeout"):
            async with service.engine().connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert time.monotonic() - start < 4.0
        for _ in range(50):  # 5 s at most; the loop runs meanwhile (a transport closes in its next turn)
            if established_to(proxy.port) == 0:
                break
            await asyncio.sleep(0.1)
        assert established_to(proxy.port) == 0, "a socket left open to the blackhole"
        await service.aclose_pool()

    run(main())
