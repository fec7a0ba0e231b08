"""MySQL and MariaDB through aiomysql: the asyncio twin of :mod:`.mysql`.

Why aiomysql: it speaks the protocol with PyMySQL's own packet classes
(``MysqlPacket``, ``OKPacketWrapper``, ``EOFPacketWrapper``) and a result class
of the same shape, so every rule of :mod:`.mysql` applies unchanged, from the
same functions: the statement scan (:func:`~.mysql.note_command`), the exact
transaction status read off each OK and EOF packet (:func:`~.mysql.note_result`,
:func:`~.mysql.eof_status`: "unsure" from each command until its answer ends
well), ``check_in``, the one-round-trip reset (:func:`~.mysql.reset_commands`),
the role restored, the hosts and ``target_session_attrs``
(:class:`~.mysql.MySQLRules`). asyncmy, the faster alternative, is a Cython
driver whose connection's protocol methods are compiled: they cannot be
overridden in a subclass, so none of these readings could be made.

What differs is only the waiting:

- the connect (TCP, TLS, authentication, the session setup) is bounded by
  ``connect_timeout`` as a whole (aiomysql's own bounds only the TCP connect);
- the ping (COM_PING) and the pool's own statements (ROLLBACK, the reset) by
  ``check_timeout`` and the pool's own bound; a statement of the user's is
  bounded by what the app awaits it under (``asyncio.timeout``): aiomysql has
  no read timeout, so ``read_timeout``/``write_timeout`` do not apply here;
- an idle connection is looked at through its stream: EOF or bytes the
  server sent (KILL, a restart) are in the stream's buffer by the next
  checkout, no system call;
- a task cancelled mid-read: aiomysql closes the connection itself, and
  ``check_in``/``finish`` find it closed (or its status unsure): dropped.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

import aiomysql
import aiomysql.cursors
from aiomysql.connection import MySQLResult as _AioResult
from pymysql.constants import CLIENT

from ..errors import ConfigError
from .base import CLOSED, DROP, IDLE, RESET, REUSE
from .base_async import AsyncConnector, TaskGuard, stream_probe
from .mysql import (
    _IN_TRANS,
    _STATE_CHANGED,
    MySQLRules,
    _tls_context,
    eof_status,
    note_command,
    note_result,
    pipeline_bytes,
    setup_commands,
    setup_done,
)

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["AsyncMySQLConnector", "PooledAioMySQLConnection", "drop"]

_Connection = aiomysql.Connection
_DRIVER = _Connection.__module__  # aiomysql.connection


class _PooledAioResult(_AioResult):  # type: ignore[misc]
    """aiomysql's result, keeping the EOF packet's server status (see :func:`~.mysql.eof_status`)."""

    def _check_packet_is_eof(self, packet: Any) -> bool:
        return eof_status(self, packet)


class PooledAioMySQLConnection(TaskGuard, aiomysql.Connection):  # type: ignore[misc]
    """An ``aiomysql.Connection`` whose status is read exactly (as
    :class:`~.mysql.StatusExactConnection`) and that knows its lease: every command passes
    :meth:`_execute_command`, where the guard refuses a use by another request, or after the
    connection went back, before anything is sent."""

    _gp_seen = 0
    _gp_dirty = 0
    _gp_unsure = True
    _gp_role: Optional[bytes] = None

    @property
    def _sock(self) -> Any:
        """The stream writer, None once closed (what :class:`~.mysql.MySQLRules` reads)."""
        return self._writer

    async def _execute_command(self, command: int, sql: Any) -> Any:
        if self._gp_holder is not None:
            self._gp_check()
        note_command(self, command, sql)
        return await _Connection._execute_command(self, command, sql)

    async def _read_ok_packet(self) -> Any:
        ok = await _Connection._read_ok_packet(self)
        self._gp_seen |= self.server_status
        self._gp_unsure = False
        return ok

    async def _send_autocommit_mode(self) -> None:
        seen = self._gp_seen  # autocommit's own state-changed flag: see StatusExactConnection
        await _Connection._send_autocommit_mode(self)
        self._gp_seen = seen | (self.server_status & ~_STATE_CHANGED)

    async def _read_query_result(self, unbuffered: bool = False) -> Any:
        self._result = None
        result = _PooledAioResult(self)
        if unbuffered:
            try:
                await result.init_unbuffered_query()
            except BaseException:
                result.unbuffered_active = False
                result.connection = None
                raise
        else:
            await result.read()
        self._result = result
        self._affected_rows = result.affected_rows
        note_result(self, result)

    def close(self) -> None:
        # aiomysql closes the connection itself when a read fails or is cancelled (its own
        # module calls this): that is no user's close, and the pool drops it as closed anyway.
        if sys._getframe(1).f_globals.get("__name__") == _DRIVER or self._gp_user_close():
            _Connection.close(self)


class AsyncMySQLConnector(MySQLRules, AsyncConnector):
    """Opens aiomysql connections for one pool (see the module docstring)."""

    guarded = False  # the lease is armed by lend(): the task and its request

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(config)
        self._tls: Optional[tuple[bool, ssl.SSLContext]] = _tls_context(config)
        kwargs = config.driver_kwargs()
        self._cursor = _aio_cursor(config, kwargs.get("cursorclass"))
        self._local_infile = bool(kwargs.get("local_infile", False))

    # -- the physical connection ----------------------------------------------------------

    async def connect(self) -> Any:
        """One connection to the first host that accepts it (in :class:`~.mysql.HostOrder`'s
        order, with the role ``target_session_attrs`` asks for), each bounded by
        ``connect_timeout``; then ``session``."""
        failures: list[tuple[str, BaseException]] = []
        order = self.hosts.order()
        for host, port in order:
            try:
                conn = await asyncio.wait_for(self._create_on(host, port), self.config.connect_timeout)
            except (aiomysql.MySQLError, OSError, asyncio.TimeoutError) as exc:
                self.hosts.failed((host, port))
                error = exc
                if isinstance(exc, asyncio.TimeoutError):
                    error = aiomysql.OperationalError(
                        2013, f"connect to {host}:{port} timed out after {self.config.connect_timeout:g}s"
                    )
                if len(order) == 1:
                    raise error from None
                failures.append((f"{host}:{port}", error))
                continue
            self.hosts.worked((host, port))
            return conn
        tried = "; ".join(f"{where}: {self.describe_error(exc)}" for where, exc in failures)
        raise aiomysql.OperationalError(2003, f"no host accepted the connection ({len(failures)} tried: {tried})")

    async def _create_on(self, host: str, port: int) -> Any:
        cfg = self.config
        extra: dict[str, Any] = {}
        if self._cursor is not None:
            extra["cursorclass"] = self._cursor
        conn = PooledAioMySQLConnection(
            host=host,
            port=port,
            user=cfg.user,
            # aiomysql sends a str password as latin-1: this str's latin-1 bytes are its UTF-8 bytes,
            # so a password such as "pässwörd" (stored by the server as UTF-8) logs in.
            password=cfg.password.encode("utf-8").decode("latin-1"),
            db=cfg.database,
            charset=cfg.charset,
            init_command=cfg.init_command,
            autocommit=cfg.autocommit,
            connect_timeout=cfg.connect_timeout,
            client_flag=(CLIENT.SESSION_TRACK if self._reset else 0) | cfg.client_flag,
            ssl=self._tls[1] if self._tls is not None else None,
            local_infile=self._local_infile,
            **extra,
        )
        conn._gp_pool = cfg.pool_name
        try:
            await conn._connect()
            track = self._reset and bool(conn.server_capabilities & CLIENT.SESSION_TRACK)
            if self._reset and not track:
                self._warn_untracked()
            commands, role_at, read_only_at = setup_commands(conn, track=track,
                                                             read_only=self._want_writable is not None)  # fmt: skip
            read_only = setup_done(conn, await _pipeline(conn, commands), role_at, read_only_at) if commands else None
            wrong = self._wrong_role(read_only)
            if wrong is not None:
                raise wrong
            for statement in cfg.session:
                async with conn.cursor() as cur:
                    await cur.execute(statement)
        except BaseException:
            _Connection.close(conn)
            raise
        conn._gp_seen = conn._gp_dirty = 0  # what the pool's own statements raised
        conn._gp_unsure = False
        return conn

    async def close(self, raw: Any) -> None:
        raw._gp_holder = None
        try:
            await asyncio.wait_for(raw.ensure_closed(), self.config.check_timeout)  # COM_QUIT
        except BaseException:  # noqa: BLE001 - never raises: closed without a word then
            _Connection.close(raw)
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        raw._gp_holder = CLOSED
        drop(raw)

    # -- health ---------------------------------------------------------------------------

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        reader = raw._reader
        return None if reader is None else stream_probe(reader)

    async def ping(self, raw: Any, timeout: float) -> None:
        """COM_PING within *timeout*, never reconnecting."""
        raw._gp_holder = None
        await asyncio.wait_for(raw.ping(False), timeout)

    async def warm(self, raw: Any, timeout: float) -> None:
        await self.ping(raw, timeout)
        raw._gp_holder = IDLE

    async def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``@@max_connections`` minus ``Threads_connected``, bounded by *timeout*."""
        raw._gp_holder = None

        async def read() -> Optional[int]:
            async with raw.cursor() as cur:
                await cur.execute("SELECT @@max_connections")
                (limit,) = await cur.fetchone()
                await cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                row = await cur.fetchone()
            return None if row is None else int(limit) - int(row[1])

        try:
            return await asyncio.wait_for(read(), timeout)
        finally:
            raw._result = None
            raw._gp_holder = IDLE

    # -- leases ------------------------------------------------------------------------------

    def lend(self, raw: Any, holder: Optional[int], taken_at: str = "") -> None:
        raw.arm(holder, taken_at)

    async def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already."""
        if not raw.server_status & _IN_TRANS:
            await raw.begin()

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """The PyMySQL connector's ``finish()`` (:class:`~.mysql.MySQLRules`), awaited; the pool's
        own round trips bounded by its own bound."""
        raw._gp_holder = None
        if self._unusable(raw):
            return DROP
        bound = max(self.config.connect_timeout, self.config.check_timeout)
        return await asyncio.wait_for(self._settle(raw, commit, failed), bound)

    async def _settle(self, raw: Any, commit: bool, failed: bool) -> str:
        await _drain(raw)
        if self._needs_reset(raw, failed):
            if self._commit_before_reset(raw, commit):
                await raw.commit()
            plan = self._reset_plan(raw)
            if plan is None or not self._reset_applied(raw, await _pipeline(raw, plan[0]), plan):
                return DROP
            outcome = RESET
        else:
            if raw.server_status & _IN_TRANS:
                await (raw.commit() if commit else raw.rollback())
            elif raw._gp_unsure:
                await raw.rollback()
            outcome = REUSE
            if self._autocommit_changed(raw):
                await raw.autocommit(self.config.autocommit)
                outcome = RESET
            raw._gp_seen = raw._gp_dirty = 0
        raw._gp_holder = IDLE
        return outcome


def drop(raw: Any) -> None:
    """Close aiomysql connection *raw* without a word to the server (no COM_QUIT, no flush) and
    without the loop. Never raises."""
    try:
        writer = raw._writer
        raw._writer = raw._reader = None
        if writer is not None:
            writer.transport.abort()
    except Exception:  # noqa: BLE001 - never raises
        pass


def _aio_cursor(config: DatabaseConfig, cursor: Any) -> Any:
    """aiomysql's cursor class for the config's ``cursorclass`` (PyMySQL's ``DictCursor`` is
    aiomysql's ``DictCursor``...); a class of aiomysql's is taken as it is."""
    if cursor is None or not getattr(cursor, "__module__", "").startswith("pymysql"):
        return cursor
    twin = getattr(aiomysql.cursors, cursor.__name__, None)
    if twin is None:
        raise ConfigError(f"pool {config.pool_name!r}: aiomysql has no cursor class like {cursor.__name__}")
    return twin


async def _drain(conn: Any) -> None:
    """Read what is left of the last command's answer (as :func:`~.mysql._drain`)."""
    result = conn._result
    if result is not None:
        if result.unbuffered_active:
            await result._finish_unbuffered_query()
        while conn._result.has_next:
            await conn.next_result()
        conn._result = None


async def _pipeline(conn: Any, commands: list[tuple[int, bytes]]) -> list[Any]:
    """:func:`~.mysql._pipeline` awaited: *commands* in one write, their answers read in order."""
    await _drain(conn)
    conn._write_bytes(pipeline_bytes(commands))
    results = []
    for _ in commands:
        conn._next_seq_id = 1
        await conn._read_query_result()
        results.append(conn._result)
    return results
