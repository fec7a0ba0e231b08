"""The asyncio pools on real servers, pool level (no gunicorn): AsyncDatabasePool on PostgreSQL
(psycopg's AsyncConnection), MariaDB (aiomysql) and SQLite (aiosqlite), AsyncRedisPool
(redis.asyncio).

The rules are the synchronous connectors' (shared code), so the session matrices run here on
a subset of their own case lists (the statement cases of tests/test_session_matrix_pg.py and
tests/test_session_matrix_mysql.py, the command cases of tests/test_session_matrix_redis.py),
awaited. Then what only asyncio has: a task
cancelled mid-query or mid-command, a stream left mid-result and given back, the lease guard's
tasks (a task started inside the request may use its connection, another request may not), a
connect bounded to a fraction of a second, a pool dropped with no event loop left.

Every test runs its own event loop (``asyncio.run``) bounded by ``asyncio.wait_for``; every
statement of the pools is bounded by ``statement_timeout`` (PostgreSQL) or ``socket_timeout``
(Redis).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiomysql
import psycopg
import pymysql
import pytest
import redis
import test_session_matrix_mysql as mysql_matrix
import test_session_matrix_pg as pg_matrix
import test_session_matrix_redis as redis_matrix
from psycopg.rows import tuple_row
from support import redis_admin, statement_bound, wait_until

from gunicorn_pool import AsyncDatabasePool, AsyncRedisPool, ConfigError, ConnectError, LeaseError, PoolTimeout
from gunicorn_pool.base import WorkerProfile, set_profile
from gunicorn_pool.connectors.base_async import task_ident
from gunicorn_pool.request import RequestScope

LIMIT = 30.0  # seconds any test's event loop may run


def arun(coro: Any, limit: float = LIMIT) -> Any:
    set_profile(WorkerProfile(kind="asyncio"))
    try:
        return asyncio.run(asyncio.wait_for(coro, limit))
    finally:
        set_profile(WorkerProfile())


def pg_pool(user: Any, **options: Any) -> AsyncDatabasePool:
    config = user.config(options=statement_bound(10), **{"min_size": 1, "max_size": 1, "timeout": 5, **options})
    return AsyncDatabasePool({"default": config}, name="async-pg")


async def backend(conn: Any) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    return int((await cur.fetchone())[0])


class TaskScope(RequestScope):
    """A request scope owned by a task, as asgi.RequestScopeASGI opens one."""

    __slots__ = ()

    def owner(self) -> int:
        return task_ident()


class Request:
    """A request of the current task."""

    def __enter__(self) -> RequestScope:
        self.scope = TaskScope("test").begin()
        return self.scope

    def __exit__(self, *exc: Any) -> None:
        self.scope.end(failed=exc[0] is not None)


# -- PostgreSQL: the session matrix, awaited -------------------------------------------------------

matrix = pg_matrix.matrix
PG_CASES = {name: case for name, case in pg_matrix.CASES.items() if hasattr(case.change, "statements")}


async def asnapshot(conn: Any, m: pg_matrix.Matrix) -> dict[str, Any]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(pg_matrix.SNAPSHOT_SQL)
    server = (await cur.fetchone())[0]
    server["advisory locks"] = await asyncio.to_thread(pg_matrix.advisory_locks, m, await backend(conn))
    server["client"] = pg_matrix.client_side(conn)
    return server


@pytest.mark.postgresql
@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("name", list(PG_CASES))
def test_postgresql_the_next_lease_gets_the_session_as_the_pool_configured_it(matrix, name, raises):
    case = PG_CASES[name]
    statements = [sql.format(s=matrix.schema, role=matrix.role, login=matrix.login.name, key=matrix.key)
                  for sql in case.change.statements]  # fmt: skip
    config = matrix.login.config(options=f"{pg_matrix.BOUNDS} -c search_path={matrix.schema},public",
                                 min_size=1, max_size=1, timeout=5, **case.pool)  # fmt: skip

    async def main() -> None:
        db = AsyncDatabasePool({"default": config}, name="pg-matrix-async")
        await db.ainit_pool()
        try:
            async with db.connection() as conn:
                pid, fresh = await backend(conn), await asnapshot(conn, matrix)
            with pytest.raises(pg_matrix.Raised) if raises else _nothing():
                async with db.connection() as conn:
                    assert await backend(conn) == pid
                    for sql in statements:
                        await conn.execute(sql)
                    if case.visible:
                        assert await asnapshot(conn, matrix) != fresh, "the case changed nothing"
                    if raises:
                        raise pg_matrix.Raised
            async with db.connection() as conn:
                assert await asnapshot(conn, matrix) == fresh, f"{name} reached the next lease"
                assert (await backend(conn) == pid) == (case.outcome != "drop")
            expected = {"reset": 1, "clean": 1 if raises else 0, "drop": 0}[case.outcome]
            assert db.stats()["default"]["connections_reset"] == expected
        finally:
            await db.aclose_pool()

    arun(main())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# -- PostgreSQL: what only asyncio has -------------------------------------------------------------


@pytest.mark.postgresql
@pytest.mark.parametrize("how", ["task.cancel()", "asyncio.wait_for"])
def test_postgresql_a_task_cancelled_mid_query_never_returns_its_connection(pg_user, how):
    """The request is cancelled in the middle of ``SELECT pg_sleep(2)``: the connection is dropped
    (never lent again), the capacity comes back at once, the next lease works on a new session."""

    async def main() -> None:
        db = pg_pool(pg_user)
        await db.ainit_pool()
        async with db.connection() as conn:
            first = await backend(conn)

        async def view() -> None:
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(2)")

        started = time.monotonic()
        if how == "task.cancel()":
            task = asyncio.ensure_future(view())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(view(), 0.3)
        assert time.monotonic() - started < 1.5  # psycopg cancelled the query on the server
        stats = db.stats()["default"]
        assert stats["pool_size"] == 0 and stats["pool_available"] == 0, stats
        async with db.connection() as conn:
            assert await backend(conn) != first
            assert await (await conn.execute("SELECT 41 + 1")).fetchone() == (42,)
        await db.aclose_pool()

    arun(main())
    wait_until(lambda: pg_user.count() == 0, 10, what="no session left")


@pytest.mark.postgresql
def test_postgresql_a_stream_left_mid_result_and_given_back_is_dropped(pg_user):
    """``putconn()`` of a connection whose server-side result is still streaming (libpq's
    transaction status ACTIVE): ``check_in()`` says "not clean" and ``finish()`` drops it; before,
    the next user got a connection in the middle of the protocol."""

    async def main() -> None:
        db = pg_pool(pg_user)
        await db.ainit_pool()
        conn = await db.getconn()
        first = await backend(conn)
        rows = conn.cursor().stream("SELECT generate_series(1, 200000)")
        assert await rows.__anext__() == (1,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
        await db.putconn(conn)
        assert db.stats()["default"]["pool_size"] == 0
        async with db.connection() as conn:
            assert await backend(conn) != first
            assert await (await conn.execute("SELECT 2")).fetchone() == (2,)
        await db.aclose_pool()

    arun(main())


@pytest.mark.postgresql
def test_postgresql_tasks_of_the_request_share_its_connection_other_requests_are_refused(pg_user):
    """The asyncio lease guard: a task started inside the holder's request (``asyncio.wait_for``
    runs one before Python 3.12, ``gather``) may use the connection; a reference kept past the
    lease is refused after the return and from another request, before anything is sent."""

    async def main() -> None:
        db = pg_pool(pg_user)
        await db.ainit_pool()
        with Request():
            async with db.connection() as conn:
                kept = conn
                cur = await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                assert await cur.fetchone() == (1,)
                await asyncio.gather(asyncio.ensure_future(conn.execute("SELECT 2")))
                pid = await backend(conn)
        with pytest.raises(LeaseError, match="returned to the pool"):
            await kept.execute("SELECT 3")
        holding = asyncio.Event()
        release = asyncio.Event()

        async def other_request() -> None:
            with Request():
                async with db.connection() as conn:
                    assert await backend(conn) == pid  # the same connection, lent to this request now
                    holding.set()
                    await release.wait()
                    assert await (await conn.execute("SELECT 4")).fetchone() == (4,)

        task = asyncio.ensure_future(other_request())
        await holding.wait()
        with Request():
            with pytest.raises(LeaseError, match="other than the one that took it"):
                await kept.execute("SELECT 5")
        release.set()
        await task
        await db.aclose_pool()

    arun(main())


@pytest.mark.postgresql
def test_postgresql_a_lease_left_out_is_reclaimed_when_its_request_ends(pg_user):
    async def main() -> None:
        db = pg_pool(pg_user, timeout=1)
        await db.ainit_pool()
        with Request():
            leaked = await db.getconn()
        assert db.stats()["default"]["connections_leaked"] == 1
        with pytest.raises(LeaseError):
            await leaked.execute("SELECT 1")
        async with db.connection() as conn:  # the capacity came back
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        await db.aclose_pool()

    arun(main())


@pytest.mark.postgresql
def test_postgresql_waits_are_bounded_and_a_terminated_idle_session_is_replaced(pg_user):
    async def main() -> None:
        db = pg_pool(pg_user, timeout=0.3)
        await db.ainit_pool()
        held = await db.getconn()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await db.getconn()
        assert 0.25 < time.monotonic() - started < 1.5
        await db.putconn(held)
        await asyncio.to_thread(pg_user.terminate_all)
        await asyncio.sleep(0.2)  # the FATAL and EOF reach the idle socket
        async with db.connection() as conn:  # the probe saw it: replaced before it was lent
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        assert db.stats()["default"]["connections_lost"] == 1
        await db.aclose_pool()

    arun(main())


@pytest.mark.postgresql
def test_postgresql_connect_timeout_fractions_are_honoured(pg_proxy, pg_user, caplog):
    """A server that accepts and never answers: the warm-up gives up after connect_timeout=0.5 s
    (psycopg's own connect() would wait at least 2 s), and a later checkout fails in time too."""
    pg_proxy.blackhole()

    async def main() -> float:
        db = AsyncDatabasePool({"default": pg_user.config(port=pg_proxy.port, connect_timeout=0.5, timeout=1)},
                               name="async-pg")  # fmt: skip
        started = time.monotonic()
        await db.ainit_pool()  # logs, never raises
        took = time.monotonic() - started
        await asyncio.sleep(2.5)  # past the backoff
        started = time.monotonic()
        with pytest.raises(ConnectError, match="timed out after 0.5s"):
            await db.getconn()
        assert time.monotonic() - started < 1.5
        await db.aclose_pool()
        return took

    took = arun(main())
    assert 0.45 < took < 1.5, took
    assert "warm-up failed, will connect on demand" in caplog.text and pg_user.password not in caplog.text


@pytest.mark.postgresql
def test_postgresql_close_pool_with_no_event_loop_drops_every_session(pg_user):
    """gunicorn's quick shutdown skips the lifespan shutdown: close_pool() (no loop) drops them."""
    db = pg_pool(pg_user, min_size=3, max_size=3)
    arun(db.ainit_pool())
    assert pg_user.count() == 3
    db.close_pool()
    wait_until(lambda: pg_user.count() == 0, 5, what="sessions gone")
    assert db.stats() == {}


# -- MariaDB (aiomysql) ----------------------------------------------------------------------------

objects = mysql_matrix.objects
mysql_login = mysql_matrix.login
MYSQL_CASES = {name: case for name, case in mysql_matrix.CASES.items() if not callable(case)}


async def _arun(cur: Any, sql: str) -> Any:
    try:
        await cur.execute(sql)
        return await cur.fetchall()
    except pymysql.err.MySQLError as exc:
        return ("error", exc.args[0])


async def aprobe(conn: Any) -> dict[str, Any]:
    """tests/test_session_matrix_mysql.py's probe (its PROBE steps), awaited."""
    out: dict[str, Any] = {"row writable": mysql_matrix._other(mysql_matrix.OTHER_WRITES)}
    async with conn.cursor() as cur:
        for key, step in mysql_matrix.PROBE:
            if isinstance(step, tuple):
                out[key] = [mysql_matrix._other(mysql_matrix.OTHER_WRITES) if sql is mysql_matrix.OTHER
                            else await _arun(cur, sql) for sql in step]  # fmt: skip
            else:
                out[key] = await _arun(cur, step)
    return out


async def connection_id(conn: Any) -> int:
    async with conn.cursor() as cur:
        await cur.execute("SELECT CONNECTION_ID()")
        return int((await cur.fetchone())[0])


def mysql_pool(login: Any, **options: Any) -> AsyncDatabasePool:
    return AsyncDatabasePool({"default": login.config(**{"min_size": 1, "max_size": 1, "timeout": 5, **options})},
                             name="async-mysql")  # fmt: skip


@pytest.mark.mysql
@pytest.mark.parametrize("raises", [False, True], ids=["clean", "raises"])
@pytest.mark.parametrize("case", list(MYSQL_CASES))
def test_mysql_the_next_user_gets_the_session_as_a_fresh_connection(mysql_login, case, raises):
    async def main() -> None:
        fresh_db = mysql_pool(mysql_login)
        db = mysql_pool(mysql_login)
        await fresh_db.ainit_pool()
        await db.ainit_pool()
        try:
            async with fresh_db.connection() as conn:
                fresh = await aprobe(conn)
            assert fresh["who"][0][1] == mysql_matrix.ROLE_DEFAULT
            with pytest.raises(RuntimeError) if raises else _nothing():
                async with db.connection() as conn:
                    session = await connection_id(conn)
                    action = MYSQL_CASES[case]
                    async with conn.cursor() as cur:
                        for statement in (action,) if isinstance(action, str) else action:
                            await cur.execute(mysql_matrix._fill(statement))
                            await cur.fetchall()
                    if raises:
                        raise RuntimeError("the block failed")
            async with db.connection() as conn:
                seen = await aprobe(conn)
                assert await connection_id(conn) == session, "replaced instead of reset"
                assert seen == fresh, f"{case!r} reached the next user"
        finally:
            await db.aclose_pool()
            await fresh_db.aclose_pool()

    arun(main())


@pytest.mark.mysql
def test_mysql_a_task_cancelled_mid_query_is_dropped_and_an_unbuffered_result_given_back_too(mysql_user):
    """``SELECT SLEEP(2)`` cancelled: aiomysql closes the connection (a read cut short), the pool
    drops it. An unbuffered result (SSCursor) given back mid-rows: ``check_in`` sees the unsure
    status, ``finish`` the result still active: dropped, the next user gets a clean session."""

    async def main() -> None:
        db = mysql_pool(mysql_user, timeout=2)
        await db.ainit_pool()

        async def view() -> None:
            async with db.connection() as conn, conn.cursor() as cur:
                await cur.execute("SELECT SLEEP(2)")

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(view(), 0.3)
        assert db.stats()["default"]["pool_size"] == 0
        conn = await db.getconn()
        first = await connection_id(conn)
        cur = await conn.cursor(aiomysql.SSCursor)
        await cur.execute("SELECT seq FROM seq_1_to_100000")
        assert await cur.fetchone() == (1,)
        await db.putconn(conn)
        assert db.stats()["default"]["pool_size"] == 0
        async with db.connection() as conn:
            assert await connection_id(conn) != first
            async with conn.cursor() as cur:
                await cur.execute("SELECT 7")
                assert await cur.fetchone() == (7,)
        await db.aclose_pool()

    arun(main())
    wait_until(lambda: mysql_user.count() == 0, 10, what="no session left")


@pytest.mark.mysql
def test_mysql_kept_reference_refused_and_a_killed_idle_session_replaced(mysql_user):
    async def main() -> None:
        db = mysql_pool(mysql_user)
        await db.ainit_pool()
        with Request():
            async with db.connection() as conn:
                kept = conn
                async with conn.cursor() as cur:
                    await asyncio.wait_for(cur.execute("SELECT 1"), 5)  # a task of the request: allowed
        with pytest.raises(LeaseError, match="returned to the pool"):
            async with kept.cursor() as cur:
                await cur.execute("SELECT 1")
        await asyncio.to_thread(mysql_user.kill_all)
        await asyncio.sleep(0.2)
        async with db.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT 2")
            assert await cur.fetchone() == (2,)
        assert db.stats()["default"]["connections_lost"] == 1
        await db.aclose_pool()

    arun(main())


@pytest.mark.mysql
def test_mysql_connect_timeout_fractions_are_honoured_against_a_blackhole(tcp_proxy, mysql_user, caplog):
    tcp_proxy.blackhole()

    async def main() -> float:
        db = AsyncDatabasePool({"default": mysql_user.config(port=tcp_proxy.port, connect_timeout=0.5)})
        started = time.monotonic()
        await db.ainit_pool()
        took = time.monotonic() - started
        await db.aclose_pool()
        return took

    took = arun(main())
    assert 0.45 < took < 1.5, took
    assert "timed out after 0.5s" in caplog.text and mysql_user.password not in caplog.text


# -- SQLite (aiosqlite) ----------------------------------------------------------------------------

#: A statement that keeps SQLite busy for about a second.
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c"


def lite(tmp_path: Path, **options: Any) -> AsyncDatabasePool:
    config = {"adapter": "sqlite", "database": str(tmp_path / "a.db"), "min_size": 1, "max_size": 1, "timeout": 5}
    return AsyncDatabasePool({"default": {**config, **options}}, name="async-lite")


def test_sqlite_transactions_settle_and_a_closed_connection_is_replaced(tmp_path):
    async def main() -> None:
        db = lite(tmp_path, autocommit=False)
        await db.ainit_pool()
        async with db.connection() as conn:
            await conn.execute("CREATE TABLE t (x INT)")
        with pytest.raises(RuntimeError):
            async with db.connection() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError
        async with db.connection() as conn:
            assert not conn.in_transaction
            await conn.execute("INSERT INTO t VALUES (2)")  # committed at the block's end
        async with db.connection() as conn:
            assert await (await conn.execute("SELECT x FROM t")).fetchall() == [(2,)]
            kept = conn
            await conn.close()
        assert db.stats()["default"]["connections_closed"] == 1
        async with db.connection() as conn:
            assert conn is not kept and await (await conn.execute("SELECT 1")).fetchone() == (1,)
        await db.aclose_pool()

    arun(main())


def test_sqlite_a_cancelled_statement_still_running_is_never_lent_again(tmp_path):
    """The statement runs on in aiosqlite's thread after its task was cancelled: ``putconn()`` in
    the view's ``finally`` must not hand that busy connection to the next user (before, the next
    user's ``SELECT 1`` queued behind the rest of it)."""

    async def main() -> None:
        db = lite(tmp_path, timeout=5)
        await db.ainit_pool()

        async def view() -> None:
            conn = await db.getconn()
            try:
                await conn.execute(SLOW)
            finally:
                await db.putconn(conn)

        async with db.connection() as conn:
            first = conn
        task = asyncio.ensure_future(view())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        async with db.connection() as conn:
            assert conn is not first
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        assert time.monotonic() - started < 0.3
        await db.aclose_pool()

    arun(main())


def test_the_async_services_take_the_same_configs_and_refuse_what_they_do_not_serve():
    with pytest.raises(ConfigError, match="unknown option 'max_sise'"):
        AsyncDatabasePool({"default": "postgresql://u@h/db?max_sise=3"})
    with pytest.raises(ConfigError, match="no asyncio driver for adapter 'dbapi'"):
        AsyncDatabasePool({"default": {"adapter": "dbapi", "creator": "sqlite3:connect"}})
    with pytest.raises(ConfigError, match="replicas"):
        AsyncDatabasePool({"default": {"adapter": "postgresql", "replicas": ["postgresql://u@r/db"]}})
    # A synchronous driver asked for by name is refused, not silently swapped for the asyncio one.
    with pytest.raises(ConfigError, match=r"pool 'default' \(db:5432\): driver 'psycopg2' has no asyncio API") as info:
        AsyncDatabasePool("postgresql+psycopg2://app:s3cret@db:5432/shop")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="driver 'mysqlclient' has no asyncio API.*aiomysql"):
        AsyncDatabasePool({"default": {"adapter": "mysql", "host": "db", "driver": "mysqlclient"}})
    db = AsyncDatabasePool("postgresql://app:s3cret@db:5432/shop")
    assert "s3cret" not in repr(db) and "app:***@db:5432" in repr(db)
    with pytest.raises(ConfigError, match="unknown option 'dbx'"):
        AsyncRedisPool("redis://cache:6379/0?dbx=1")
    assert "pw" not in repr(AsyncRedisPool("redis://:pw@cache:6379/0"))


# -- Redis (redis.asyncio) -------------------------------------------------------------------------

REDIS_PATHS = ("single", "single, raises", "pipeline")
REDIS_CASES = [(name, path) for name, case in redis_matrix.CASES.items() for path in case.paths if path in REDIS_PATHS]
key = redis_matrix.key


async def rsnapshot(r: Any, key: str) -> dict[str, Any]:
    async with r.client() as single:
        info = await single.client_info()
        tracking = await single.execute_command("CLIENT", "TRACKINGINFO")
        value = await single.get(key)
    fields = ("name", "db", "flags", "sub", "psub", "ssub", "multi", "user", "resp")
    return {"id": info["id"], "info": {f: info.get(f) for f in fields}, "tracking": tracking, "value": value}


async def rsend(path: str, r: Any, commands: list[tuple[Any, ...]], error: bool) -> None:
    if path == "pipeline":
        async with r.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            for reply in await pipe.execute(raise_on_error=False):
                assert error or not isinstance(reply, Exception), reply
        return
    try:
        async with r.client() as single:
            for command in commands:
                try:
                    await single.execute_command(*command)
                except redis.ResponseError:
                    assert error
            if path.endswith("raises"):
                raise RuntimeError("the view failed after changing the session")
    except RuntimeError:
        pass


@pytest.mark.redis
@pytest.mark.parametrize("name, path", REDIS_CASES, ids=[f"{n}-{p}" for n, p in REDIS_CASES])
def test_redis_the_next_user_gets_the_configured_db_and_name(redis_clients, key, name, path):
    case = redis_matrix.CASES[name]

    async def main() -> None:
        service = AsyncRedisPool({"default": redis_clients.url(db=redis_matrix.DB, **redis_matrix.BOUNDS)})
        await service.ainit_pool()
        try:
            r = service.client()
            fresh = await rsnapshot(r, key)
            await rsend(path, r, [redis_matrix._fill(c, key) for c in case.commands], case.error)
            admin = redis_admin()
            admin.select(redis_matrix.DB)
            admin.set(key, "from-db-3")
            admin.close()
            after = await rsnapshot(r, key)
            assert after["info"] == fresh["info"] and after["tracking"] == fresh["tracking"], name
            assert after["value"] == b"from-db-3"
            async with r.pipeline() as pipe:
                assert await pipe.set(key + ":tx", "done").get(key + ":tx").execute() == [True, b"done"]
            stats = service.stats()["default"]
            same = after["id"] == fresh["id"]
            assert same == (case.outcome == "reset") and stats["connections_reset"] == int(same), (name, stats)
        finally:
            await service.aclose_pool()

    arun(main())
    assert redis_clients.count() == 0


@pytest.mark.redis
def test_redis_a_command_cancelled_mid_reply_leaves_no_stray_reply_for_the_next_user(redis_clients, key):
    """``BLPOP`` cancelled while it waits: redis-py disconnects the connection, the pool drops it;
    the list's element pushed right after is not read by the next user's ``GET`` as its reply."""

    async def main() -> None:
        service = AsyncRedisPool({"default": redis_clients.url(max_size=1, timeout=5, socket_timeout=5)})
        await service.ainit_pool()
        r = service.client()
        await r.set(key, "value")
        waiting = asyncio.ensure_future(r.blpop([key + ":list"], timeout=3))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.to_thread(lambda: redis_admin().rpush(key + ":list", "late"))
        assert await r.get(key) == b"value"
        assert service.stats()["default"]["pool_size"] == 1
        await r.delete(key + ":list")
        with pytest.raises(redis.RedisError, match="use r.pipeline"):
            await r.execute_command("MULTI")
        await service.aclose_pool()

    arun(main())


@pytest.mark.redis
def test_redis_a_killed_idle_connection_is_replaced_before_it_is_lent(redis_clients, key):
    async def main() -> None:
        service = AsyncRedisPool({"default": redis_clients.url(max_size=1, timeout=5, socket_timeout=5)})
        await service.ainit_pool()
        r = service.client()
        await r.set(key, "v")
        await asyncio.to_thread(redis_clients.kill_all)
        await asyncio.sleep(0.2)
        assert await r.get(key) == b"v"  # no ConnectionError: the probe saw the EOF
        assert service.stats()["default"]["connections_lost"] == 1
        await service.aclose_pool()

    arun(main())
