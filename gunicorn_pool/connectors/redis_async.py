"""Redis through ``redis.asyncio``: the asyncio twin of :mod:`.redis`.

The rules are the synchronous connector's (:class:`~.redis.RedisRules`, the
command table :data:`~.redis.SESSION_COMMANDS` and its tracking): every
command a connection packs is noted (``pack_command``: single commands,
pipelines, transactions, PubSub, the handshake), a session a command changed
is reset with ``RESET`` and the handshake again, a connection left where the
server may push what nobody asked for (SUBSCRIBE, MONITOR, CLIENT TRACKING...)
is closed, and one redis-py disconnected (a failed or interrupted command: a
task cancelled mid-reply disconnects it) or reconnected by itself is dropped.

What differs is how an idle connection is looked at. An asyncio stream reads
its socket whenever the loop runs, so EOF or stray bytes from the server
(CLIENT KILL, a restart) are already in the stream's buffer by the next
checkout: the probe reads the buffer and the EOF flag, no system call. The
connect and handshake (AUTH, SELECT, CLIENT SETNAME, a PING) are bounded by
``socket_connect_timeout`` as a whole; the ping and the reset by
``check_timeout`` and the pool's own bound.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis
import redis.asyncio
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import str_if_bytes

from .base import DROP, RESET
from .base_async import AsyncConnector, stream_probe
from .redis import RedisRules, SessionState, _refuse_if_dropped, track

if TYPE_CHECKING:
    from ..redis import RedisConfig

__all__ = [
    "AsyncRedisConnector", "PooledAsyncConnection", "PooledAsyncSSLConnection", "PooledAsyncUnixConnection",
    "async_connection_class", "handshake",
]  # fmt: skip

_NO_MAINT = MaintNotificationsConfig(enabled=False)


class _AsyncPooled:
    """Mixed into each transport's asyncio connection class: notes what each command leaves
    (:func:`~.redis.track`), and refuses to reconnect once the pool dropped it."""

    _gp_pool = ""
    _gp_dropped = False
    _gp_sock: Any = None  # the stream writer the pool opened
    _gp_session: SessionState

    def pack_command(self, *args: Any) -> Any:
        track(self._gp_session, args)
        return super().pack_command(*args)  # type: ignore[misc]

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        _refuse_if_dropped(self)
        await super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]


class PooledAsyncConnection(_AsyncPooled, redis.asyncio.Connection):
    """A TCP ``redis.asyncio.Connection`` of a pool."""


class PooledAsyncSSLConnection(_AsyncPooled, redis.asyncio.SSLConnection):
    """:class:`PooledAsyncConnection` over TLS (``rediss://``)."""


class PooledAsyncUnixConnection(_AsyncPooled, redis.asyncio.UnixDomainSocketConnection):
    """:class:`PooledAsyncConnection` over a unix socket (``unix://``)."""


def async_connection_class(config: RedisConfig) -> type[Any]:
    """The pooled asyncio connection class for *config*'s transport."""
    if config.path is not None:
        return PooledAsyncUnixConnection
    return PooledAsyncSSLConnection if config.ssl else PooledAsyncConnection


async def handshake(conn: Any, *, timeout: float) -> None:
    """redis-py's handshake (AUTH/HELLO, CLIENT SETNAME, SETINFO, SELECT) and a PING, bounded by
    *timeout* as a whole (``redis_connect_func``: it runs on every connect of *conn*, and after a
    reset). The session is then the pool's: nothing left to reset."""

    async def run() -> None:
        await conn.on_connect()
        await conn.send_command("PING", check_health=False)
        if str_if_bytes(await conn.read_response()) != "PONG":
            raise redis.ConnectionError("unexpected reply to PING after connecting")

    await asyncio.wait_for(run(), timeout)
    conn._gp_session.state = 0


def connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    """The keyword arguments of the asyncio connection classes: the synchronous ones', with the
    awaited handshake."""
    return dict(
        config.connection_kwargs(),
        redis_connect_func=functools.partial(handshake, timeout=config.socket_connect_timeout),
    )


def _suspect() -> bool:
    return True


class AsyncRedisConnector(RedisRules, AsyncConnector):
    """Opens ``redis.asyncio`` connections for one pool (see the module docstring)."""

    def __init__(self, config: RedisConfig, *, kwargs: dict[str, Any]) -> None:
        super().__init__(config, kwargs=kwargs)
        self._class = async_connection_class(config)

    # -- the physical connection ----------------------------------------------------------

    async def connect(self) -> Any:
        kwargs = dict(self.kwargs, socket_timeout=self.socket_timeout(), maint_notifications_config=_NO_MAINT)
        conn: Any = self._class(**kwargs)
        conn._gp_pool = self.pool_name
        conn._gp_session = SessionState()
        try:
            await asyncio.wait_for(conn.connect(), self.config.socket_connect_timeout * 2)
        except BaseException:
            self.discard(conn)
            raise
        conn._gp_sock = conn._writer
        return conn

    async def close(self, raw: Any) -> None:
        self.discard(raw)  # closing the socket is all the goodbye Redis needs

    def discard(self, raw: Any) -> None:
        raw._gp_dropped = True
        writer, raw._writer, raw._reader = raw._writer, None, None
        try:
            raw._parser.on_disconnect()
        except Exception:  # noqa: BLE001 - never raises
            pass
        if writer is not None:
            try:
                writer.transport.abort()  # no flush, no wait: the server ends the session at the reset
            except Exception:  # noqa: BLE001 - never raises
                pass

    # -- health ---------------------------------------------------------------------------

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        reader = raw._reader
        return _suspect if reader is None else stream_probe(reader)

    async def ping(self, raw: Any, timeout: float) -> None:
        if raw._writer is None or raw._writer is not raw._gp_sock:
            raise redis.ConnectionError("connection closed")
        if stream_probe(raw._reader)():
            raise redis.ConnectionError("unread reply or EOF on an idle connection")

        async def run() -> Any:
            await raw.send_command("PING", check_health=False)
            return await raw.read_response()

        if str_if_bytes(await asyncio.wait_for(run(), timeout)) != "PONG":
            raise redis.ConnectionError("unexpected reply to PING")

    # -- leases ------------------------------------------------------------------------------

    def check_in(self, raw: Any) -> bool:
        return self._clean(raw, raw._writer, raw._gp_session.state)

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """RESET and the handshake again for a session a command changed; DROP for the rest (the
        synchronous connector's rules)."""
        if self._unresettable(raw, raw._writer, raw._gp_session.state):
            return DROP
        try:
            if not await self._reset(raw):
                return DROP
        except Exception as exc:  # noqa: BLE001 - a session not reset is never lent again
            return self._reset_failed(exc)
        return RESET

    async def _reset(self, raw: Any) -> bool:
        """``RESET`` (its reply bounded by the pool's own bound), then the handshake and a PING."""
        if stream_probe(raw._reader)():
            raise redis.ConnectionError("unread reply before the reset")

        async def run() -> Any:
            await raw.send_command("RESET", check_health=False)
            return await raw.read_response(disconnect_on_error=False)

        try:
            reply = await asyncio.wait_for(run(), self._own_timeout)
        except redis.ResponseError as exc:
            self._reset_refused(exc)
            return False
        if str_if_bytes(reply) != "RESET":
            raise redis.ConnectionError("unexpected reply to RESET")
        await handshake(raw, timeout=self.config.socket_connect_timeout)
        return True
