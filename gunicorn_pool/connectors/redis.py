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
- *the session* a lease leaves: every command the pool's connections send
  is packed by the connection's command packer (``send_command``,
  ``pack_command``, ``pack_commands``: single commands, pipelines,
  transactions, PubSub, Monitor, the handshake), a :class:`_TrackingPacker`
  that notes the commands that leave state behind (:data:`SESSION_COMMANDS`):
  MULTI without EXEC/DISCARD, WATCH without EXEC/DISCARD/UNWATCH, SELECT,
  AUTH, HELLO, READONLY/READWRITE, ASKING, RESET, CLIENT SETNAME/CACHING;
  and those only closing the connection cures: the server may send what
  nobody asked for, or close it (SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE, MONITOR,
  CLIENT TRACKING/REPLY/KILL, QUIT, SYNC/PSYNC), or RESET undoes it only
  from Redis 7.2 (CLIENT NO-EVICT/NO-TOUCH). One dict lookup of the command
  name per command; a name seen for the first time is classified once.
- *check_in* (every return, no round trip): clean when the socket is the one
  the pool opened, no connect callback is registered and no command left
  state. Otherwise :meth:`RedisConnector.finish` runs: a session left with
  state is reset with ``RESET`` (Redis >= 6.2: it discards MULTI, unwatches,
  selects db 0, logs out, clears the name and READONLY) and redis-py's
  handshake again (AUTH, SELECT of the pool's ``db``, CLIENT
  SETNAME), each reply bounded; a server that does not know RESET, a reply
  that is not ``RESET``, or the second kind of command (pushes, a closed
  socket) close it instead (the pool opens another when needed). A
  connection redis-py disconnected (a failed command, a closed PubSub),
  reconnected by itself during the lease, or still bound to a PubSub is
  dropped, never lent again.
- *close* and *discard* close the socket; Redis needs no goodbye. In a
  forked child the inherited socket is only closed, never ``shutdown()``:
  a shutdown acts on the connection itself, which the parent still uses.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import str_if_bytes

from .base import DROP, RESET, Connector, ConnectorBase, socket_probe

if TYPE_CHECKING:
    from ..redis import RedisConfig

__all__ = [
    "COMMAND_KINDS", "SESSION_COMMANDS", "PooledConnection", "PooledSSLConnection", "PooledUnixConnection",
    "RedisConnector", "RedisRules", "SessionState", "refuse_on_shared_client",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

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


# -- what a lease leaves on its connection -------------------------------------------------------

#: Bits of a connection's ``_command_packer.state``: what its lease left (0: nothing).
_IN_MULTI = 1  # MULTI sent, no EXEC or DISCARD yet: the server queues every command
_WATCHING = 2  # WATCH sent, no EXEC, DISCARD or UNWATCH yet: a later EXEC of anyone may abort
_CHANGED = 4  # the session changed (SELECT, AUTH, CLIENT SETNAME...): RESET and the handshake again
_UNSAFE = 8  # only closing cures it: the server may push what nobody asked for, or close it
#: Kinds of command besides those bits.
_ENDS = 16  # EXEC, DISCARD: end a MULTI, and the WATCHes with it
_UNWATCHES = 32  # UNWATCH
_BY_SUBCOMMAND = 64  # CLIENT: the kind is the subcommand's

#: Commands that leave state on their connection: ``name: (kind, what to use on a pooled client
#: instead)``. Without a hint the command is allowed on a pooled client (it leaves nothing there
#: that a reset or a new connection does not cure, or it ends what another command started).
SESSION_COMMANDS: dict[str, tuple[int, str]] = {
    "MULTI": (_IN_MULTI, "r.pipeline() (MULTI/EXEC in one batch), or with r.client() as c: for a block"),
    "WATCH": (_WATCHING, "r.pipeline() and its watch(), or r.transaction(func, *keys)"),
    "EXEC": (_ENDS, ""),
    "DISCARD": (_ENDS, ""),
    "UNWATCH": (_UNWATCHES, ""),
    "SELECT": (_CHANGED, "one named pool per database (its db key)"),
    "AUTH": (_CHANGED, "the pool's username and password keys"),
    "HELLO": (_CHANGED, "the pool's protocol, username and password keys"),
    "READONLY": (_CHANGED, "with r.client() as c: (its connection is reset when it is given back)"),
    "READWRITE": (_CHANGED, "with r.client() as c: (its connection is reset when it is given back)"),
    "ASKING": (_CHANGED, "with r.client() as c: (its connection is reset when it is given back)"),
    "RESET": (_CHANGED, "with r.client() as c: (its connection is reset when it is given back)"),
    "CLIENT SETNAME": (_CHANGED, "the pool's client_name key"),
    # RESET undoes these from Redis 7.2 only
    "CLIENT NO-EVICT": (_UNSAFE, "with r.client() as c: (its connection is closed when it is given back)"),
    "CLIENT NO-TOUCH": (_UNSAFE, "with r.client() as c: (its connection is closed when it is given back)"),
    "CLIENT CACHING": (_CHANGED, "with r.client() as c: (its connection is reset when it is given back)"),
    "SUBSCRIBE": (_UNSAFE, "r.pubsub()"),
    "PSUBSCRIBE": (_UNSAFE, "r.pubsub()"),
    "SSUBSCRIBE": (_UNSAFE, "r.pubsub()"),
    "MONITOR": (_UNSAFE, "r.monitor()"),
    "SYNC": (_UNSAFE, "a connection of your own"),
    "PSYNC": (_UNSAFE, "a connection of your own"),
    "CLIENT TRACKING": (_UNSAFE, "with r.client() as c: (its connection is closed when it is given back)"),
    "CLIENT REPLY": (_UNSAFE, "with r.client() as c: (its connection is closed when it is given back)"),
    "CLIENT KILL": (_UNSAFE, ""),  # allowed: it may have killed its own connection
    "QUIT": (_UNSAFE, ""),
}
#: Kind of command, by its first argument exactly as redis-py got it (``"GET"``, ``b"get"``,
#: ``"CLIENT SETNAME"``...): filled as names are seen; 0 for most.
COMMAND_KINDS: dict[Any, int] = {}
_KINDS = COMMAND_KINDS
_KINDS_MAX = 1024


def _name(word: Any) -> str:
    return str_if_bytes(word).upper() if isinstance(word, (str, bytes)) else ""


def _kind_of_name(first: Any) -> int:
    """The kind of a command whose first argument is *first* (remembered in _KINDS; redis-py sends
    names as str or bytes, always hashable)."""
    words = _name(first).split()
    name = " ".join(words[:2]) if words[:1] == ["CLIENT"] else words[0] if words else ""
    kind = _BY_SUBCOMMAND if name == "CLIENT" else SESSION_COMMANDS.get(name, (0, ""))[0]
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[first] = kind
    return kind


def _command(args: tuple[Any, ...]) -> str:
    """The command's name as SESSION_COMMANDS spells it ("CLIENT SETNAME" with its subcommand)."""
    words = _name(args[0]).split()
    if words == ["CLIENT"] and len(args) > 1:
        words.append(_name(args[1]))
    return " ".join(words[:2]) if words[:1] == ["CLIENT"] else words[0] if words else ""


def _track(packer: Any, args: tuple[Any, ...]) -> None:
    """Note on *packer* what command *args* leaves (the hot path has found its kind is not 0)."""
    kind = _KINDS.get(args[0])
    if kind is None:
        kind = _kind_of_name(args[0])
    if kind == _BY_SUBCOMMAND:
        kind = SESSION_COMMANDS.get(_command(args), (0, ""))[0]
    state = packer.state
    if kind == _ENDS:
        if state & _IN_MULTI:  # EXEC without MULTI is an error that leaves the WATCHes
            state &= ~(_IN_MULTI | _WATCHING)
    elif kind == _UNWATCHES:
        if not state & _IN_MULTI:  # inside MULTI it is only queued
            state &= ~_WATCHING
    else:
        state |= kind
    packer.state = state


def refuse_on_shared_client(pool_name: str, args: tuple[Any, ...]) -> None:
    """Raise ``redis.RedisError`` if *args* is a command whose effect would outlast it on its
    connection: on a pooled client's per-command connection it could only reach another request."""
    name = _command(args)
    hint = SESSION_COMMANDS.get(name, (0, ""))[1]
    if hint:
        raise redis.RedisError(
            f"pool {pool_name!r}: {name} on the pooled client would change the connection it runs on, which"
            f" goes back to the pool right after the command: use {hint}"
        )


class SessionState:
    """What the commands of one connection's lease left (bits of :data:`_IN_MULTI`...): the
    asyncio connections keep one each (their packer is redis-py's own, see :mod:`.redis_async`)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = 0


def track(session: Any, args: tuple[Any, ...]) -> None:
    """Note on *session* (anything with a ``state``) what command *args* leaves: one dict lookup
    for a command that leaves nothing."""
    if _KINDS.get(args[0]) != 0:  # None (a name not seen yet), or one that leaves state
        _track(session, args)


class _TrackingPacker:
    """redis-py's command packer of one connection, noting what each command leaves (_track) in
    :attr:`state`.

    Every command a connection sends is packed here: ``send_command`` (single
    commands, the handshake's, PubSub's, Monitor's, a pipeline's WATCH),
    ``pack_command`` and ``pack_commands`` (pipelines and transactions: MULTI
    ... EXEC in one batch leaves nothing). A wrapper of the packer costs one
    call per command; an override of ``send_command`` would cost two, and a
    dict of keyword arguments (bench/redis_instructions.py).
    """

    __slots__ = ("inner", "state")

    def __init__(self, inner: Any) -> None:
        self.inner = inner.pack
        self.state = 0  #: bits of what the lease left: _IN_MULTI, _WATCHING, _CHANGED, _UNSAFE

    def pack(self, *args: Any) -> Any:
        if _KINDS.get(args[0]) != 0:  # None (a name not seen yet), or one that leaves state
            _track(self, args)
        return self.inner(*args)


class _TracksSession:
    """Mixed into each transport's connection class: its commands are packed by a
    :class:`_TrackingPacker`."""

    _command_packer: _TrackingPacker

    def _construct_command_packer(self, packer: Any) -> _TrackingPacker:
        return _TrackingPacker(super()._construct_command_packer(packer))  # type: ignore[misc]


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


class PooledConnection(_RefusesReconnect, _TracksSession, redis.Connection):
    """A TCP ``redis.Connection`` that notes the session state its commands leave, and does not
    reconnect once its pool dropped it."""


class PooledSSLConnection(_RefusesReconnect, _TracksSession, redis.SSLConnection):
    """:class:`PooledConnection` over TLS (``rediss://``)."""


class PooledUnixConnection(_RefusesReconnect, _TracksSession, redis.UnixDomainSocketConnection):
    """:class:`PooledConnection` over a unix socket (``unix://``)."""


def connection_class(config: RedisConfig) -> type[redis.connection.AbstractConnection]:
    """The pooled connection class for *config*'s transport."""
    if config.path is not None:
        return PooledUnixConnection
    return PooledSSLConnection if config.ssl else PooledConnection


def handshake(conn: Any, *, timeout: float) -> None:
    """redis-py's handshake (AUTH/HELLO, CLIENT SETNAME, SETINFO, SELECT) and a PING, every
    reply bounded by *timeout* (redis-py's ``redis_connect_func`` hook: it runs on every
    connect of *conn*, also a reconnect of its own, and after a reset). The session is then
    the pool's: nothing left to reset."""
    sock = conn._sock
    sock.settimeout(timeout)
    try:
        conn.on_connect()
        conn.send_command("PING", check_health=False)
        if str_if_bytes(conn.read_response()) != "PONG":
            raise redis.ConnectionError("unexpected reply to PING after connecting")
        conn._command_packer.state = 0
    finally:
        try:
            sock.settimeout(conn.socket_timeout)
        except OSError:  # closed by a failed handshake
            pass


class RedisRules(ConnectorBase):
    """Redis's rules, written once for the synchronous connector and the asyncio one
    (:mod:`.redis_async`): the socket timeout a connection runs with, when a returned connection
    is dropped rather than reset, what a reset failure logs, and the masking of both secrets.

    *kwargs* are the connection keyword arguments, shared with the pool's redis-py adapter (its
    ``connection_kwargs``), so what a client reads there (protocol, decode_responses) is what the
    connections run with.
    """

    adapter = "redis"

    def __init__(self, config: RedisConfig, *, kwargs: dict[str, Any]) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn, password=config.password)
        self.config = config
        self.kwargs = kwargs
        self._secrets = tuple(s for s in (config.password, config.ssl_password) if s)
        #: Bound of the reset's RESET (the handshake after it has socket_connect_timeout).
        self._own_timeout = max(config.socket_connect_timeout, config.check_timeout)
        self._resets = True  # False once the server said it does not know RESET (Redis < 6.2)

    def socket_timeout(self) -> Optional[float]:
        """The configured ``socket_timeout``; unset, :attr:`query_bound` (gunicorn's ``timeout`` in
        a gthread, gevent or asyncio worker: gunicorn kills a hung sync worker itself, but not those)."""
        if self.config.socket_timeout is not None:
            return self.config.socket_timeout
        return self.query_bound

    def _clean(self, raw: Any, transport: Any, state: int) -> bool:
        """check_in()'s test: the transport the pool opened (*transport*), no connect callback
        registered, no command left state (*state*)."""
        return transport is raw._gp_sock and not raw._connect_callbacks and not state

    def _unresettable(self, raw: Any, transport: Any, state: int) -> bool:
        """finish()'s first test: drop rather than reset (disconnected, reconnected behind the pool's
        back, bound to a PubSub, left where the server may send what nobody asked for, or a server
        without RESET)."""
        return bool(
            transport is None
            or transport is not raw._gp_sock
            or raw._connect_callbacks
            or state & _UNSAFE
            or not self._resets
        )

    def _reset_failed(self, exc: Exception) -> str:
        logger.warning("pool %s (%s): session reset failed, dropping the connection: %s",
                       self.pool_name, self.dsn, self.describe_error(exc))  # fmt: skip
        return DROP

    def _reset_refused(self, exc: Exception) -> None:
        """The server answered RESET with an error: raise it, unless it does not know RESET (then
        it is not tried again, and connections whose session changed are closed instead)."""
        if "unknown command" not in str(exc).lower():
            raise exc
        self._resets = False
        logger.info("pool %s (%s): the server does not know RESET (Redis < 6.2): a connection whose session"
                    " a command changed is closed instead", self.pool_name, self.dsn)  # fmt: skip

    # -- messages ---------------------------------------------------------------------------

    def describe_error(self, exc: BaseException) -> str:
        text = super().describe_error(exc)
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text


class RedisConnector(RedisRules, Connector):
    """Opens redis-py connections for one pool (see :class:`RedisRules`)."""

    def __init__(self, config: RedisConfig, *, kwargs: dict[str, Any]) -> None:
        super().__init__(config, kwargs=kwargs)
        self._class = connection_class(config)

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        kwargs = dict(self.kwargs, socket_timeout=self.socket_timeout(), maint_notifications_config=_NO_MAINT)
        conn: Any = self._class(**kwargs)
        if not isinstance(getattr(conn, "_command_packer", None), _TrackingPacker):  # pragma: no cover
            raise redis.RedisError(
                f"pool {self.pool_name!r}: this redis-py ({redis.__version__}) packs commands in a way"
                " gunicorn_pool does not know: it could not see the commands that change a session"
            )
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
        return self._clean(raw, raw._sock, raw._command_packer.state)

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """RESET and the handshake again for a session a command changed; DROP for the rest:
        disconnected, reconnected behind the pool's back, bound to a PubSub, or left in a state
        where the server may send what nobody asked for (see the module docstring)."""
        if self._unresettable(raw, raw._sock, raw._command_packer.state):
            return DROP
        try:
            if not self._reset(raw):
                return DROP
        except Exception as exc:  # noqa: BLE001 - a session not reset is never lent again
            return self._reset_failed(exc)
        return RESET

    def _reset(self, raw: Any) -> bool:
        """``RESET``, then redis-py's handshake (AUTH, SELECT, CLIENT SETNAME) and a PING, each
        reply bounded. False if the server does not know RESET (it is not tried again); a reply
        waiting before the RESET, or any reply but ``RESET``, raises."""
        if raw._parser.can_read(0):
            raise redis.ConnectionError("unread reply before the reset")
        raw._sock.settimeout(self._own_timeout)
        raw.send_command("RESET", check_health=False)
        try:
            reply = raw.read_response(disconnect_on_error=False)
        except redis.ResponseError as exc:
            self._reset_refused(exc)
            return False
        if str_if_bytes(reply) != "RESET":
            raise redis.ConnectionError("unexpected reply to RESET")
        handshake(raw, timeout=self.config.socket_connect_timeout)
        return True
