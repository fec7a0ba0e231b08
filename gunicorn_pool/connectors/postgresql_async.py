"""PostgreSQL through psycopg 3's ``AsyncConnection``: the asyncio twin of :mod:`.postgresql`.

Every rule is the synchronous connector's, from the same code
(:class:`~.postgresql.PGRules`, :class:`~.postgresql.PGSession`, the statement
scan of :class:`~.postgresql._ScansStatements`): what a return finds without a
round trip (libpq's transaction status, the flags the cursors set), when a
connection is dropped (closed by its user, mid-query: ``ACTIVE``, broken,
inside a ``transaction()`` block, a pipeline or a two-phase transaction),
when ``DISCARD ALL`` resets it, which builtins are harmless, which settings of
the connection object are given back. This module adds only the awaits:

- the connect runs psycopg's connect generator under psycopg's own
  ``wait_conn_async`` with ``connect_timeout`` as given, fractions honoured,
  per host tried (psycopg's ``connect()`` rounds it to whole seconds, at
  least 2); host names are resolved without blocking the loop;
- every command passes :meth:`PooledAsyncPGConnection.wait`, psycopg's one
  chokepoint, where the lease guard (:class:`~.base_async.TaskGuard`) refuses a
  use by another request, or after the connection went back, before anything
  is sent;
- the ping (an empty query), ROLLBACK and ``DISCARD ALL`` are bounded by
  ``check_timeout`` / the pool's own bound, the probe is the same
  zero-timeout ``poll()`` of the socket;
- a task cancelled mid-query: psycopg asks the server to cancel the query
  and reads the end of it (or finishes the connection); the pool's lease
  drops the connection anyway (``CancelledError``), and one given back with
  ``putconn()`` while still ``ACTIVE`` is dropped by ``finish()``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, waiting
from psycopg.conninfo import conninfo_attempts_async, make_conninfo

from .base import CLOSED, DROP, IDLE, RESET, REUSE
from .base_async import AsyncConnector, TaskGuard
from .postgresql import (
    _CONN_OK,
    _FREE_SQL,
    _NAMES_SQL,
    _TX_IDLE,
    _TX_INTRANS,
    _WAIT_INTERVAL,
    PGRules,
    PGSession,
    _attempt_host,
    _no_host,
    _raise_first_error,
    _ScansServerStatements,
    _ScansStatements,
    _shutdown,
)

if TYPE_CHECKING:
    from psycopg.abc import RV, PQGen, PQGenConn
    from psycopg.pq.abc import PGconn, PGresult

    from ..config import DatabaseConfig

__all__ = [
    "AsyncPostgreSQLConnector", "PooledAsyncPGConnection", "PooledAsyncPGCursor", "PooledAsyncPGServerCursor",
    "aping", "drop",
]  # fmt: skip

#: Settings psycopg's AsyncConnection sets through a coroutine (its property setters refuse).
_ASYNC_SETTERS = frozenset({"autocommit", "isolation_level", "read_only", "deferrable"})


class PooledAsyncPGCursor(_ScansStatements, psycopg.AsyncCursor[Any]):
    """The cursor of a pooled asyncio connection: notes the statements that change the session."""


class PooledAsyncPGServerCursor(_ScansServerStatements, psycopg.AsyncServerCursor[Any]):
    """The server-side cursor of a pooled asyncio connection."""


class PooledAsyncPGConnection(TaskGuard, PGSession, psycopg.AsyncConnection[Any]):
    """A ``psycopg.AsyncConnection`` that knows its lease (a task and its request) and what its
    user changed (:class:`~.postgresql.PGSession`)."""

    async def wait(self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: Optional[float] = None) -> RV:
        """psycopg's chokepoint: every operation's generator runs here (guarded)."""
        if self._gp_holder is not None:
            self._gp_check()
        return await psycopg.AsyncConnection.wait(self, gen, interval, timeout)

    async def close(self) -> None:
        if self._gp_user_close():
            await psycopg.AsyncConnection.close(self)

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[psycopg.AsyncPipeline]:
        self._gp_check()
        async with psycopg.AsyncConnection.pipeline(self) as pipeline:
            yield pipeline

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        self._gp_refuse_idle()
        await psycopg.AsyncConnection.cancel_safe(self, timeout=timeout)

    # Settings of this object the next user must not inherit.

    async def set_autocommit(self, value: bool) -> None:
        await psycopg.AsyncConnection.set_autocommit(self, value)
        self._gp_client = True

    async def set_isolation_level(self, value: Optional[psycopg.IsolationLevel]) -> None:
        await psycopg.AsyncConnection.set_isolation_level(self, value)
        self._gp_client = True

    async def set_read_only(self, value: Optional[bool]) -> None:
        await psycopg.AsyncConnection.set_read_only(self, value)
        self._gp_client = True

    async def set_deferrable(self, value: Optional[bool]) -> None:
        await psycopg.AsyncConnection.set_deferrable(self, value)
        self._gp_client = True


class AsyncPostgreSQLConnector(PGRules, AsyncConnector):
    """Opens psycopg ``AsyncConnection``\\ s for one pool (see the module docstring)."""

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(config, cursor=PooledAsyncPGCursor, server_cursor=PooledAsyncPGServerCursor,
                         plain_cursor=psycopg.AsyncCursor, plain_server_cursor=psycopg.AsyncServerCursor)  # fmt: skip

    # -- the physical connection ----------------------------------------------------------

    async def connect(self) -> PooledAsyncPGConnection:
        """Open one connection, each host tried bounded by ``connect_timeout``, with the
        session the config asks for (autocommit, prepare threshold, init_command, session)."""
        failures: list[tuple[str, psycopg.OperationalError]] = []
        for attempt in await conninfo_attempts_async(self._params):
            attempt.pop("load_balance_hosts", None)
            host = _attempt_host(attempt)
            try:
                gen = generators.connect(make_conninfo("", **attempt))
                pgconn = await _wait_conn(gen, self.config.connect_timeout, host)
                break
            except psycopg.OperationalError as exc:
                failures.append((host, exc))
        else:
            raise _no_host(failures)
        conn = PooledAsyncPGConnection(pgconn)
        try:
            await self._set_up(conn)
        except BaseException:
            _finish(conn)
            raise
        return conn

    async def _set_up(self, conn: PooledAsyncPGConnection) -> None:
        self._configure(conn)
        _assign_idle(conn, "autocommit", self.config.autocommit)
        if self._setup:
            await _run(conn, self._setup, self._own_timeout, "init_command/session")
        if self._reset_server and not self._names_read:
            self._names_from((await _run(conn, _NAMES_SQL, self._own_timeout, "builtin function names"))[-1])
        self._configured(conn)

    async def close(self, raw: Any) -> None:
        raw._gp_holder = None  # the pool's own use
        try:
            await raw.close()  # Terminate, then the socket is closed
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            pass
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        raw._gp_holder = CLOSED
        drop(raw)

    # -- health ---------------------------------------------------------------------------

    async def ping(self, raw: Any, timeout: float) -> None:
        """An empty query (EmptyQueryResponse: no parse, no plan), bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        await aping(raw, timeout)

    async def warm(self, raw: Any, timeout: float) -> None:
        """A ping, then ``SELECT 1`` through a cursor, both bounded by *timeout*; the guard is left IDLE."""
        await self.ping(raw, timeout)
        await _fetch(raw, "SELECT 1", timeout)
        raw._gp_server = raw._gp_maybe = False
        raw._gp_holder = IDLE

    async def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """As the synchronous connector's: one query bounded by *timeout*."""
        raw._gp_holder = None
        try:
            rows = await _fetch(raw, _FREE_SQL, timeout)
            if raw.pgconn.transaction_status != _TX_IDLE:
                async with raw.lock:
                    await _wait(raw, raw._rollback_gen(), timeout, "ROLLBACK")
        finally:
            raw._gp_server = raw._gp_maybe = False
            raw._gp_holder = IDLE
        return int(rows[0][0])

    # -- leases ------------------------------------------------------------------------------

    def lend(self, raw: Any, holder: Optional[int], taken_at: str = "") -> None:
        raw.arm(holder, taken_at)

    async def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already."""
        if raw.autocommit and raw.pgconn.transaction_status == _TX_IDLE:
            await raw.execute("BEGIN")

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """The synchronous connector's ``finish()`` (:class:`~.postgresql.PGRules`), awaited."""
        raw._gp_holder = None
        if self._unusable(raw):
            return DROP
        status = raw.pgconn.transaction_status
        if status == _TX_INTRANS and commit:
            await raw.commit()  # the user's commit: unbounded, as any statement of theirs
        elif status != _TX_IDLE:
            async with raw.lock:
                await _wait(raw, raw._rollback_gen(), self._own_timeout, "ROLLBACK")
        if raw._gp_close:
            return DROP
        outcome = REUSE
        if self._wants_reset(raw, failed):
            try:
                await _run(raw, b"DISCARD ALL", self._own_timeout, "DISCARD ALL")
                self._discarded(raw)
                if self._setup:
                    await _run(raw, self._setup, self._own_timeout, "init_command/session")
            except Exception as exc:  # noqa: BLE001 - a session not reset is never lent again
                return self._reset_failed(exc)
            outcome = RESET
        if self._restore_settings(raw, _assign_idle):
            outcome = RESET
        self._settled(raw)
        return outcome


# -- helpers -------------------------------------------------------------------------------------


def _assign_idle(raw: Any, name: str, value: Any) -> None:
    """Set *name* on idle *raw* now. psycopg's AsyncConnection sets autocommit, the isolation
    level, read-only and deferrable through coroutines whose generator makes no round trip on an
    idle connection: it runs to its end here, without the loop."""
    if name not in _ASYNC_SETTERS:
        setattr(raw, name, value)
        return
    gen = getattr(raw, f"_set_{name}_gen")(value)
    for _ in gen:
        gen.close()
        raise psycopg.OperationalError(f"setting {name} would need a round trip: the connection is not idle")


def drop(raw: Any) -> None:
    """End psycopg ``AsyncConnection`` *raw* without a round trip and without the loop. Never raises."""
    if raw.lock.locked():
        # Held by a task inside an operation (a reclaimed leak still running, or a suspended
        # stream()): finishing would free libpq's connection under it; shut the socket down.
        _shutdown(raw)
    else:
        _finish(raw)


def _finish(raw: Any) -> None:
    """End the session without a round trip (libpq sends Terminate and closes the socket)."""
    try:
        raw._closed = True
        raw.pgconn.finish()
    except Exception:  # noqa: BLE001 - never raises
        pass


async def _wait_conn(gen: PQGenConn[PGconn], timeout: float, where: str) -> PGconn:
    """Drive psycopg's connect generator within *timeout* seconds (fractions honoured)."""
    try:
        return await waiting.wait_conn_async(gen, interval=_WAIT_INTERVAL, timeout=timeout)
    except pg_errors._WaitTimeout:
        raise pg_errors.ConnectionTimeout(
            f"connection to {where} timed out after {timeout:g}s (connect_timeout)"
        ) from None
    finally:
        gen.close()


async def _wait(conn: Any, gen: PQGen[RV], timeout: float, what: str) -> RV:
    """Run *gen* on *conn* within *timeout* seconds (a timeout leaves it mid-protocol: drop it)."""
    try:
        return await conn.wait(gen, timeout=timeout)  # type: ignore[no-any-return]
    except pg_errors._WaitTimeout:
        raise psycopg.OperationalError(f"{what}: no answer from the server within {timeout:g}s") from None


async def _run(conn: Any, sql: bytes, timeout: float, what: str) -> list[PGresult]:
    """Send *sql* with the simple query protocol and read every result within *timeout* seconds;
    raise the first error, else return the results."""
    pgconn = conn.pgconn
    async with conn.lock:
        if pgconn.status != _CONN_OK:
            raise psycopg.OperationalError("the connection is closed")
        pgconn.send_query(sql)
        results: list[PGresult] = await _wait(conn, generators.execute(pgconn), timeout, what)
    _raise_first_error(pgconn, results)
    return results


async def aping(conn: Any, timeout: float) -> None:
    """An empty query on any psycopg ``AsyncConnection``, read within *timeout* seconds; raises
    if the connection is dead."""
    await _run(conn, b"", timeout, "ping")


async def _fetch(conn: Any, sql: str, timeout: float) -> list[Any]:
    """Run *sql* through a cursor of *conn* within *timeout* seconds and return its rows."""
    cursor = conn.cursor()
    try:
        async with conn.lock:
            await _wait(conn, cursor._execute_gen(sql), timeout, "query")
        return await cursor.fetchall()  # type: ignore[no-any-return]
    finally:
        await cursor.close()
