"""Connectors: how one physical connection is opened, checked and closed.

The pool core (:mod:`gunicorn_pool.pool`) knows nothing of drivers; it asks a
connector. There is one per adapter:

- :class:`MySQLConnector` (PyMySQL): the handshake is bounded by
  ``connect_timeout`` (PyMySQL's own ``connect_timeout`` covers only the TCP
  connect; without a read timeout a server that accepts and never answers
  would hang the worker for good), the TLS context is built once per pool
  (PyMySQL >= 1.2 builds one on every connect, ~32 ms), the checkout ping is
  bounded by ``check_timeout``, and a connection inherited through ``fork()``
  is dropped without sending COM_QUIT (which would end the parent's session).
- :class:`SQLiteConnector` (stdlib sqlite3): the embedded default.

Why DBUtils' steady connection, and not PooledDB
------------------------------------------------
Each physical connection is owned by a ``dbutils.steady_db`` SteadyDBConnection:
it opens the connection through our creator, runs the ``session`` statements
on every new connection (DBUtils' ``setsession``, which closes the connection
again if they fail), and closes it. Callers get ``steady.dbapi_connection``,
the driver's own object, so queries pay no proxy cost (SteadyDB's cursor
proxies cost 15-20 us per query here). PooledDB is not used: its
``blocking=True`` waits forever, its checkout adds a PING and a ROLLBACK round
trip, its lock is fixed when it is built (so one built before gevent patching
does not bound greenlets), it has no stats and keeps serving after close().
The waiting, fairness, limits and health rules live in
:class:`gunicorn_pool.pool.ConnectionPool` instead.
"""

from __future__ import annotations

import _socket
import functools
import select
import socket
import sqlite3
import ssl
import sys
from typing import Any, Callable, Optional, Protocol

from dbutils.steady_db import SteadyDBConnection

from .config import DatabaseConfig

__all__ = ["Connector", "MySQLConnector", "SQLiteConnector", "make_connector"]


class Connector(Protocol):
    """What the pool needs from a driver."""

    def open(self) -> SteadyDBConnection:
        """Open one connection (bounded by the connect timeout)."""

    def ping(self, raw: Any, timeout: float) -> None:
        """Raise if *raw* is dead; take at most *timeout* seconds."""

    def suspect(self, raw: Any) -> bool:
        """True if idle *raw* shows signs of death without a round trip (ping it then)."""

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        """:meth:`suspect` for *raw*, prepared once per connection (None: no such check).

        The pool keeps it with the connection and calls it on checkout; a
        truthy result means "ping before lending"."""

    def in_transaction(self, raw: Any) -> bool:
        """True if *raw* has a transaction open."""

    def discard(self, raw: Any) -> None:
        """Drop *raw* without talking to the server (after fork, or broken)."""

    def reusable(self, raw: Any) -> bool:
        """False if *raw* is closed or mid-result and must not be lent again."""

    def dirty(self, raw: Any) -> bool:
        """True if returning *raw* takes more than putting it back: a transaction
        is open, or it is not :meth:`reusable`. One call on the hot path."""


class MySQLConnector:
    """Opens PyMySQL connections for one pool."""

    def __init__(self, config: DatabaseConfig) -> None:
        import pymysql

        self.config = config
        self._pymysql = pymysql
        self._tls = _tls_context(config)
        self._poll = _original_poll()

    def _create(self) -> Any:
        cfg = self.config
        limit = cfg.connect_timeout
        conn = self._pymysql.connections.Connection(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=cfg.password,
            database=cfg.database,
            charset=cfg.charset,
            init_command=cfg.init_command,
            autocommit=cfg.autocommit,
            connect_timeout=limit,
            # The handshake reads with read_timeout: bound it by connect_timeout,
            # then switch to the configured query timeouts below.
            read_timeout=limit,
            write_timeout=limit,
            ssl_disabled=True,
            defer_connect=True,
        )
        if self._tls is not None:
            # One context per pool, reused: PyMySQL's "preferred" mode would
            # otherwise build a fresh one (~32 ms) for every connection.
            required, conn.ctx = self._tls
            conn.ssl, conn._ssl_required = True, required
        conn.connect()
        conn._read_timeout = cfg.read_timeout
        conn._write_timeout = cfg.write_timeout
        return conn

    def open(self) -> SteadyDBConnection:
        return SteadyDBConnection(
            self._create, None, list(self.config.session) or None, self._pymysql.err.MySQLError, 0, True
        )

    def ping(self, raw: Any, timeout: float) -> None:
        old = raw._read_timeout, raw._write_timeout
        raw._read_timeout = raw._write_timeout = timeout
        try:
            raw.ping(False)
        finally:
            raw._read_timeout, raw._write_timeout = old

    def suspect(self, raw: Any) -> bool:
        # An idle session's socket has nothing to read. EOF, a reset or bytes
        # (a KILLed session, a server restart) mean the server ended it. A
        # zero-timeout poll() sees all three without a round trip (1.1 us of CPU;
        # the MSG_PEEK recv below, go-sql-driver's connCheck, costs 2.6 us as it
        # raises BlockingIOError, and ~2x the wall time in bench/overhead.py).
        sock = raw._sock
        if sock is None:
            return True
        if self._poll is not None:
            try:
                poller = self._poll()
                poller.register(sock, select.POLLIN)  # POLLHUP and POLLERR are always reported
                return bool(poller.poll(0))
            except (OSError, ValueError):
                return True
        base = getattr(sock, "_sock", sock)  # gevent wraps the real socket
        try:
            old = _socket.socket.gettimeout(base)
            if old:  # with a timeout, recv() would first wait for data; None (blocking) and 0 do not
                _socket.socket.settimeout(base, 0.0)
        except (OSError, TypeError):
            return True
        try:
            _socket.socket.recv(base, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            if old:
                _socket.socket.settimeout(base, old)
        return True

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        # suspect()'s poll(), with the poller built and the socket registered
        # once per connection: 0.6 instead of 1.6 us per checkout. A closed
        # socket reports POLLNVAL, so it stays suspect.
        if self._poll is None or raw._sock is None:
            return functools.partial(self.suspect, raw)
        poller = self._poll()
        poller.register(raw._sock, select.POLLIN)
        return functools.partial(poller.poll, 0)

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.server_status & 1)  # SERVER_STATUS_IN_TRANS

    def discard(self, raw: Any) -> None:
        raw._force_close()  # closes the socket, sends no COM_QUIT

    def reusable(self, raw: Any) -> bool:
        result = raw._result
        return raw._sock is not None and not (result is not None and result.unbuffered_active)

    def dirty(self, raw: Any) -> bool:
        if raw.server_status & 1 or raw._sock is None:  # SERVER_STATUS_IN_TRANS, or closed
            return True
        result = raw._result
        return result is not None and bool(result.unbuffered_active)


class SQLiteConnector:
    """Opens sqlite3 connections (the embedded default, no server needed)."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config

    def _create(self) -> sqlite3.Connection:
        cfg = self.config
        conn = sqlite3.connect(
            str(cfg.database),
            timeout=cfg.connect_timeout,
            check_same_thread=False,  # the pool guarantees one user at a time
            isolation_level=None if cfg.autocommit else "",
        )
        if cfg.init_command:
            conn.execute(cfg.init_command)
        return conn

    def open(self) -> SteadyDBConnection:
        return SteadyDBConnection(self._create, None, list(self.config.session) or None, sqlite3.Error, 0, True)

    def ping(self, raw: Any, timeout: float) -> None:
        raw.execute("SELECT 1")

    def suspect(self, raw: Any) -> bool:
        return False

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        return None

    def in_transaction(self, raw: Any) -> bool:
        return bool(raw.in_transaction)

    def reusable(self, raw: Any) -> bool:
        return True

    def dirty(self, raw: Any) -> bool:
        return bool(raw.in_transaction)

    def discard(self, raw: Any) -> None:
        # sqlite3 has no server session to protect; closing the handle is safe.
        try:
            raw.close()
        except sqlite3.Error:
            pass


def make_connector(config: DatabaseConfig) -> Connector:
    """Return the connector for *config*'s adapter."""
    if config.adapter == "sqlite":
        return SQLiteConnector(config)
    return MySQLConnector(config)


def _original_poll() -> Optional[Callable[[], Any]]:
    """The OS ``select.poll`` (None where there is none), also after gevent patched it.

    A zero-timeout poll never blocks, so it needs no gevent cooperation.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            return monkey.get_original("select", "poll")  # type: ignore[no-any-return]
        except (AttributeError, ImportError):
            return None
    return getattr(select, "poll", None)


def _tls_context(cfg: DatabaseConfig) -> Optional[tuple[bool, ssl.SSLContext]]:
    """Build the pool's one TLS context: (required, context), or None for off."""
    if cfg.ssl_disabled:
        return None
    explicit = bool(cfg.ssl_ca or cfg.ssl_cert or cfg.ssl_key or cfg.ssl_verify)
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca) if cfg.ssl_ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    verify = cfg.ssl_verify if cfg.ssl_verify is not None else bool(cfg.ssl_ca)
    ctx.check_hostname = verify == "identity"
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if cfg.ssl_cert:
        ctx.load_cert_chain(cfg.ssl_cert, keyfile=cfg.ssl_key)
    return explicit, ctx
