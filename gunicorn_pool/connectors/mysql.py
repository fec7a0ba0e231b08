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
- A session the user changed is reset on return, and only then (see
  :class:`PooledMySQLConnection` and :meth:`MySQLConnector.finish`).
- ``read_timeout`` left unset is gunicorn's ``timeout`` in gthread and gevent
  workers (:meth:`MySQLConnector.read_timeout`).
- Several hosts (failover): each connect tries them in order (or shuffled,
  ``load_balance_hosts=random``), each bounded by ``connect_timeout``; with
  ``target_session_attrs`` ``read-write`` (or ``read-only``) a server whose
  ``@@read_only``/``@@innodb_read_only`` says otherwise is skipped. A host
  that failed is tried last until its own back-off (1 s doubling to 30 s)
  ends, so a dead first host costs one ``connect_timeout``, not one per
  connect (:class:`HostOrder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

import pymysql
from dbutils.steady_db import SteadyDBConnection
from pymysql.charset import charset_by_name
from pymysql.connections import MySQLResult
from pymysql.constants import CLIENT
from pymysql.protocol import EOFPacketWrapper

from .base import CLOSED, DROP, IDLE, RESET, REUSE, Connector, LeaseGuard, lease_error, socket_probe

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["HostOrder", "MySQLConnector", "PooledMySQLConnection", "ping"]

logger = logging.getLogger("gunicorn_pool")

_IN_TRANS = 0x0001  # SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = 0x0002  # SERVER_STATUS_AUTOCOMMIT
_STATE_CHANGED = 0x4000  # SERVER_SESSION_STATE_CHANGED (needs CLIENT.SESSION_TRACK)
_COM_QUERY = 0x03
_COM_RESET_CONNECTION = 0x1F
_LOCK_SCAN = 48  # bytes at the start of a statement searched for LOCK / GET_LOCK
_LOCK_WORD = re.compile(rb"(?i)\block\b|get_lock")  # run only where a cheap find saw "ock"
_Connection = pymysql.connections.Connection


class _PooledResult(MySQLResult):  # type: ignore[misc]
    """PyMySQL's result, keeping the server status of the EOF packet that ends a result set.

    PyMySQL reads it and drops it, so after a ``SELECT`` the connection's
    ``server_status`` was the previous statement's: a transaction a ``SELECT``
    opened (autocommit off) did not show, and a state-changed flag raised
    earlier seemed raised still.
    """

    def _check_packet_is_eof(self, packet: Any) -> bool:
        if not packet.is_eof_packet():
            return False
        wp = EOFPacketWrapper(packet)
        self.warning_count = wp.warning_count
        self.has_next = wp.has_next
        self.server_status = wp.server_status
        if self.unbuffered_active and self.connection is not None:  # an unbuffered result just ended
            self.connection.server_status = wp.server_status
            self.connection._gp_seen |= wp.server_status
        return True


class PooledMySQLConnection(LeaseGuard, pymysql.connections.Connection):  # type: ignore[misc]
    """A ``pymysql.Connection`` that knows its lease and what its user changed.

    - Every command passes :meth:`_execute_command`, where the lease guard
      refuses a use by anyone but the holder (see :mod:`.base`).
    - The server's status word is OR-ed into ``_gp_seen`` as each OK/EOF packet
      is read: PyMySQL keeps only the latest one, and the session-state-changed
      flag (``SET @x``, ``USE``, temporary tables, isolation level, prepared
      statements, autocommit) rides on the packet of the statement that changed
      it, not on later ones.
    - Named locks (``GET_LOCK``) and ``LOCK TABLES`` change no tracked state:
      a statement whose first 48 bytes hold the word ``lock`` or ``get_lock``
      (any case) marks the session for a reset instead. Only the first bytes:
      scanning whole statements cost ~20 instructions a byte on every query.
    """

    # Slots: read and written on every lease, at fixed offsets instead of in the instance dict.
    __slots__ = ("_gp_holder", "_gp_taken_at", "_gp_pool", "_gp_closed_by_user", "_gp_seen", "_gp_locks")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gp_holder: Optional[int] = None
        self._gp_taken_at = ""
        self._gp_pool = ""
        self._gp_closed_by_user = False
        self._gp_seen = 0
        self._gp_locks = False
        _Connection.__init__(self, *args, **kwargs)

    def _execute_command(self, command: int, sql: Any) -> Any:
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        if (
            command == _COM_QUERY
            and type(sql) is bytes
            and (sql.find(b"OCK", 0, _LOCK_SCAN) >= 0 or sql.find(b"ock", 0, _LOCK_SCAN) >= 0)
            and _LOCK_WORD.search(sql, 0, _LOCK_SCAN) is not None
        ):
            self._gp_locks = True
        return _Connection._execute_command(self, command, sql)

    def _read_ok_packet(self) -> Any:
        ok = _Connection._read_ok_packet(self)
        self._gp_seen |= self.server_status
        return ok

    def _send_autocommit_mode(self) -> None:
        # conn.autocommit(x): the state-changed flag this raises is autocommit's own, and
        # check_in() compares autocommit with the pool's anyway. Frameworks switch it off and
        # on around every transaction (Django's atomic()): that alone must not cost a reset.
        seen = self._gp_seen
        _Connection._send_autocommit_mode(self)
        self._gp_seen = seen | (self.server_status & ~_STATE_CHANGED)

    def _read_query_result(self, unbuffered: bool = False) -> Any:
        # PyMySQL's own, with a result class that keeps the status of the EOF packet.
        self._result = None
        result = _PooledResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        status = result.server_status
        if status is not None:
            self.server_status = status
            self._gp_seen |= status
        return result.affected_rows

    def close(self) -> None:
        if self._gp_user_close():
            _Connection.close(self)


class HostOrder:
    """The order in which one pool's connects try its hosts, with a back-off per failed host.

    Hosts that have not failed (or whose back-off ended) come first, in the
    configured order or shuffled (*shuffle*); hosts still backing off follow,
    the one whose back-off ends first first: they are the last resort, never
    skipped. A host's back-off starts at :attr:`FIRST` seconds and doubles on
    each failure up to :attr:`LAST`; one success clears it. Shared by the
    threads of a worker (a dict per pool; updates are single assignments).
    """

    FIRST = 1.0
    LAST = 30.0

    def __init__(self, hosts: tuple[tuple[str, int], ...], *, shuffle: bool = False) -> None:
        self.hosts = hosts
        self.shuffle = shuffle
        self._down: dict[tuple[str, int], tuple[float, float]] = {}  # host -> (retry at, back-off)

    def order(self) -> list[tuple[str, int]]:
        """The hosts to try now, in order."""
        hosts = list(self.hosts)
        if self.shuffle:
            random.shuffle(hosts)
        if not self._down:
            return hosts
        now = time.monotonic()
        retry_at = {h: entry[0] for h in hosts if (entry := self._down.get(h)) is not None and entry[0] > now}
        return [h for h in hosts if h not in retry_at] + sorted(retry_at, key=retry_at.__getitem__)

    def failed(self, host: tuple[str, int]) -> None:
        backoff = min(self.LAST, max(self.FIRST, self._down.get(host, (0.0, 0.0))[1] * 2))
        self._down[host] = (time.monotonic() + backoff, backoff)

    def worked(self, host: tuple[str, int]) -> None:
        if host in self._down:
            del self._down[host]


class MySQLConnector(Connector):
    """Opens PyMySQL connections for one pool."""

    adapter = "mysql"
    guarded = True

    #: Keyword arguments of every connection that the connector sets itself: *driver_args* may not.
    OWN_ARGS = frozenset({
        "host", "port", "user", "password", "passwd", "database", "db", "charset", "init_command", "autocommit",
        "connect_timeout", "read_timeout", "write_timeout", "ssl", "ssl_disabled", "ssl_ca", "ssl_cert", "ssl_key",
        "ssl_verify_cert", "ssl_verify_identity", "defer_connect",
    })  # fmt: skip

    def __init__(self, config: DatabaseConfig, *, driver_args: Optional[Mapping[str, Any]] = None) -> None:
        """*driver_args*: more PyMySQL keyword arguments for every connection, for a framework
        that needs them (Django's backend: ``conv``, ``client_flag=CLIENT.FOUND_ROWS``).
        ``client_flag`` is OR-ed with the connector's own; a key of :attr:`OWN_ARGS` is refused."""
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self.config = config
        extra = dict(driver_args or {})
        clash = sorted(set(extra) & self.OWN_ARGS)
        if clash:
            raise ValueError(f"pool {config.pool_name!r}: driver_args may not set {', '.join(clash)} (config keys)")
        self._client_flag = int(extra.pop("client_flag", 0))
        self._driver_args = extra
        self._tls: Optional[tuple[bool, ssl.SSLContext]] = None
        self._tls_for: Any = None  # (pid, ssl.SSLContext class) the context was built for
        self._owners: dict[int, SteadyDBConnection] = {}
        self._reset = config.reset_session
        # IN_TRANS and AUTOCOMMIT of a clean session: no transaction, the pool's autocommit.
        self._clean = _AUTOCOMMIT if config.autocommit else 0
        self._untracked_warned = False
        self.hosts = HostOrder(config.hosts or ((str(config.host), int(config.port or 3306)),),
                               shuffle=config.load_balance_hosts == "random")  # fmt: skip
        self._want_writable = {"read-write": True, "read-only": False}.get(config.target_session_attrs or "any")

    def _tls_context(self) -> Optional[tuple[bool, ssl.SSLContext]]:
        """The pool's one TLS context, built in this process after any gevent patching.

        A context built in the master (``--preload``) before gevent patched
        ``ssl`` cannot wrap a worker's gevent socket, so it is built again
        wherever the process or the ``ssl.SSLContext`` class changed.
        """
        current = (os.getpid(), ssl.SSLContext)
        if self._tls_for != current:
            self._tls, self._tls_for = _tls_context(self.config), current
        return self._tls

    def _create(self) -> Any:
        """One connection to the first host (in :class:`HostOrder`'s order) that accepts it and
        has the role ``target_session_attrs`` asks for; an error naming every host tried."""
        failures: list[tuple[str, BaseException]] = []
        order = self.hosts.order()
        for host, port in order:
            try:
                conn = self._create_on(host, port)
            except (pymysql.err.MySQLError, OSError) as exc:
                self.hosts.failed((host, port))
                if len(order) == 1:
                    raise
                failures.append((f"{host}:{port}", exc))
                continue
            self.hosts.worked((host, port))
            return conn
        tried = "; ".join(f"{where}: {self.describe_error(exc)}" for where, exc in failures)
        raise pymysql.err.OperationalError(2003, f"no host accepted the connection ({len(failures)} tried: {tried})")

    def _create_on(self, host: str, port: int) -> Any:
        cfg = self.config
        limit = cfg.connect_timeout
        conn = PooledMySQLConnection(
            host=host,
            port=port,
            user=cfg.user,
            # Bytes: PyMySQL sends a str password as latin-1, so a password such as
            # "pässwörd" (stored by the server as UTF-8) was refused and one such as
            # "Ωmega" raised a codec error naming the character.
            password=cfg.password.encode("utf-8"),
            database=cfg.database,
            charset=cfg.charset,
            init_command=cfg.init_command,
            autocommit=cfg.autocommit,
            connect_timeout=limit,
            # The handshake reads with read_timeout: bound it by connect_timeout,
            # then switch to the configured query timeouts below.
            read_timeout=limit,
            write_timeout=limit,
            client_flag=(CLIENT.SESSION_TRACK if self._reset else 0) | self._client_flag,
            ssl_disabled=True,
            defer_connect=True,
            **self._driver_args,
        )
        conn._gp_pool = cfg.pool_name
        tls = self._tls_context()
        if tls is not None:
            # One context per pool, reused: PyMySQL's "preferred" mode would
            # otherwise build a fresh one (~30 ms) for every connection.
            required, conn.ctx = tls
            conn.ssl, conn._ssl_required = True, required
        conn.connect()
        if self._want_writable is not None:
            self._check_role(conn)
        if self._reset:
            self._track_session(conn)
        conn._read_timeout = self.read_timeout()
        conn._write_timeout = cfg.write_timeout
        return conn

    def _check_role(self, conn: Any) -> None:
        """Close *conn* and raise _WrongRole unless the server's writability is the one
        ``target_session_attrs`` asks for (``@@read_only`` or ``@@innodb_read_only`` on: read-only)."""
        try:
            conn.query("SELECT @@global.read_only, @@global.innodb_read_only")
            read_only = any(str(v).upper() not in ("0", "OFF") for v in conn._result.rows[0])
        except BaseException:
            conn._force_close()
            raise
        if read_only == self._want_writable:
            conn.close()
            raise _WrongRole(
                f"the server is {'read-only' if read_only else 'writable'}"
                f" (target_session_attrs={self.config.target_session_attrs})"
            )

    def read_timeout(self) -> Optional[float]:
        """The configured ``read_timeout``; unset, :attr:`query_bound` (gunicorn's ``timeout`` in a
        gthread or gevent worker: gunicorn kills a hung sync worker at ``timeout`` itself, but not
        those, and a query that hangs mid-flight would otherwise hang its request until
        ``graceful_timeout``)."""
        if self.config.read_timeout is not None:
            return self.config.read_timeout
        return self.query_bound

    def _track_session(self, conn: Any) -> None:
        if conn.server_capabilities & CLIENT.SESSION_TRACK:
            conn.query("SET SESSION session_track_state_change = ON")
        elif not self._untracked_warned:
            self._untracked_warned = True
            logger.warning(
                "pool %s (%s): the server does not report session state changes; a session a user changed"
                " (variables, USE, temporary tables, isolation level) is not reset, only transactions,"
                " autocommit and LOCK statements are",
                self.pool_name, self.dsn,
            )  # fmt: skip

    def connect(self) -> Any:
        steady = SteadyDBConnection(
            self._create, maxusage=None, setsession=list(self.config.session) or None,
            failures=pymysql.err.MySQLError, ping=0, closeable=True,
        )  # fmt: skip
        raw = steady.dbapi_connection
        raw._gp_seen = 0  # what the pool's own statements (tracking, session) raised
        self._owners[id(raw)] = steady
        return raw

    def close(self, raw: Any) -> None:
        steady = self._owners.pop(id(raw), None)
        raw._gp_holder = None  # the pool's own use
        try:
            if steady is not None:
                steady.close()
            else:
                raw.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            raw._force_close()
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        raw._gp_holder = CLOSED
        raw._force_close()  # closes the socket, sends no COM_QUIT
        self._owners.pop(id(raw), None)  # its finaliser now finds the socket closed: nothing sent

    def ping(self, raw: Any, timeout: float) -> None:
        raw._gp_holder = None  # the pool's own use
        ping(raw, timeout)

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(raw._sock)

    def check_in(self, raw: Any) -> bool:
        if (
            (raw.server_status & (_IN_TRANS | _AUTOCOMMIT)) != self._clean
            or raw._sock is None
            or (self._reset and (raw._gp_seen & _STATE_CHANGED or raw._gp_locks))
        ):
            raw._gp_holder = None  # finish() runs the pool's own statements
            return False
        result = raw._result
        if result is not None:
            if result.unbuffered_active:
                raw._gp_holder = None
                return False
            raw._result = None  # a large result would stay alive until the next use
        raw._gp_holder = IDLE
        return True

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        result = raw._result
        if raw._sock is None or raw._gp_closed_by_user or (result is not None and result.unbuffered_active):
            return DROP  # closed by the user, or mid-result
        raw._result = None
        changed = self._reset and (failed or bool(raw._gp_seen & _STATE_CHANGED or raw._gp_locks))
        if raw.server_status & _IN_TRANS:
            raw.commit() if commit else raw.rollback()
        outcome = REUSE
        if changed:
            if not self._reset_session(raw):
                return DROP
            outcome = RESET
        elif (raw.server_status & _AUTOCOMMIT) != (self._clean & _AUTOCOMMIT):
            raw.autocommit(self.config.autocommit)  # switched by the user (reset_session off)
            outcome = RESET
        raw._gp_seen = 0
        raw._gp_locks = False
        raw._gp_holder = IDLE
        return outcome

    def _reset_session(self, raw: Any) -> bool:
        """Give *raw* back the session the pool configured: COM_RESET_CONNECTION (variables,
        temporary tables, locks, prepared statements, isolation level), then the character set,
        autocommit, session tracking, database and the pool's own statements again.
        False if the session cannot be restored this way (an old server, or another database
        selected on a pool that configured none): the pool then drops it."""
        cfg = self.config
        if not raw.server_capabilities & CLIENT.SESSION_TRACK:
            return False  # an old server: a new connection is the reset
        raw._execute_command(_COM_RESET_CONNECTION, b"")
        raw._read_ok_packet()
        raw.query(
            f"SET NAMES {cfg.charset}, autocommit = {1 if cfg.autocommit else 0}, session_track_state_change = ON"
        )
        raw.charset, raw.encoding, raw.collation = cfg.charset, charset_by_name(cfg.charset).encoding, None
        raw.autocommit_mode = cfg.autocommit
        if cfg.database:
            raw.select_db(cfg.database)
        else:  # the reset keeps the current database, and none can be un-selected: a new connection then
            raw.query("SELECT DATABASE()")
            if raw._result.rows[0][0] is not None:
                return False
        for statement in ((cfg.init_command,) if cfg.init_command else ()) + cfg.session:
            raw.query(statement)
        return True

    def warm(self, raw: Any, timeout: float) -> None:
        super().warm(raw, timeout)
        raw._gp_holder = IDLE

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``@@max_connections`` minus ``Threads_connected``, two statements bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        try:
            with bounded(raw, timeout), raw.cursor() as cur:
                cur.execute("SELECT @@max_connections")
                (limit,) = cur.fetchone()
                cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                row = cur.fetchone()
        finally:
            raw._result = None
            raw._gp_holder = IDLE
        return None if row is None else int(limit) - int(row[1])

    def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already (autocommit stays as it is: the
        transaction ends at COMMIT or ROLLBACK either way)."""
        if not raw.server_status & _IN_TRANS:
            raw.begin()


class _WrongRole(pymysql.err.OperationalError):  # type: ignore[misc]
    """A server that accepted the connection but is not writable (or read-only) as asked."""


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


@contextlib.contextmanager
def bounded(raw: Any, timeout: float) -> Iterator[None]:
    """Bound a PyMySQL connection's reads and writes by *timeout* inside the block."""
    old = raw._read_timeout, raw._write_timeout
    raw._read_timeout = raw._write_timeout = timeout
    try:
        yield
    finally:
        raw._read_timeout, raw._write_timeout = old


def ping(raw: Any, timeout: float) -> None:
    """A COM_PING on any PyMySQL connection, never reconnecting, its reads and writes bounded by
    *timeout* (also used by gunicorn_pool.sqlalchemy)."""
    with bounded(raw, timeout):
        raw.ping(False)
