"""PostgreSQL through psycopg 3.

- The connect is bounded by ``connect_timeout`` as given, fractions included,
  for each host tried: handshake, TLS and authentication too. psycopg
  truncates it to whole seconds, at least 2 (and below 1 waits its default
  of 130 s), so the connector drives psycopg's connect generator itself,
  waiting with ``select.poll`` looked up on each call (gevent's once gevent
  patched ``select``).
- Every command passes :meth:`PooledPGConnection.wait`, psycopg's one
  chokepoint (cursor ``execute``/``executemany``/``stream``, ``commit``,
  ``rollback``, ``transaction()``, COPY, pipelines, server-side cursors,
  ``notifies()``): the lease guard refuses a use by anyone but the holder
  there, before the generator that would send anything has started.
- Returning a connection costs no round trip when nothing is open: the
  transaction status comes from libpq (``pgconn.transaction_status``), the
  rest from client-side flags.
- A session the user changed is reset on return with ``DISCARD ALL``, and
  only then: command tags and a scan of each statement's text tell
  (:class:`PooledPGCursor`). The scan is fail-safe: a call of any function
  but a builtin known to leave nothing in the session (the server's own
  names, read once per pool at its first connect) counts as a change
  (:mod:`.pgcalls`); each statement text is scanned once per pool.
- The checkout probe is a zero-timeout ``poll()`` of the socket; the ping is
  an empty query bounded by ``check_timeout``.
- A connection inherited through ``fork()`` is dropped without a word to the
  server: it is never finished in the child (psycopg's own ``PGconn``
  finaliser also finishes only in the process that connected), and the
  child's copy of the socket is pointed at ``/dev/null``.
- libpq builds TLS state per connection, in the process that connects: there
  is no context object to share across fork or gevent patching.
- psycopg picks its wait function when it is imported: imported before gevent
  patched ``select`` (``--preload``, gunicorn.conf.py), it would block the hub.
  Connections opened once ``select`` is patched wait with psycopg's
  ``wait_poll`` instead, and get a lock of the patched ``threading``.

See docs/postgresql.md for what is reset, what is not detected, multi-host
configs and PgBouncer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Iterator, Mapping, Optional

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq, waiting
from psycopg._cursor_base import BaseCursor
from psycopg._preparing import PrepareManager
from psycopg.adapt import AdaptersMap
from psycopg.conninfo import conninfo_attempts, make_conninfo
from psycopg.rows import tuple_row

from .._concurrency import original_poll
from .base import CLOSED, DROP, IDLE, RESET, REUSE, Connector, ConnectorBase, LeaseGuard, lease_error
from .pgcalls import (
    CACHED,
    FREE_SQL,
    GRAMMAR,
    LONG_BUDGET,
    NAMES_SQL,
    PLAIN_TAGS,
    PLAIN_TAGS_WITH_TEMP,
    VERDICTS_MAX,
    SessionRules,
    Verdicts,
    conninfo_params,
    drop_inherited_socket,
    extra_libpq,
    note,
    remember,
    scan,
    shutdown_socket,
)

if TYPE_CHECKING:
    from psycopg._queries import PostgresQuery
    from psycopg.abc import RV, Params, PQGen, PQGenConn, Query, WaitFunc
    from psycopg.pq.abc import PGconn, PGresult

    from ..config import DatabaseConfig

__all__ = [
    "PGRules", "PGSession", "PooledPGConnection", "PooledPGCursor", "PooledPGServerCursor", "PostgreSQLConnector",
    "discard_all", "drop_inherited", "fetch", "ping", "rollback",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

_TX_IDLE = pq.TransactionStatus.IDLE
_TX_INTRANS = pq.TransactionStatus.INTRANS
_TX_ACTIVE = pq.TransactionStatus.ACTIVE
_TX_UNKNOWN = pq.TransactionStatus.UNKNOWN
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_CONN_OK = pq.ConnStatus.OK
_WAIT_R = waiting.Wait.R
_WAIT_W = waiting.Wait.W
_WAIT_INTERVAL = 0.1  # psycopg's: how often a blocking wait wakes up to notice signals
_PREPARED_MAX = PrepareManager.prepared_max  # psycopg's default

#: Command tags of statements that leave nothing behind in the session (:data:`.pgcalls.PLAIN_TAGS`).
_PLAIN = tuple(tag.encode() for tag in PLAIN_TAGS)
_PLAIN_WITH_TEMP = tuple(tag.encode() for tag in PLAIN_TAGS_WITH_TEMP)
_GRAMMAR = GRAMMAR
_NAMES_SQL = NAMES_SQL.encode()
# The pool's verdict cache and its bounds are :mod:`.pgcalls`' (shared with the psycopg2 connector).
_Verdicts, _CACHED, _VERDICTS_MAX, _LONG_BUDGET = Verdicts, CACHED, VERDICTS_MAX, LONG_BUDGET


def _classify(text: str, harmless: AbstractSet[str] = frozenset(), grammar: AbstractSet[str] = _GRAMMAR) -> int:
    """What a statement's text says (:func:`.pgcalls.scan`): 1 (it calls a function not in
    *harmless*, the builtins that leave nothing in the session: any other function may change
    the session from inside a SELECT), 2 (it names a temporary object: its CREATE or SELECT tag
    counts, for CREATE TABLE AS and SELECT INTO), 3 (it calls ``setseed()``: no reset undoes
    it, the connection is closed at return), or 0."""
    return scan(text, harmless, grammar)


def _scan(conn: PooledPGConnection, query: Query, pgq: PostgresQuery) -> None:
    """Note on *conn* what statement *query* (converted: *pgq*) does to the session (see _classify).

    The verdict is looked up first in the pool's cache (``conn._gp_verdicts``),
    by the ``str`` statement, or else by the bytes sent (``sql.Composed``,
    templates, bytes), and computed from the whole text when it is not there.
    psycopg sends a statement's text unchanged (the values travel apart), so
    an application's statements are scanned once each (see :func:`.pgcalls.remember`).
    """
    verdicts = conn._gp_verdicts
    key: Any = query if query.__class__ is str else pgq.query
    verdict = verdicts.get(key)
    if verdict is None:
        text = key if key.__class__ is str else bytes(key).decode("latin-1")
        verdict = remember(verdicts, key, _classify(text, verdicts.harmless, verdicts.grammar))
    if verdict:
        note(conn, verdict)


def _scanning(convert: Callable[..., Any], check: Callable[..., Any]) -> tuple[Any, Any]:
    """The two methods of the statement scan (see :class:`_ScansStatements`) over a cursor class's
    own query conversion and result check, called directly (no ``super()``: every statement passes
    here)."""

    def _convert_query(self: Any, query: Query, params: Optional[Params] = None) -> PostgresQuery:
        pgq = convert(self, query, params)
        # _scan(), its common case inline: a str statement seen before that changes nothing.
        conn: PooledPGConnection = self._conn  # always a pooled connection
        if query.__class__ is not str or conn._gp_verdicts.get(query) != 0:
            _scan(conn, query, pgq)
        return pgq  # type: ignore[no-any-return]

    def _check_results(self: Any, results: list[PGresult]) -> None:
        conn: PooledPGConnection = self._conn
        plain = _PLAIN_WITH_TEMP if conn._gp_maybe else _PLAIN
        for result in results:
            tag = result.command_status
            if tag and not tag.startswith(plain):
                conn._gp_server = True
        check(self, results)

    return _convert_query, _check_results


def tracked_cursor(base: Any) -> Any:
    """*base* (``psycopg.ClientCursor`` or a subclass: Django's cursors) with the statement scan
    mixed in over its own query conversion (a client-side binding cursor merges the values there):
    the cursor class of a pooled connection whose framework needs its own (see
    :class:`PostgreSQLConnector`'s *cursor_base*)."""
    convert, check = _scanning(base._convert_query, base._check_results)
    doc = f"{base.__name__} of a pooled connection: notes the statements that change the session (_ScansStatements)."
    namespace = {"_convert_query": convert, "_check_results": check, "__module__": __name__, "__doc__": doc}
    return type(f"Pooled{base.__name__}", (base,), namespace)


class _ScansStatements:
    """The statement scan of a pooled connection's cursors, sync or asyncio (psycopg's
    ``Cursor`` and ``AsyncCursor`` share ``BaseCursor``'s query conversion and result check).

    It reads the command tag of every result (``SET``, ``LISTEN``, ``PREPARE``...) and
    scans each statement's text for calls of functions other than harmless builtins and
    for temporary objects (see :func:`_scan`) before it is sent; the connection is then
    reset with ``DISCARD ALL`` when it is returned.
    """

    _conn: Any
    _convert_query, _check_results = _scanning(BaseCursor._convert_query, BaseCursor._check_results)


class _ScansServerStatements:
    """The scan of a pooled connection's server-side cursors: a cursor ``WITH HOLD`` outlives
    its transaction, so it marks the session for a reset."""

    _conn: Any
    _withhold: bool

    def _convert_query(self, query: Query, params: Optional[Params] = None) -> PostgresQuery:
        pgq = BaseCursor._convert_query(self, query, params)  # type: ignore[arg-type]
        conn: PooledPGConnection = self._conn
        if self._withhold:
            conn._gp_server = True
        _scan(conn, query, pgq)
        return pgq


class PooledPGCursor(_ScansStatements, psycopg.Cursor[Any]):
    """The cursor of a pooled connection: notes the statements that change the session (see
    :class:`_ScansStatements`)."""


class PooledPGServerCursor(_ScansServerStatements, psycopg.ServerCursor[Any]):
    """The server-side cursor of a pooled connection (see :class:`_ScansServerStatements`)."""


class PGSession(LeaseGuard):
    """What a pooled psycopg connection, sync or asyncio, knows of its lease and of what its user
    changed: mixed in before psycopg's ``Connection`` or ``AsyncConnection``.

    - ``_gp_server``: a statement changed the server-side session (set by the cursors);
      ``_gp_client``: the user changed a setting of this object (autocommit, isolation
      level, read-only, deferrable, prepare threshold, notice or notify handlers).
    - ``cancel()`` may come from any thread or task during a lease (that is what it is
      for), never while the connection is idle in the pool or closed.
    """

    pgconn: Any
    _prepared: PrepareManager
    _gp_pid = 0  # the process that connected
    _gp_server = False
    _gp_maybe = False  # a statement named a temporary object
    _gp_close = False  # a statement changed what no reset undoes: close it at return
    _gp_client = False
    # The scan of statements (_scan): the pool's verdicts, and the builtins and grammar words they
    # are judged by. A connection opened by no pool knows no builtin: every call of a function counts.
    _gp_verdicts = _Verdicts()

    def _check_connection_ok(self) -> None:
        if self.pgconn.status == _CONN_OK:  # psycopg's own fast path, unchanged
            return
        if self._gp_holder == CLOSED:  # closed by the pool: a reclaimed lease, not just a closed connection
            raise lease_error(self._gp_pool, CLOSED, self._gp_taken_at)
        super()._check_connection_ok()  # type: ignore[misc]

    def cancel(self) -> None:
        self._gp_refuse_idle()
        super().cancel()  # type: ignore[misc]

    def _gp_refuse_idle(self) -> None:
        holder = self._gp_holder
        if holder == IDLE or holder == CLOSED:
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)

    # Settings of this object the next user must not inherit (no round trip in either world).

    @property
    def prepare_threshold(self) -> Optional[int]:
        return self._prepared.prepare_threshold

    @prepare_threshold.setter
    def prepare_threshold(self, value: Optional[int]) -> None:
        self._prepared.prepare_threshold = value
        self._gp_client = True

    @property
    def prepared_max(self) -> Optional[int]:
        value = self._prepared.prepared_max
        return None if value == sys.maxsize else value

    @prepared_max.setter
    def prepared_max(self, value: Optional[int]) -> None:
        self._prepared.prepared_max = sys.maxsize if value is None else value
        self._gp_client = True

    def add_notice_handler(self, callback: Callable[[pg_errors.Diagnostic], None]) -> None:
        super().add_notice_handler(callback)  # type: ignore[misc]
        self._gp_client = True

    def add_notify_handler(self, callback: Callable[[psycopg.Notify], None]) -> None:
        super().add_notify_handler(callback)  # type: ignore[misc]
        self._gp_client = True


class PooledPGConnection(PGSession, psycopg.Connection[Any]):
    """A ``psycopg.Connection`` that knows its lease and what its user changed (:class:`PGSession`).

    - :meth:`wait` runs every command generator psycopg makes: the lease guard
      refuses a use by anyone but the holder there (see :mod:`.base`).
    - ``close()`` by the holder closes it at once; the pool drops it at return.
    """

    _gp_waitfn: Optional[WaitFunc] = None  # set when psycopg's own wait would block gevent's hub

    def wait(self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: Optional[float] = None) -> RV:
        """psycopg's chokepoint: every operation's generator runs here (guarded)."""
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        waitfn = self._gp_waitfn
        if waitfn is None:
            return psycopg.Connection.wait(self, gen, interval, timeout)
        return waitfn(gen, self.pgconn.socket, interval, timeout)

    def close(self) -> None:
        # Nothing more when the pool closed or dropped it (one inherited through fork is never
        # finished here), or for a request_connection() connection (see LeaseGuard).
        if self._gp_user_close():
            psycopg.Connection.close(self)

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[psycopg.Pipeline]:
        # psycopg sets self._pipeline before its first wait(), outside the lock held meanwhile:
        # a foreign pipeline() would switch the holder's statements to pipeline mode for a moment.
        self._gp_check()
        with psycopg.Connection.pipeline(self) as pipeline:
            yield pipeline

    def cancel_safe(self, *, timeout: float = 30.0) -> None:
        self._gp_refuse_idle()
        psycopg.Connection.cancel_safe(self, timeout=timeout)

    # Settings of this object the next user must not inherit.

    def set_autocommit(self, value: bool) -> None:
        changed = bool(value) != self._autocommit
        psycopg.Connection.set_autocommit(self, value)
        if changed:  # Django sets it on every connect: the same value changes nothing
            self._gp_client = True

    def set_isolation_level(self, value: Optional[psycopg.IsolationLevel]) -> None:
        psycopg.Connection.set_isolation_level(self, value)
        self._gp_client = True

    def set_read_only(self, value: Optional[bool]) -> None:
        psycopg.Connection.set_read_only(self, value)
        self._gp_client = True

    def set_deferrable(self, value: Optional[bool]) -> None:
        psycopg.Connection.set_deferrable(self, value)
        self._gp_client = True


class PGRules(SessionRules, ConnectorBase):
    """PostgreSQL's rules, written once for the synchronous connector and the asyncio one
    (:mod:`.postgresql_async`): the config read into libpq keywords and the pool's session
    settings, the probe, the lease, what a return finds without a round trip (``check_in``),
    when a connection is dropped, reset or given its settings back. A subclass adds the round
    trips (connect, ping, ROLLBACK, ``DISCARD ALL``), blocking or awaited.

    *cursor* and *server_cursor* are the connection's cursor classes when the pool resets
    sessions (they scan statements), *plain_cursor* and *plain_server_cursor* when it does not.
    """

    adapter = "postgresql"

    def __init__(self, config: DatabaseConfig, *, cursor: type[Any], server_cursor: type[Any],
                 plain_cursor: type[Any], plain_server_cursor: type[Any],
                 libpq: Optional[Mapping[str, str]] = None, adapters: Any = None) -> None:  # fmt: skip
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self._take_rules(config)  # reset flags, session statements, the bound of our own, the verdicts
        self._params = {**conninfo_params(config), **extra_libpq(config, libpq)}
        self._poll = original_poll()
        self._adapters = adapters
        self._cursor: type[Any] = cursor if self._reset_server else plain_cursor
        self._server_cursor: type[Any] = server_cursor if self._reset_server else plain_server_cursor
        # PgBouncer in transaction mode: a statement prepared on one server connection is unknown
        # to the next one.
        self._prepare_threshold = None if config.pgbouncer else config.prepare_threshold
        self._setup = self._setup_sql.encode("utf-8")
        if not config.reset_session:
            self.check_in = self._check_in_transaction  # type: ignore[method-assign]

    def _configure(self, conn: Any) -> None:
        """A new connection's client-side settings (no round trip): pool name, process, cursors,
        prepare threshold; autocommit is the subclass's (psycopg's async setter is a coroutine)."""
        conn._gp_pool = self.config.pool_name
        conn._gp_pid = os.getpid()
        if self._adapters is not None:
            conn._adapters = AdaptersMap(self._adapters)  # what psycopg.connect(context=...) does
        conn.cursor_factory = self._cursor
        conn.server_cursor_factory = self._server_cursor
        conn.prepare_threshold = self._prepare_threshold

    def _names_from(self, result: PGresult) -> None:
        """Keep the server's builtin function names and keywords (the result of _NAMES_SQL)."""
        builtins, keywords = (bytes(result.get_value(0, i) or b"").decode() for i in (0, 1))
        self._learn_names(builtins, keywords)

    def _configured(self, conn: Any) -> None:
        """After the session setup: the pool's verdicts, and nothing changed yet."""
        if self._reset_server:
            conn._gp_verdicts = self._verdicts
        conn._gp_server = conn._gp_maybe = conn._gp_client = False

    # -- health ---------------------------------------------------------------------------

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        # An idle session's socket has nothing to read. A terminated backend (FATAL, then EOF),
        # a server restart or a reset show up in a zero-timeout poll() without a round trip;
        # the poller is built and the socket registered once per connection.
        if self._poll is None:
            return None
        poller = self._poll()
        poller.register(raw.pgconn.socket, select.POLLIN)  # POLLHUP and POLLERR are always reported
        return functools.partial(poller.poll, 0)

    # -- leases ------------------------------------------------------------------------------

    def lend(self, raw: Any, holder: Optional[int], taken_at: str = "") -> None:
        raw._gp_holder = holder
        raw._gp_taken_at = taken_at
        raw._gp_closed_by_user = False

    @staticmethod
    def _transaction_clean(raw: Any) -> bool:
        """No transaction, query, COPY or pipeline left open, and the pool's own client settings:
        all a return needs with ``reset_session`` off. No round trip."""
        return bool(raw.pgconn.transaction_status == _TX_IDLE and not raw._gp_client and raw._pipeline is None)

    def is_clean(self, raw: Any) -> bool:
        """True if the lease of *raw* left nothing for :meth:`finish` to do: :meth:`check_in`'s
        test (with ``reset_session`` off, :meth:`_transaction_clean`), without ending the lease.
        No round trip."""
        return self._transaction_clean(raw) and (
            not self.config.reset_session
            or not (
                raw._gp_server
                or raw.cursor_factory is not self._cursor
                or raw.row_factory is not tuple_row
                or raw.server_cursor_factory is not self._server_cursor
            )
        )

    def check_in(self, raw: Any) -> bool:
        # is_clean() written out: one call less on the hot path of every return
        if (
            raw.pgconn.transaction_status != _TX_IDLE  # a transaction, a query or COPY running, or closed
            or raw._gp_server
            or raw._gp_client
            or raw.cursor_factory is not self._cursor
            or raw.row_factory is not tuple_row
            or raw.server_cursor_factory is not self._server_cursor
            or raw._pipeline is not None
        ):
            raw._gp_holder = None  # finish() runs the pool's own statements
            return False
        raw._gp_maybe = False
        raw._gp_holder = IDLE
        return True

    def _check_in_transaction(self, raw: Any) -> bool:
        """check_in() with ``reset_session`` off: only transactions and the pool's own settings."""
        clean = self._transaction_clean(raw)
        raw._gp_holder = IDLE if clean else None  # None: finish() runs the pool's own statements
        return clean

    @staticmethod
    def _unusable(raw: Any) -> bool:
        """finish()'s first test: True if *raw* must be dropped whatever else (closed by its
        user, mid-protocol, in a transaction block or pipeline it cannot leave)."""
        status = raw.pgconn.transaction_status
        return bool(
            raw._gp_closed_by_user
            or status == _TX_ACTIVE  # mid-query, mid-COPY or mid-stream: as psycopg_pool, never reused
            or status == _TX_UNKNOWN  # closed or broken
            or raw._pipeline is not None
            or raw._num_transactions  # a transaction() block still open
            or raw._tpc is not None  # a two-phase transaction
        )

    def _wants_reset(self, raw: Any, failed: bool) -> bool:
        """After the transaction is settled: does the session need ``DISCARD ALL``? (a cursor
        factory of the user's own ran statements the pool did not look at; a failed with-block
        may have skipped the user's own clean-up)."""
        return self._reset_server and (failed or raw._gp_server or raw.cursor_factory is not self._cursor)

    def _reset_failed(self, exc: Exception) -> str:
        logger.warning("pool %s (%s): session reset failed, dropping the connection: %s",
                       self.pool_name, self.dsn, self.describe_error(exc))  # fmt: skip
        return DROP

    @staticmethod
    def _discarded(raw: Any) -> None:
        """After ``DISCARD ALL``: what the connection object still remembers of the session."""
        prepared = PrepareManager()
        prepared.prepare_threshold = raw._prepared.prepare_threshold
        prepared.prepared_max = raw._prepared.prepared_max
        raw._prepared = prepared  # the server forgot every prepared statement
        backlog = raw._notifies_backlog
        if backlog:
            backlog.clear()  # notifications of channels the next user never listened to

    def _restore_settings(self, raw: Any, assign: Callable[[Any, str, Any], None] = setattr) -> bool:
        """Give the connection object back the pool's settings (no round trip: psycopg applies
        them to the next transaction it starts), each through *assign(raw, name, value)*. True
        if anything was restored."""
        if not (
            raw._gp_client
            or raw.cursor_factory is not self._cursor
            or raw.row_factory is not tuple_row
            or raw.server_cursor_factory is not self._server_cursor
        ):
            return False
        changed = False
        wanted: list[tuple[str, Any]] = [("autocommit", self.config.autocommit),
                                         ("prepare_threshold", self._prepare_threshold)]  # fmt: skip
        if self._reset_client:
            wanted += [("isolation_level", None), ("read_only", None), ("deferrable", None),
                       ("prepared_max", _PREPARED_MAX)]  # fmt: skip
        for name, value in wanted:
            if getattr(raw, name) != value:
                assign(raw, name, value)
                changed = True
        if self._reset_client:
            for name, value in (("row_factory", tuple_row), ("cursor_factory", self._cursor),
                                ("server_cursor_factory", self._server_cursor)):  # fmt: skip
                if getattr(raw, name) is not value:
                    setattr(raw, name, value)
                    changed = True
            if raw._notice_handlers or raw._notify_handlers:
                raw._notice_handlers.clear()
                raw._notify_handlers.clear()
                changed = True
        return changed

    @staticmethod
    def _settled(raw: Any) -> None:
        """The return is done: nothing changed any more, and the guard reads IDLE."""
        raw._gp_server = raw._gp_maybe = raw._gp_client = False
        raw._gp_holder = IDLE


class PostgreSQLConnector(PGRules, Connector):
    """Opens psycopg connections for one pool (see the module docstring and :class:`PGRules`)."""

    def __init__(self, config: DatabaseConfig, *, libpq: Optional[Mapping[str, str]] = None,
                 cursor_base: Any = None, adapters: Any = None) -> None:  # fmt: skip
        """For a framework with needs of its own (Django's backend): *libpq*, more libpq keywords
        (``client_encoding``); *cursor_base*, the cursor class of every connection (its statements
        scanned when the pool resets sessions: :func:`tracked_cursor`); *adapters*, the adapters
        template of every connection (psycopg's ``context``)."""
        base = cursor_base or psycopg.Cursor
        super().__init__(config, cursor=PooledPGCursor if base is psycopg.Cursor else tracked_cursor(base),
                         server_cursor=PooledPGServerCursor, plain_cursor=base,
                         plain_server_cursor=psycopg.ServerCursor, libpq=libpq, adapters=adapters)  # fmt: skip

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> PooledPGConnection:
        """Open one connection, each host tried bounded by ``connect_timeout``, with the
        session the config asks for (autocommit, prepare threshold, init_command, session)."""
        failures: list[tuple[str, psycopg.OperationalError]] = []
        for attempt in conninfo_attempts(self._params):  # resolves host names (cooperative under gevent)
            attempt.pop("load_balance_hosts", None)  # done (shuffled); a libpq before 16 would refuse it
            host = _attempt_host(attempt)
            try:
                pgconn = _wait_conn(generators.connect(make_conninfo("", **attempt)), self.config.connect_timeout,
                                    host)  # fmt: skip
                break
            except psycopg.OperationalError as exc:
                failures.append((host, exc))
        else:
            raise _no_host(failures)
        conn = PooledPGConnection(pgconn)
        try:
            self._set_up(conn)
        except BaseException:
            psycopg.Connection.close(conn)
            raise
        return conn

    def _set_up(self, conn: PooledPGConnection) -> None:
        self._configure(conn)
        conn.lock = threading.Lock()  # the current threading's: gevent's once patched
        conn._gp_waitfn = _cooperative_wait()
        conn.autocommit = self.config.autocommit  # no round trip: psycopg sends BEGIN itself when off
        if self._setup:
            _run(conn, self._setup, self._own_timeout, "init_command/session")
        if self._reset_server and not self._names_read:
            self._read_names(conn)
        self._configured(conn)

    def _read_names(self, conn: PooledPGConnection) -> None:
        """Read the server's builtin function names and keywords (one query, once per pool)."""
        self._names_from(_run(conn, _NAMES_SQL, self._own_timeout, "builtin function names")[-1])

    def close(self, raw: Any) -> None:
        if raw._gp_pid != os.getpid():
            self.discard(raw)
            return
        raw._gp_holder = None  # the pool's own use
        try:
            raw.close()  # Terminate, then the socket is closed
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            pass
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        raw._gp_holder = CLOSED
        if raw._gp_pid != os.getpid():
            drop_inherited(raw)
            return
        lock = raw.lock
        if lock.acquire(False):
            try:
                psycopg.Connection.close(raw)  # in the owning process the session can just end
            except Exception:  # noqa: BLE001 - never raises
                pass
            finally:
                lock.release()
        else:
            # Held: by another thread inside an operation (a reclaimed leak still running), or by
            # a suspended stream() generator. Finishing would free libpq's connection under it:
            # shut the socket down instead (the server ends the session at EOF, the operation
            # fails); psycopg's finaliser finishes the object once its user lets go of it.
            _shutdown(raw)

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        """An empty query (EmptyQueryResponse: no parse, no plan), bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        ping(raw, timeout)

    def warm(self, raw: Any, timeout: float) -> None:
        """A ping, then ``SELECT 1`` through a cursor (psycopg's query and result code), both
        bounded by *timeout*; the guard is left IDLE."""
        self.ping(raw, timeout)
        fetch(raw, "SELECT 1", timeout)
        raw._gp_server = raw._gp_maybe = False
        raw._gp_holder = IDLE

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``max_connections`` minus the reserved slots and the client backends, in one query
        bounded by *timeout* (a transaction it opened, autocommit off, is rolled back)."""
        raw._gp_holder = None  # the pool's own use
        try:
            rows = fetch(raw, _FREE_SQL, timeout)
            if raw.pgconn.transaction_status != _TX_IDLE:
                with raw.lock:
                    _wait(raw, raw._rollback_gen(), timeout, "ROLLBACK")
        finally:
            raw._gp_server = raw._gp_maybe = False
            raw._gp_holder = IDLE
        return int(rows[0][0])

    # -- leases ------------------------------------------------------------------------------

    def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already (psycopg opens one by itself before the
        first statement when autocommit is off)."""
        if raw.autocommit and raw.pgconn.transaction_status == _TX_IDLE:
            raw.execute("BEGIN")

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        if self._unusable(raw):
            return DROP
        status = raw.pgconn.transaction_status
        if status == _TX_INTRANS and commit:
            raw.commit()  # the user's commit: unbounded, as any statement of theirs
        elif status != _TX_IDLE:
            rollback(raw, self._own_timeout)
        if raw._gp_close:
            return DROP  # settled above: what it changed outlives DISCARD ALL
        outcome = REUSE
        if self._wants_reset(raw, failed):
            try:
                self._reset_session(raw)
            except Exception as exc:  # noqa: BLE001 - a session not reset is never lent again
                return self._reset_failed(exc)
            outcome = RESET
        if self._restore_settings(raw):
            outcome = RESET
        self._settled(raw)
        return outcome

    def _reset_session(self, raw: PooledPGConnection) -> None:
        """``DISCARD ALL`` (one round trip), then the pool's own statements again.

        DISCARD ALL closes cursors, resets the session authorization and every
        setting to the session's defaults (startup ``options`` included), drops
        prepared statements (psycopg's own too: its cache is emptied), stops
        LISTENing, releases session-level advisory locks and drops temporary
        objects, cached plans and sequence state.
        """
        discard_all(raw, self._own_timeout)
        if self._setup:
            _run(raw, self._setup, self._own_timeout, "init_command/session")


_FREE_SQL = FREE_SQL

# -- helpers -------------------------------------------------------------------------------------


def _wait_conn(gen: PQGenConn[PGconn], timeout: float, where: str) -> PGconn:
    """Drive psycopg's connect generator to the end within *timeout* seconds (fractions honoured).

    ``select.poll`` is looked up on every call, so a connect waits cooperatively
    once gevent patched ``select``. On failure the generator is closed; the
    half-open ``PGconn`` it held is finished by psycopg's finaliser.
    """
    deadline = time.monotonic() + timeout
    try:
        fileno, wait = next(gen)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise pg_errors.ConnectionTimeout(
                    f"connection to {where} timed out after {timeout:g}s (connect_timeout)"
                )
            poller = select.poll()
            poller.register(fileno, select.POLLIN if wait == _WAIT_R else select.POLLOUT)
            ready = 0
            for _, event in poller.poll(left * 1000.0):
                if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    ready = int(wait)  # let libpq read the error
                if event & select.POLLIN:
                    ready |= _WAIT_R
                if event & select.POLLOUT:
                    ready |= _WAIT_W
            fileno, wait = gen.send(waiting.Ready(ready))
    except StopIteration as stop:
        pgconn: PGconn = stop.value
        return pgconn
    finally:
        gen.close()


def _wait(conn: PooledPGConnection, gen: PQGen[RV], timeout: float, what: str) -> RV:
    """Run *gen* on *conn* within *timeout* seconds (a timeout leaves it mid-protocol: drop it)."""
    try:
        return conn.wait(gen, timeout=timeout)
    except pg_errors._WaitTimeout:
        raise psycopg.OperationalError(f"{what}: no answer from the server within {timeout:g}s") from None


def _run(conn: PooledPGConnection, sql: bytes, timeout: float, what: str) -> list[PGresult]:
    """Send *sql* with the simple query protocol (several statements allowed) and read every
    result within *timeout* seconds; raise the first error, else return the results."""
    pgconn = conn.pgconn
    with conn.lock:
        if pgconn.status != _CONN_OK:
            raise psycopg.OperationalError("the connection is closed")
        pgconn.send_query(sql)
        results: list[PGresult] = _wait(conn, generators.execute(pgconn), timeout, what)
    _raise_first_error(pgconn, results)
    return results


def _raise_first_error(pgconn: Any, results: list[PGresult]) -> None:
    """Raise the error of the first failed result of a simple-query round trip, if any."""
    for result in results:
        if result.status == _FATAL_ERROR:
            raise pg_errors.error_from_result(result, encoding=pgconn._encoding)


def ping(conn: Any, timeout: float) -> None:
    """An empty query on any psycopg connection (EmptyQueryResponse: no parse, no plan), read within
    *timeout* seconds; raises if the connection is dead (also used by gunicorn_pool.sqlalchemy)."""
    _run(conn, b"", timeout, "ping")


def rollback(conn: Any, timeout: float) -> None:
    """``ROLLBACK`` on any psycopg connection, within *timeout* seconds (psycopg sends nothing when
    no transaction is open; also used by gunicorn_pool.sqlalchemy)."""
    with conn.lock:
        _wait(conn, conn._rollback_gen(), timeout, "ROLLBACK")


def discard_all(conn: Any, timeout: float) -> None:
    """``DISCARD ALL`` on any idle psycopg connection, within *timeout* seconds, and the connection
    object told what the server forgot (:meth:`PGRules._discarded`: its prepared statements, the
    notifications it kept); also used by gunicorn_pool.sqlalchemy."""
    _run(conn, b"DISCARD ALL", timeout, "DISCARD ALL")
    PGRules._discarded(conn)


def fetch(conn: PooledPGConnection, sql: str, timeout: float) -> list[Any]:
    """Run *sql* through a cursor of *conn* within *timeout* seconds and return its rows: the
    pool's own queries (warm-up, ``gunicorn-pool check``). psycopg has no per-call timeout; its
    wait() takes one, so the cursor's own generator runs under it."""
    cursor = conn.cursor()
    try:
        with conn.lock:
            _wait(conn, cursor._execute_gen(sql), timeout, "query")
        return cursor.fetchall()
    finally:
        cursor.close()


def _cooperative_wait() -> Optional[WaitFunc]:
    """The wait function for a connection opened now: None (psycopg's own), or psycopg's
    ``wait_poll`` when psycopg chose its C wait (which blocks the hub) before gevent patched
    ``select`` (``wait_poll`` looks ``select.poll`` up on each call: gevent's)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select") and waiting.wait is getattr(waiting, "wait_c", None):
        return waiting.wait_poll
    return None


def drop_inherited(raw: Any) -> None:
    """A connection opened by another process (inherited through fork): never finished here, kept
    referenced, and this process's copy of its socket pointed at /dev/null
    (:func:`.pgcalls.drop_inherited_socket`)."""
    drop_inherited_socket(raw, _socket_of(raw))


def _shutdown(raw: Any) -> None:
    """Shut psycopg connection *raw*'s socket down both ways (its fd stays libpq's)."""
    shutdown_socket(_socket_of(raw))


def _socket_of(raw: Any) -> Optional[int]:
    """The socket of psycopg connection *raw*, None if it has none (closed, or never connected)."""
    try:
        return int(raw.pgconn.socket)
    except Exception:  # noqa: BLE001 - libpq raises for a closed connection
        return None


def _attempt_host(attempt: dict[str, Any]) -> str:
    """``host:port`` of one connection attempt (libpq keywords), for messages."""
    return f"{attempt.get('host') or attempt.get('hostaddr') or ''}:{attempt.get('port', '')}"


def _no_host(failures: list[tuple[str, psycopg.OperationalError]]) -> psycopg.OperationalError:
    """The error of a connect that no host accepted: the one host's own, or every host's in one line."""
    if len(failures) == 1:
        return failures[0][1].with_traceback(None)
    tried = "; ".join(f"{host}: {_first_line(exc)}" for host, exc in failures)
    return psycopg.OperationalError(f"no host accepted the connection ({len(failures)} tried: {tried})")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
