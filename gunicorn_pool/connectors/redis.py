"""Redis through redis-py: the Connector that :class:`gunicorn_pool.redis.RedisPool` pools.

One physical connection is one ``redis.Connection`` (``SSLConnection`` for
``rediss://``, ``UnixDomainSocketConnection`` for ``unix://``), of a small
subclass that refuses to reconnect once the pool dropped it (below).

- *connect*: the TCP (or unix socket) connect is bounded by
  ``socket_connect_timeout``, and so is every reply of the handshake (AUTH,
  CLIENT SETNAME, CLIENT SETINFO, SELECT) and a closing PING: redis-py reads
  the handshake with ``socket_timeout``, unbounded by default, so a server
  that accepts and never answers would hang the worker. The connection then
  runs with ``socket_timeout`` (unset: gunicorn's ``timeout`` in gthread and
  gevent workers, none in sync workers, as for MySQL's ``read_timeout``).
- *probe* (checkout, idle for ``probe_after``): a zero-timeout ``poll()`` of
  the socket, prepared once per connection. An idle RESP2 connection has
  nothing to read: EOF (CLIENT KILL, a server restart) or stray bytes mean it
  must not be lent as it is.
- *ping* (probe said so, or idle longer than ``check_interval``): refuses a
  connection with bytes waiting (a reply nobody read, or EOF), then PING
  with ``check_timeout`` as a hard bound.
- *check_in* (every return, no round trip): clean when the socket is the one
  the pool opened and no connect callback is registered. A connection
  redis-py disconnected (a failed command, a closed PubSub), reconnected by
  itself during the lease, or still bound to a PubSub is dropped
  (:meth:`RedisConnector.finish`), never lent again.
- *close* and *discard* close the socket; Redis needs no goodbye. In a
  forked child the inherited socket is only closed, never ``shutdown()``:
  a shutdown acts on the connection itself, which the parent still uses.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import str_if_bytes

from .base import DROP, Connector, socket_probe

if TYPE_CHECKING:
    from ..redis import RedisConfig

__all__ = ["PooledConnection", "PooledSSLConnection", "PooledUnixConnection", "RedisConnector"]

_MASK = "***"
#: Maintenance push notifications (RESP3, Redis Enterprise) would move and time out
#: connections behind the pool's back: off.
_NO_MAINT = MaintNotificationsConfig(enabled=False)


def _refuse_if_dropped(conn: Any) -> None:
    if conn._gp_dropped:
        raise redis.ConnectionError(
            f"pool {conn._gp_pool!r}: this connection was closed by its pool (returned, reclaimed at the end of"
            " its request, or the pool closed); it does not reconnect"
        )


class _RefusesReconnect:
    """Mixed into each transport's connection class: no reconnect once the pool dropped it.

    redis-py reconnects a disconnected connection on its next command. A
    reference kept past the lease (a PubSub or Pipeline object reclaimed at
    the end of its request) would otherwise open a socket the pool does not
    know, counted nowhere and closed by nobody.
    """

    _gp_pool = ""
    _gp_dropped = False
    _gp_sock: Any = None  # the socket the pool opened

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        _refuse_if_dropped(self)
        super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]


class PooledConnection(_RefusesReconnect, redis.Connection):
    """A TCP ``redis.Connection`` that does not reconnect once its pool dropped it."""


class PooledSSLConnection(_RefusesReconnect, redis.SSLConnection):
    """:class:`PooledConnection` over TLS (``rediss://``)."""


class PooledUnixConnection(_RefusesReconnect, redis.UnixDomainSocketConnection):
    """:class:`PooledConnection` over a unix socket (``unix://``)."""


def connection_class(config: RedisConfig) -> type[redis.connection.AbstractConnection]:
    """The pooled connection class for *config*'s transport."""
    if config.path is not None:
        return PooledUnixConnection
    return PooledSSLConnection if config.ssl else PooledConnection


def handshake(conn: Any, *, timeout: float) -> None:
    """redis-py's handshake (AUTH/HELLO, CLIENT SETNAME, SETINFO, SELECT) and a PING, every
    reply bounded by *timeout* (redis-py's ``redis_connect_func`` hook: it runs on every
    connect of *conn*, also a reconnect of its own)."""
    sock = conn._sock
    sock.settimeout(timeout)
    try:
        conn.on_connect()
        conn.send_command("PING", check_health=False)
        if str_if_bytes(conn.read_response()) != "PONG":
            raise redis.ConnectionError("unexpected reply to PING after connecting")
    finally:
        try:
            sock.settimeout(conn.socket_timeout)
        except OSError:  # closed by a failed handshake
            pass


class RedisConnector(Connector):
    """Opens redis-py connections for one pool.

    *kwargs* are the connection keyword arguments, shared with the pool's
    redis-py adapter (its ``connection_kwargs``), so what a client reads
    there (protocol, decode_responses) is what the connections run with.
    """

    adapter = "redis"

    def __init__(self, config: RedisConfig, *, kwargs: dict[str, Any]) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn, password=config.password)
        self.config = config
        self.kwargs = kwargs
        self._class = connection_class(config)
        self._secrets = tuple(s for s in (config.password, config.ssl_password) if s)

    def socket_timeout(self) -> Optional[float]:
        """The configured ``socket_timeout``; unset, :attr:`query_bound` (gunicorn's ``timeout`` in
        a gthread or gevent worker: gunicorn kills a hung sync worker itself, but not those)."""
        if self.config.socket_timeout is not None:
            return self.config.socket_timeout
        return self.query_bound

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        kwargs = dict(self.kwargs, socket_timeout=self.socket_timeout(), maint_notifications_config=_NO_MAINT)
        conn: Any = self._class(**kwargs)
        conn._gp_pool = self.pool_name
        try:
            conn.connect()
        except BaseException:
            self.discard(conn)
            raise
        conn._gp_sock = conn._sock
        return conn

    def close(self, raw: Any) -> None:
        self.discard(raw)  # closing the socket is all the goodbye Redis needs

    def discard(self, raw: Any) -> None:
        raw._gp_dropped = True
        sock, raw._sock = raw._sock, None
        try:
            raw._parser.on_disconnect()
        except Exception:  # noqa: BLE001 - never raises
            pass
        if sock is None:
            return
        if raw.pid == os.getpid():  # never in a forked child: it would end the parent's connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass
        try:
            sock.close()
        except OSError:
            pass

    # -- health ---------------------------------------------------------------------------

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(raw._sock)

    def ping(self, raw: Any, timeout: float) -> None:
        sock = raw._sock
        if sock is None or sock is not raw._gp_sock:
            raise redis.ConnectionError("connection closed")
        # Bytes waiting on an idle connection are a reply nobody read (or EOF, which
        # raises here): a PING would read them as its own answer.
        if raw._parser.can_read(0):
            raise redis.ConnectionError("unread reply on an idle connection")
        sock.settimeout(timeout)
        try:
            raw.send_command("PING", check_health=False)
            reply = raw.read_response()
        finally:
            if raw._sock is sock:
                sock.settimeout(raw.socket_timeout)
        if str_if_bytes(reply) != "PONG":
            raise redis.ConnectionError("unexpected reply to PING")

    def warm(self, raw: Any, timeout: float) -> None:
        self.ping(raw, timeout)

    # -- leases ------------------------------------------------------------------------------

    def check_in(self, raw: Any) -> bool:
        return raw._sock is raw._gp_sock and not raw._connect_callbacks

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        # Disconnected, reconnected behind the pool's back, or bound to a PubSub: a new
        # connection is the only clean state (Redis's RESET would also log it out).
        return DROP

    # -- messages ---------------------------------------------------------------------------

    def describe_error(self, exc: BaseException) -> str:
        text = super().describe_error(exc)
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text
