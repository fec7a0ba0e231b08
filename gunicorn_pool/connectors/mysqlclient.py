"""MySQL and MariaDB through mysqlclient (``MySQLdb``), the C driver Django recommends.

``driver: mysqlclient`` (or ``mysql+mysqldb://``) in a MySQL pool's config.
The same guarantees as the PyMySQL connector (:mod:`.mysql`), whose rules it
shares (:func:`~.mysql.statement_verdict`, :class:`~.mysql.HostOrder`,
:func:`~.mysql.first_host`), read through a C library:

- The connect is bounded by ``connect_timeout`` (the TCP connect and the wait
  for the server's greeting), the queries by ``read_timeout`` and
  ``write_timeout`` (unset: :attr:`~.base.ConnectorBase.query_bound`, gunicorn's
  ``timeout`` in a gthread worker). mysqlclient takes whole seconds: each is
  rounded up. The library reads with one timeout for a connection's life, so
  the login exchange after the greeting is bounded by ``read_timeout``.
- The lease guard: a connection is a :class:`PooledMySQLdbConnection`, a
  subclass of ``MySQLdb.connections.Connection`` whose ``query()`` (the one
  chokepoint of every cursor's ``execute()``) and every other method that
  sends a command (``send_query``, ``commit``, ``rollback``, ``autocommit``,
  ``ping``, ``select_db``, ``change_user``, ``set_character_set``,
  ``set_server_option``, ``kill``, ``close``) refuse a use by anyone but the
  holder before anything is sent. Reads are not guarded (``next_result()``,
  which a cursor's ``execute()`` calls first and which reads nothing unless
  the last answer announced more result sets; rows of an unbuffered result):
  a stale reference fails at its next command, as on PyMySQL.
- Fork safety: a connection inherited through ``fork()`` is never closed in the
  child with a word to the server: its descriptor is pointed at ``/dev/null``
  first, so the COM_QUIT of the library's close goes nowhere (:meth:`discard`).
- The checkout probe is a zero-timeout ``poll()`` of its socket (the library's
  ``fileno()``); the checkout ping is bounded by ``check_timeout`` whatever the
  connection's read timeout (``DO 1`` sent, then a ``poll()`` for the answer).
- mysqlclient does not expose the server's status flags (in transaction,
  session state changed): what proves a session clean is read off every
  command that passes the chokepoint (:class:`PooledMySQLdbConnection`):

  * a session change: :func:`~.mysql.statement_verdict` of every statement, and
    ``select_db()``, ``change_user()``, ``set_character_set()`` and
    ``set_server_option()`` called by the user;
  * a transaction: none is open while autocommit is on (the status flag of the
    last answer, which mysqlclient does read) and no statement since the last
    clean point may have opened one (:func:`statement_flags`: ``BEGIN``,
    ``START``, ``XA``, ``... AND CHAIN``, a statement not led by a word, or one
    the verdict could not clear, such as a ``CALL`` or several statements);
    with autocommit off any statement may have opened one; only a plain
    ``COMMIT`` or ``ROLLBACK`` (statement or method) that succeeded, or
    ``autocommit(True)``, closes it;
  * unsure: a command that failed or was interrupted (the pool's own bounded
    ping included), until the next one succeeds;
  * an unbuffered result (an SSCursor's) taken during the lease: its rest is
    read at return.

  A clean lease returns with no round trip. Otherwise :meth:`MySQLdbConnector.finish`
  commits or rolls back what may be open, and a session that may have changed
  is reset: ``change_user()`` (COM_CHANGE_USER: mysqlclient has no
  ``reset_connection()``; it ends the transaction, XA included, drops
  temporary tables, locks, variables, prepared statements and HANDLERs, and
  logs in again with the default role), then the character set, autocommit and
  the pool's ``init_command`` and ``session`` statements in one multi-statement
  round trip (:func:`reset_session`).

It blocks while it waits for the server: a gevent worker refuses it at boot
(use PyMySQL there).
"""

from __future__ import annotations

import math
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import MySQLdb

if MySQLdb.__name__ != "MySQLdb":  # pragma: no cover - pymysql.install_as_MySQLdb() made MySQLdb PyMySQL
    raise ImportError("MySQLdb is PyMySQL here (pymysql.install_as_MySQLdb()): driver mysqlclient needs mysqlclient")
import MySQLdb.connections
from MySQLdb import _mysql
from MySQLdb.constants import CLIENT

from .._concurrency import gevent_patched, original_poll
from .base import CLOSED, DROP, IDLE, RESET, REUSE, Connector, LeaseGuard, lease_error, select_one, socket_probe
from .mysql import (
    _RESET,
    _VERDICTS,
    _VERDICTS_MAX,
    _VERDICTS_TEXT,
    _XA,
    READ_ONLY_SQL,
    HostOrder,
    first_host,
    merged_driver_args,
    statement_verdict,
    wrong_role,
)

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["MySQLdbConnector", "PooledMySQLdbConnection", "bounded_ping", "reset_session", "statement_flags"]

_C = _mysql.connection  # the C methods, called past the guard by the pool's own use
_Connection = MySQLdb.connections.Connection
if not hasattr(_C, "send_query"):  # pragma: no cover - mysqlclient before send_query/read_query_result
    raise ImportError("gunicorn_pool's mysqlclient driver needs mysqlclient 2.2 or newer")

# -- what a statement does to the session and the transaction ---------------------------------

#: Bits of :func:`statement_flags`: statement_verdict()'s (reset the session, XA) and these two.
_OPENS = 4  #: may leave a transaction open, also with autocommit on
_ENDS = 8  #: ends the transaction when it succeeds (a plain COMMIT or ROLLBACK)

_ENDER = re.compile(rb"(?i)\s*(?:commit|rollback)(?:\s+work)?(?:\s+and\s+no\s+chain)?(?:\s+(?:no\s+)?release)?\s*;?\s*")
_FIRST_WORD = re.compile(rb"\s*([A-Za-z]+)")
#: First words (lowered) of statements that open a transaction with autocommit on.
_OPENERS = frozenset({b"begin", b"start", b"xa"})
#: Flags of statements seen before, by their text (bounded like the verdicts' cache).
_FLAGS: dict[bytes, int] = {}


def statement_flags(sql: bytes, no_backslash_escapes: bool = False) -> int:
    """What statement *sql* may do, as a mask: :func:`~.mysql.statement_verdict`'s bits (``1``
    reset the session, ``2`` XA), ``4`` (may leave a transaction open with autocommit on:
    ``BEGIN``, ``START TRANSACTION``, ``COMMIT AND CHAIN``, a statement that does not start with
    a word, such as one led by a comment, and any statement the verdict could not clear: a
    ``CALL`` or a compound statement may start one) and ``8`` (a plain ``COMMIT`` or
    ``ROLLBACK``: ends the transaction when it succeeds). Kept by text like the verdicts."""
    verdict = _VERDICTS.get(sql)
    if verdict is None:
        verdict = statement_verdict(sql, no_backslash_escapes)
    first = _FIRST_WORD.match(sql)
    if _ENDER.fullmatch(sql) is not None:
        flags = verdict | _ENDS
    elif verdict or first is None:
        flags = verdict | _OPENS
    else:
        word = first.group(1).lower()
        chained = word in (b"commit", b"rollback") and b"chain" in sql.lower()
        flags = _OPENS if word in _OPENERS or chained else 0
    if len(sql) <= _VERDICTS_TEXT and not no_backslash_escapes:
        if len(_FLAGS) >= _VERDICTS_MAX:
            _FLAGS.clear()
        _FLAGS[sql] = flags
    return flags


_query = _C.query
_get_autocommit = _C.get_autocommit
_escape_string = _C.escape_string


class PooledMySQLdbConnection(LeaseGuard, MySQLdb.connections.Connection):  # type: ignore[misc]  # untyped
    """A mysqlclient connection that knows its lease and reads its session off every command.

    ``_gp_dirty`` ORs :func:`~.mysql.statement_verdict` of every statement sent (and marks the
    user's ``select_db()``, ``change_user()``, ``set_character_set()``, ``set_server_option()``);
    ``_gp_txn`` says a transaction may be open; ``_gp_unsure`` that the last command failed or
    was interrupted (see the module docstring). Each command checks the lease guard first."""

    _gp_dirty = 0
    _gp_txn = False
    _gp_unsure = False
    _gp_unbuffered: Any = None  #: the lease's last unbuffered result (an SSCursor's): its rest is read at return

    def _gp_guard(self) -> None:
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)

    def query(self, query: Any) -> None:
        """Send *query* (the cursor's ``execute()`` passes here) after the lease guard, noting
        what it may do to the session and the transaction (:func:`statement_flags`)."""
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        if type(query) is not bytes:
            query = query.encode(self.encoding) if isinstance(query, str) else bytes(query)
        flags = _FLAGS.get(query)
        if flags is None:
            flags = statement_flags(query, _escape_string(self, b"'") == b"''")
        if flags & 7:
            self._gp_dirty |= flags & 3
            if flags & _OPENS:
                self._gp_txn = True  # before sending: an interrupted statement may have opened one
        elif not flags and not _get_autocommit(self):
            self._gp_txn = True  # autocommit off: any statement may open one
        self._gp_unsure = True
        _query(self, query)
        self._gp_unsure = False
        if flags & _ENDS:
            self._gp_txn = False

    def send_query(self, query: Any) -> None:
        """``query()`` without reading the answer (read it with ``read_query_result()``)."""
        self._gp_guard()
        if type(query) is not bytes:
            query = query.encode(self.encoding) if isinstance(query, str) else bytes(query)
        self._gp_dirty |= statement_flags(query, _escape_string(self, b"'") == b"''") & 3
        self._gp_txn = True  # read_query_result() may fail: never sure
        self._gp_unsure = True
        _C.send_query(self, query)

    def read_query_result(self) -> None:
        self._gp_guard()
        _C.read_query_result(self)
        self._gp_unsure = False

    def use_result(self) -> Any:
        self._gp_guard()
        result = _C.use_result(self)
        self._gp_unbuffered = result  # its rows are read later: the connection is busy till they are
        return result

    def commit(self) -> None:
        self._gp_guard()
        self._gp_unsure = True
        _C.commit(self)
        self._gp_txn = self._gp_unsure = False

    def rollback(self) -> None:
        self._gp_guard()
        self._gp_unsure = True
        _C.rollback(self)
        self._gp_txn = self._gp_unsure = False

    def autocommit(self, on: Any) -> None:
        self._gp_guard()
        self._gp_unsure = True
        _Connection.autocommit(self, on)
        if on:
            self._gp_txn = False  # SET autocommit = 1 commits what was open
        self._gp_unsure = False

    def ping(self, *args: Any) -> Any:
        self._gp_guard()
        return _C.ping(self, *args)

    def select_db(self, db: Any) -> None:
        self._gp_guard()
        self._gp_dirty |= _RESET
        _C.select_db(self, db)

    def change_user(self, *args: Any, **kwargs: Any) -> None:
        self._gp_guard()
        self._gp_dirty |= _RESET
        _C.change_user(self, *args, **kwargs)

    def set_character_set(self, charset: str, collation: Optional[str] = None) -> None:
        self._gp_guard()
        self._gp_dirty |= _RESET
        _Connection.set_character_set(self, charset, collation)

    def set_server_option(self, option: int) -> Any:
        self._gp_guard()
        self._gp_dirty |= _RESET
        return _C.set_server_option(self, option)

    def kill(self, *args: Any) -> Any:
        self._gp_guard()
        return _C.kill(self, *args)

    def close(self) -> None:
        if self._gp_user_close():
            _C.close(self)


def _whole(seconds: Optional[float]) -> int:
    """Seconds as mysqlclient takes them: whole, rounded up; 0 (its "no timeout") for None."""
    return 0 if seconds is None else max(1, math.ceil(seconds))


def _tls_kwargs(cfg: DatabaseConfig) -> dict[str, Any]:
    """mysqlclient's ``ssl`` and ``ssl_mode`` for the config's TLS keys: ``ssl_disabled`` is
    DISABLED; a CA, certificate or key makes TLS required (VERIFY_CA with ``ssl_verify``,
    VERIFY_IDENTITY with ``identity``); nothing is the library's default (PREFERRED)."""
    if cfg.ssl_disabled:
        return {"ssl_mode": "DISABLED"}
    files = {"ca": cfg.ssl_ca, "cert": cfg.ssl_cert, "key": cfg.ssl_key}
    verify = cfg.ssl_verify if cfg.ssl_verify is not None else bool(cfg.ssl_ca)
    if not any(files.values()) and not verify:
        return {}
    mode = "VERIFY_IDENTITY" if verify == "identity" else "VERIFY_CA" if verify else "REQUIRED"
    return {"ssl": {k: v for k, v in files.items() if v}, "ssl_mode": mode}


class _WrongRole(MySQLdb.OperationalError):  # type: ignore[misc]
    """A server that accepted the connection but is not writable (or read-only) as asked."""


class MySQLdbConnector(Connector):
    """Opens mysqlclient connections for one pool (see the module docstring)."""

    adapter = "mysql"
    guarded = True

    #: Keyword arguments of every connection that the connector sets itself: *driver_args* may not.
    OWN_ARGS = frozenset({
        "host", "port", "user", "password", "passwd", "database", "db", "charset", "init_command", "autocommit",
        "connect_timeout", "read_timeout", "write_timeout", "ssl", "ssl_mode",
    })  # fmt: skip

    def __init__(self, config: DatabaseConfig, *, driver_args: Optional[Mapping[str, Any]] = None) -> None:
        """*driver_args*: more mysqlclient keyword arguments for every connection, for a framework
        that needs them (Django's backend: ``conv``, ``client_flag=CLIENT.FOUND_ROWS``).
        ``client_flag`` is OR-ed with the config's; a key of :attr:`OWN_ARGS`, or one the config
        sets (``cursorclass``, ``conv``, ``local_infile``), is refused."""
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self.config = config
        client_flag, args = merged_driver_args(config, driver_args, self.OWN_ARGS)
        self._driver_args = {**args, **({"client_flag": client_flag} if client_flag else {})}
        self._tls = _tls_kwargs(config)
        self._reset = config.reset_session
        self._autocommit = config.autocommit
        self.hosts = HostOrder(config.hosts or ((str(config.host), int(config.port or 3306)),),
                               shuffle=config.load_balance_hosts == "random")  # fmt: skip
        self._want_writable = {"read-write": True, "read-only": False}.get(config.target_session_attrs or "any")

    def read_timeout(self) -> Optional[float]:
        """The configured ``read_timeout``; unset, :attr:`query_bound` (see the PyMySQL
        connector's :meth:`~.mysql.MySQLConnector.read_timeout`)."""
        if self.config.read_timeout is not None:
            return self.config.read_timeout
        return self.query_bound

    def connect(self) -> Any:
        if gevent_patched():
            raise MySQLdb.OperationalError(
                2003, "mysqlclient blocks gevent's hub while it waits for the server: use driver pymysql under gevent"
            )
        return first_host(self.hosts, self._create_on, (MySQLdb.MySQLError, OSError), self.describe_error,
                          lambda text: MySQLdb.OperationalError(2003, text))  # fmt: skip

    def _create_on(self, host: str, port: int) -> Any:
        cfg = self.config
        kwargs: dict[str, Any] = {
            "host": host, "port": port, "user": cfg.user or "", "password": cfg.password,
            "charset": cfg.charset, "autocommit": cfg.autocommit, "connect_timeout": _whole(cfg.connect_timeout),
            **self._tls, **self._driver_args,
        }  # fmt: skip
        if cfg.database:
            kwargs["database"] = cfg.database
        if cfg.init_command:
            kwargs["init_command"] = cfg.init_command
        for key, seconds in (("read_timeout", self.read_timeout()), ("write_timeout", cfg.write_timeout)):
            if seconds is not None:
                kwargs[key] = _whole(seconds)
        conn = PooledMySQLdbConnection(**kwargs)
        conn._gp_pool = cfg.pool_name
        try:
            statements = [s.encode(conn.encoding) for s in cfg.session]
            if self._want_writable is not None:
                statements.append(READ_ONLY_SQL)
            rows = _run(conn, statements)
        except BaseException:
            self.close(conn)
            raise
        if self._want_writable is not None:
            read_only = any(str(v).upper() not in ("0", "OFF") for v in rows[-1][0])
            wrong = wrong_role(read_only, self._want_writable, cfg)
            if wrong:
                self.close(conn)
                raise _WrongRole(2003, wrong)
        conn._gp_dirty = 0
        conn._gp_txn = conn._gp_unsure = False
        return conn

    def close(self, raw: Any) -> None:
        raw._gp_holder = None  # the pool's own use
        try:
            _C.close(raw)
        except Exception:  # noqa: BLE001 - closed already
            pass
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        """Drop *raw* without a word to the server: its descriptor becomes ``/dev/null`` first (in
        this process only: a parent that forked us keeps its session), then the library closes
        it, its COM_QUIT written to nowhere."""
        raw._gp_holder = CLOSED
        try:
            fd = raw.fileno()
        except Exception:  # noqa: BLE001 - closed already
            return
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        try:
            _C.close(raw)
        except Exception:  # noqa: BLE001 - nothing to tell
            pass

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(raw.fileno())

    def ping(self, raw: Any, timeout: float) -> None:
        raw._gp_holder = None  # the pool's own use
        bounded_ping(raw, timeout)

    def warm(self, raw: Any, timeout: float) -> None:
        self.ping(raw, timeout)
        select_one(raw)
        raw._gp_dirty = 0
        raw._gp_txn = raw._gp_unsure = False
        raw._gp_holder = IDLE

    def is_clean(self, raw: Any) -> bool:
        """True if the lease of *raw* left nothing for :meth:`finish` to do (see the module
        docstring): :meth:`check_in`'s test, without ending the lease. No round trip."""
        return not (
            raw._gp_unsure
            or raw._gp_txn
            or not raw.open
            or raw._gp_unbuffered is not None
            or (self._reset and raw._gp_dirty)
            or bool(_get_autocommit(raw)) != self._autocommit
        )

    def check_in(self, raw: Any) -> bool:
        if not self.is_clean(raw):
            raw._gp_holder = None  # finish() runs the pool's own statements
            return False
        raw._gp_holder = IDLE
        return True

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """See :meth:`Connector.finish` and the module docstring. A transaction that may be open is
        committed (*commit*, and no command failed) or rolled back; a session that may have
        changed (or *failed*) is reset with :func:`reset_session`. The rest of an unbuffered
        result is read first. A closed connection: DROP."""
        raw._gp_holder = None
        if not raw.open or raw._gp_closed_by_user:
            return DROP
        unbuffered, raw._gp_unbuffered = raw._gp_unbuffered, None
        if unbuffered is not None:
            unbuffered.discard()  # the rows an SSCursor left unread (none once it was read to the end)
        _drain(raw)
        dirty = raw._gp_dirty
        if raw._gp_txn or raw._gp_unsure:
            if commit and raw._gp_txn and not raw._gp_unsure and not dirty & _XA:
                _C.commit(raw)
            elif not (self._reset and (failed or dirty)):  # the reset ends it anyway
                _C.rollback(raw)
        if self._reset and (failed or dirty):
            self._reset_session(raw)
            outcome = RESET
        else:
            outcome = REUSE
            if bool(_C.get_autocommit(raw)) != self._autocommit:
                _C.autocommit(raw, self._autocommit)  # switched by the user (reset_session off)
                outcome = RESET
        raw._gp_dirty = 0
        raw._gp_txn = raw._gp_unsure = False
        raw._gp_holder = IDLE
        return outcome

    def _reset_session(self, raw: Any) -> None:
        cfg = self.config
        statements = ((cfg.init_command,) if cfg.init_command else ()) + cfg.session
        reset_session(raw, user=cfg.user or "", password=cfg.password, database=cfg.database, charset=cfg.charset,
                      autocommit=cfg.autocommit, statements=statements)  # fmt: skip

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``@@max_connections`` minus ``Threads_connected``, bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        try:
            (limit,) = _bounded(raw, b"SELECT @@max_connections", timeout)[0]
            rows = _bounded(raw, b"SHOW GLOBAL STATUS LIKE 'Threads_connected'", timeout)
        finally:
            raw._gp_holder = IDLE
        return int(limit) - int(rows[0][1]) if rows else None

    def begin(self, raw: Any) -> None:
        """``BEGIN`` (through the chokepoint: it is noted as an open transaction)."""
        raw.query(b"BEGIN")


def _run(conn: Any, statements: list[bytes]) -> list[Any]:
    """Run the pool's own *statements* on *conn* (one round trip: a multi-statement query when
    the connection allows them), each one's rows (or None) in order; raises the first error."""
    if len(statements) < 2 or not conn.client_flag & CLIENT.MULTI_STATEMENTS:
        return [_run_one(conn, statement) for statement in statements]
    _C.query(conn, b";\n".join(statements))
    out = [_stored(conn)]
    while _C.next_result(conn) == 0:
        out.append(_stored(conn))
    return out


def _run_one(conn: Any, statement: bytes) -> Any:
    _C.query(conn, statement)
    return _stored(conn)


def _stored(conn: Any) -> Any:
    result = _C.store_result(conn)
    return None if result is None else result.fetch_row(0)


def _drain(conn: Any) -> None:
    """Read what is left of the last query's answer (result sets a CALL or a multi-statement
    query left unread), as mysqlclient's cursor does before its next query."""
    while _C.next_result(conn) == 0:
        _C.discard_result(conn)


def _poll_readable(conn: Any, timeout: float) -> bool:
    make_poller = original_poll()
    if make_poller is None:  # pragma: no cover - no poll() on this OS: the read timeout bounds it
        return True
    import select

    poller = make_poller()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _bounded(conn: Any, statement: bytes, timeout: float) -> Any:
    """*statement*'s rows (None without a result set), its answer awaited at most *timeout*
    seconds whatever the connection's read timeout; OperationalError 2013 after that (the
    connection is then mid-command: drop it)."""
    conn._gp_unsure = True  # until the answer is read: a connection that failed here is dropped
    _C.send_query(conn, statement)
    if not _poll_readable(conn, timeout):
        raise MySQLdb.OperationalError(2013, f"no answer from the server within {timeout:g}s")
    _C.read_query_result(conn)
    rows = _stored(conn)
    conn._gp_unsure = False
    return rows


def bounded_ping(conn: Any, timeout: float) -> None:
    """Raise if mysqlclient connection *conn* is dead; take at most *timeout* seconds (``DO 1``,
    its answer awaited with ``poll()``: the library's own ping waits its read timeout). Never
    reconnects."""
    _bounded(conn, b"DO 1", timeout)


def reset_session(conn: Any, *, user: str, password: str, database: Optional[str], charset: str, autocommit: bool,
                  statements: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Give mysqlclient connection *conn* a fresh session with these settings: ``change_user()``
    (COM_CHANGE_USER, which the server runs as a new login on the same connection: the
    transaction, XA included, temporary tables and sequences, locks, variables, prepared
    statements, HANDLERs, the role), then the character set, autocommit and *statements*
    (``init_command``, ``session``) in one round trip. Raises the driver's error if that fails
    (drop the connection then)."""
    _C.change_user(conn, user, password, database or None)
    if _C.character_set_name(conn) != charset:
        _Connection.set_character_set(conn, charset)  # switched by the user with set_character_set()
    settings = f"SET NAMES {charset}, autocommit = {1 if autocommit else 0}"
    _run(conn, [settings.encode("ascii"), *(s.encode(conn.encoding) for s in statements)])
