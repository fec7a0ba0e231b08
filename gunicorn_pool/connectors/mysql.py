"""MySQL and MariaDB through PyMySQL.

- The handshake is bounded by ``connect_timeout``: PyMySQL's own
  ``connect_timeout`` covers only the TCP connect, and without a read timeout a
  server that accepts and never answers would hang the worker for good.
- The TLS context is built once per pool (PyMySQL >= 1.2 builds one on every
  connect, ~30 ms).
- The checkout ping is bounded by ``check_timeout``; the checkout probe is a
  zero-timeout ``poll()`` of the socket, no round trip.
- A connection inherited through ``fork()`` is dropped without COM_QUIT
  (which would end the parent's session).
- Each physical connection is opened by a DBUtils ``SteadyDBConnection``,
  which runs the ``session`` statements on every new connection (closing it
  again if they fail). Callers get ``steady.dbapi_connection``, the driver's
  own object, so queries pay no proxy cost; the steady wrapper is kept until
  the connection closes, because its finaliser closes the connection.
- Transactions are read off PyMySQL's ``server_status`` flag, so returning a
  connection that opened none costs no round trip.
"""

from __future__ import annotations

import functools
import select
import ssl
from typing import TYPE_CHECKING, Any, Callable, Optional

from dbutils.steady_db import SteadyDBConnection

from .._concurrency import original_poll
from .base import DROP, REUSE, Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["MySQLConnector"]

_IN_TRANS = 0x0001  # SERVER_STATUS_IN_TRANS


class MySQLConnector(Connector):
    """Opens PyMySQL connections for one pool."""

    adapter = "mysql"

    def __init__(self, config: DatabaseConfig) -> None:
        import pymysql

        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self.config = config
        self._pymysql = pymysql
        self._tls = _tls_context(config)
        self._poll = original_poll()
        self._owners: dict[int, SteadyDBConnection] = {}

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
            # otherwise build a fresh one (~30 ms) for every connection.
            required, conn.ctx = self._tls
            conn.ssl, conn._ssl_required = True, required
        conn.connect()
        conn._read_timeout = cfg.read_timeout
        conn._write_timeout = cfg.write_timeout
        return conn

    def connect(self) -> Any:
        steady = SteadyDBConnection(
            self._create, maxusage=None, setsession=list(self.config.session) or None,
            failures=self._pymysql.err.MySQLError, ping=0, closeable=True,
        )  # fmt: skip
        raw = steady.dbapi_connection
        self._owners[id(raw)] = steady
        return raw

    def close(self, raw: Any) -> None:
        steady = self._owners.pop(id(raw), None)
        try:
            if steady is not None:
                steady.close()
            else:
                raw.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            raw._force_close()

    def discard(self, raw: Any) -> None:
        raw._force_close()  # closes the socket, sends no COM_QUIT
        self._owners.pop(id(raw), None)  # its finaliser now finds the socket closed: nothing sent

    def ping(self, raw: Any, timeout: float) -> None:
        old = raw._read_timeout, raw._write_timeout
        raw._read_timeout = raw._write_timeout = timeout
        try:
            raw.ping(False)
        finally:
            raw._read_timeout, raw._write_timeout = old

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        # An idle session's socket has nothing to read. EOF, a reset or bytes
        # (a KILLed session, a server restart) mean the server ended it. A
        # zero-timeout poll() sees all three without a round trip; the poller is
        # built and the socket registered once per connection. A closed socket
        # reports POLLNVAL, so it stays suspect.
        if raw._sock is None:
            return _always
        if self._poll is None:
            return None
        poller = self._poll()
        poller.register(raw._sock, select.POLLIN)  # POLLHUP and POLLERR are always reported
        return functools.partial(poller.poll, 0)

    def check_in(self, raw: Any) -> bool:
        if raw.server_status & _IN_TRANS or raw._sock is None:
            return False
        result = raw._result
        return result is None or not result.unbuffered_active

    def finish(self, raw: Any, *, commit: bool) -> str:
        if raw.server_status & _IN_TRANS:
            raw.commit() if commit else raw.rollback()
        result = raw._result
        if raw._sock is None or (result is not None and result.unbuffered_active):
            return DROP  # closed by the user, or mid-result
        return REUSE


def _always() -> bool:
    return True


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
