"""What a GunicornPool knows of each driver's sessions: the exact transaction read and the session reset.

SQLAlchemy's creator (and its ``connect`` events) makes every DBAPI connection;
:class:`~gunicorn_pool.sqlalchemy.pool.RecordConnector` then hands it to the
rules of its driver here (:func:`rules_for`), which adapt it **after** the
creator made it, so an engine built with ``creator=`` (which skips SQLAlchemy's
``do_connect`` events) is covered the same way. Each driver reuses its
connector's machinery (:mod:`gunicorn_pool.connectors`):

- **PyMySQL** (a plain ``pymysql.Connection``): its class becomes
  :class:`StatusExactSAConnection` (:func:`~..connectors.mysql.status_exact`):
  the transaction status is exact (unsure after every command until an OK or
  EOF packet says otherwise), every statement gets its verdict
  (:func:`~..connectors.mysql.statement_verdict`), and ``rollback()`` sends
  nothing when the status proves no transaction is open (SQLAlchemy rolls back
  on every return). The engine's ``do_connect`` event (:func:`track_sessions`)
  adds ``CLIENT.SESSION_TRACK`` so the server reports session changes too.
  A session that may have changed is reset in one round trip
  (:func:`~..connectors.mysql.reset_session`: COM_RESET_CONNECTION, the first
  role, character set, autocommit, database, ``init_command``).
- **psycopg 3**: the connection's cursor factories get the statement scan
  (:func:`~..connectors.postgresql.tracked_cursor`: command tags, and the
  scan of each text for calls of functions other than harmless builtins, for
  temporary objects), the pool's verdicts learn the server's builtins once per
  pool; the connection object's own settings are compared with what the
  connect left. A changed session gets ``DISCARD ALL``; changed settings are
  set back.
- **psycopg2**: the engine's ``do_connect`` event (:func:`track_sessions`)
  makes its connections ``PG2SAConnection`` (:func:`pg2_connection_class`; psycopg2's
  ``connection_factory``: psycopg2's connection class cannot be changed after
  the fact), the psycopg2 connector's tracked class. A connection made
  otherwise (``creator=``, a ``connection_factory`` of the app's) cannot be
  watched: it is reset (``DISCARD ALL``) at every return.
- **sqlite3**: ``in_transaction`` is exact; as for DatabasePool's SQLite
  connector (:mod:`~..connectors.sqlite`) nothing else is reset (PRAGMAs and
  temporary tables stay with the connection).
- Any other driver: none of this is known; SQLAlchemy's reset on return (a
  rollback) is all there is.

After a server-side reset the session is what SQLAlchemy's creator made; the
pool then **runs the engine's ``connect`` events again** (``pool.dispatch.
connect``: the dialect's own, which set the isolation level, character set and
adapters, and the app's, such as ``SET search_path`` or ``SET time_zone``; the
dialect's one-time initialisation does not run again), so the next user gets the
session as those events left it. ``connect`` listeners must therefore be
repeatable on the same connection (SQL ``SET`` statements and adapter
registrations are). What they run is not counted as the user's change.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Optional

from ..connectors.base import socket_probe
from ..connectors.dbapi import abandon
from ..connectors.pgcalls import NAMES_SQL

__all__ = ["DriverRules", "StatusExactSAConnection", "pg2_connection_class", "rules_for", "track_sessions"]

_IN_TRANS = 0x0001  # MySQL's SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = 0x0002  # SERVER_STATUS_AUTOCOMMIT
_XA = 2  # the verdict bit of an XA statement (connectors/mysql.py)


class DriverRules:
    """The rules of a driver gunicorn_pool does not know: SQLAlchemy's reset on return decides.

    *entry* is the record's :class:`~gunicorn_pool.sqlalchemy.pool._Entry`: ``dbapi`` (the DBAPI
    connection) and ``state`` (what :meth:`adopt` kept)."""

    def adopt(self, dbapi: Any, owner: Any) -> Any:
        """Adapt *dbapi*, just made by SQLAlchemy's creator and connect events, and return what is
        kept of it (compared at each return). *owner* is the RecordConnector (its verdicts,
        its bound). No transaction is open after it."""
        if self.in_transaction(dbapi) is not False:
            dbapi.rollback()
        return None

    def in_transaction(self, dbapi: Any) -> Optional[bool]:
        """Is a transaction open, as the driver says without a round trip? None: it does not say."""
        return None

    def clean(self, entry: Any) -> Optional[bool]:
        """The hot path of every return: True if nothing is open and nothing changed; None if
        unknown (SQLAlchemy's reset on return decides)."""
        return None

    def unusable(self, dbapi: Any) -> bool:
        """True if *dbapi* must be dropped whatever else (closed, mid-result)."""
        return False

    def settle(self, dbapi: Any, *, commit: bool, timeout: float) -> None:
        """End the transaction (commit with *commit*, else roll back) when one is, or may be, open."""
        if self.in_transaction(dbapi) is not False:
            dbapi.commit() if commit else dbapi.rollback()

    def needs_reset(self, entry: Any, failed: bool) -> bool:
        """After :meth:`settle`: must the session be reset before the next user?"""
        return False

    def reset(self, entry: Any, failed: bool, timeout: float) -> Optional[bool]:
        """Reset the session (*failed*: the lease ended with an exception): True if the server's
        session was reset (the connect events then run again), False if only the connection
        object's settings were set back, None if it cannot be reset (drop it)."""
        return None

    def ready(self, entry: Any, timeout: float) -> None:
        """After :meth:`settle` (and a reset and the connect events): nothing counts as changed."""

    def probe(self, dbapi: Any) -> Optional[Callable[[], Any]]:
        """The checkout probe (no round trip), or None."""
        return None

    def ping(self, dbapi: Any, timeout: float, dialect: Any) -> None:
        """A round trip bounded by *timeout* that opens no transaction."""
        from ..connectors.base import select_one

        # A pool built without an engine has SQLAlchemy's stand-in dialect, which cannot ping.
        do_ping = getattr(dialect, "do_ping", None)
        do_ping(dbapi) if do_ping is not None else select_one(dbapi)
        if self.in_transaction(dbapi) is not False:
            dbapi.rollback()

    def drop(self, dbapi: Any, *, inherited: bool) -> None:
        """Close *dbapi* without a word to the server where the driver allows; one inherited
        through fork is never finished here (its session is the parent's). Never raises."""
        if inherited:
            abandon(dbapi)
            return
        try:
            dbapi.close()
        except Exception:  # noqa: BLE001 - never raises
            pass

    def autocommit_on(self, dbapi: Any) -> bool:
        """Is the driver's autocommit on? (False where SQLAlchemy's dialect manages it.)"""
        return False

    def autocommit_off(self, dbapi: Any) -> None:
        """Switch the driver's autocommit off."""


# -- PyMySQL ------------------------------------------------------------------------------------

try:
    import pymysql
except ImportError:  # pragma: no cover - the mysql extra is not installed
    pymysql = None


def _mysql_classes() -> Any:
    from ..connectors.mysql import StatusExactConnection

    class _StatusExactSAConnection(StatusExactConnection):
        """A :class:`~..connectors.mysql.StatusExactConnection` whose ``rollback()`` sends nothing
        when the exact status proves no transaction is open (SQLAlchemy rolls back at the end of
        every transaction and on every return); when unsure (the last command failed or was cut
        short) it rolls back; on a closed connection it raises as PyMySQL's does."""

        def rollback(self) -> None:
            if self._gp_unsure or self.server_status & _IN_TRANS or self._sock is None:
                StatusExactConnection.rollback(self)  # closed: PyMySQL raises, as it always did

    _StatusExactSAConnection.__name__ = _StatusExactSAConnection.__qualname__ = "StatusExactSAConnection"
    return _StatusExactSAConnection


StatusExactSAConnection: Any = _mysql_classes() if pymysql is not None else None


class _MySQLState:
    """What a PyMySQL connection's session is after the connect: what the reset restores."""

    __slots__ = ("autocommit", "charset", "clean_bits", "database", "statements")

    def __init__(self, dbapi: Any) -> None:
        self.autocommit = bool(dbapi.server_status & _AUTOCOMMIT)
        self.clean_bits = _AUTOCOMMIT if self.autocommit else 0  # IN_TRANS clear, autocommit as connected
        self.charset = dbapi.charset
        db = dbapi.db
        self.database = db.decode(dbapi.encoding) if isinstance(db, bytes) else db
        self.statements = (dbapi.init_command,) if dbapi.init_command else ()


class MySQLRules(DriverRules):
    """PyMySQL (see the module docstring)."""

    def adopt(self, dbapi: Any, owner: Any) -> Any:
        from ..connectors import mysql

        dbapi.__class__ = StatusExactSAConnection
        with mysql.bounded(dbapi, owner.own_timeout):
            if not mysql.status_exact(dbapi):  # tracking on and the first role read: one round trip
                # Not tracked (a creator= connection without CLIENT.SESSION_TRACK): the role the
                # reset restores is read all the same; statement verdicts alone mark the session.
                mysql._setup_session(dbapi, track=True)
            if mysql.transaction_open(dbapi):
                dbapi.rollback()  # unsure without tracking: once per connection
            dbapi._gp_seen = dbapi._gp_dirty = 0
        return _MySQLState(dbapi)

    def in_transaction(self, dbapi: Any) -> Optional[bool]:
        return dbapi._sock is None or bool(dbapi._gp_unsure or dbapi.server_status & _IN_TRANS)

    def clean(self, entry: Any) -> Optional[bool]:
        dbapi = entry.dbapi
        if (
            dbapi._gp_unsure
            or (dbapi.server_status & (_IN_TRANS | _AUTOCOMMIT)) != entry.state.clean_bits
            or dbapi._gp_seen & 0x4000  # SERVER_SESSION_STATE_CHANGED
            or dbapi._gp_dirty
            or dbapi._sock is None
        ):
            return False
        result = dbapi._result
        if result is not None:
            if result.unbuffered_active or result.has_next:
                return False
            dbapi._result = None  # a large result would stay alive until the next use
        return True

    def unusable(self, dbapi: Any) -> bool:
        result = dbapi._result
        return bool(dbapi._sock is None or (result is not None and result.unbuffered_active))

    def settle(self, dbapi: Any, *, commit: bool, timeout: float) -> None:
        from ..connectors import mysql

        with mysql.bounded(dbapi, timeout):
            mysql._drain(dbapi)  # result sets a CALL left unread
            if dbapi._gp_dirty & _XA:
                return  # COMMIT and ROLLBACK refuse an XA transaction (1399): the reset ends it
            if dbapi.server_status & _IN_TRANS and commit:
                dbapi.commit()
            elif dbapi._gp_unsure or dbapi.server_status & _IN_TRANS:
                StatusExactSAConnection.rollback(dbapi)

    def needs_reset(self, entry: Any, failed: bool) -> bool:
        from ..connectors.mysql import session_changed

        dbapi = entry.dbapi
        return bool(failed or session_changed(dbapi) or (dbapi.server_status & _AUTOCOMMIT) != entry.state.clean_bits)

    def reset(self, entry: Any, failed: bool, timeout: float) -> Optional[bool]:
        from ..connectors import mysql

        state, dbapi = entry.state, entry.dbapi
        with mysql.bounded(dbapi, timeout):
            done = mysql.reset_session(dbapi, charset=state.charset, autocommit=state.autocommit,
                                       database=state.database, statements=state.statements)  # fmt: skip
        return True if done else None

    def ready(self, entry: Any, timeout: float) -> None:
        dbapi = entry.dbapi
        if dbapi._gp_unsure or dbapi.server_status & _IN_TRANS:
            self.settle(dbapi, commit=False, timeout=timeout)  # what the connect events left open
        dbapi._gp_seen = dbapi._gp_dirty = 0

    def probe(self, dbapi: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(dbapi._sock)

    def drop(self, dbapi: Any, *, inherited: bool) -> None:
        if inherited:
            abandon(dbapi)
            return
        try:
            dbapi._force_close()  # closes the socket, sends no COM_QUIT
        except Exception:  # noqa: BLE001 - never raises
            pass

    def ping(self, dbapi: Any, timeout: float, dialect: Any) -> None:
        from ..connectors import mysql

        mysql.ping(dbapi, timeout)

    def autocommit_on(self, dbapi: Any) -> bool:
        return bool(dbapi.get_autocommit())

    def autocommit_off(self, dbapi: Any) -> None:
        dbapi.autocommit(False)


# -- psycopg 3 ----------------------------------------------------------------------------------


def _pg_client(dbapi: Any) -> tuple[Any, ...]:
    """The psycopg connection object's own settings, as the next user would find them."""
    return (dbapi._autocommit, dbapi._isolation_level, dbapi._read_only, dbapi._deferrable, dbapi.row_factory,
            dbapi._prepared.prepare_threshold, dbapi._prepared.prepared_max, len(dbapi._notice_handlers),
            len(dbapi._notify_handlers), dbapi._adapters)  # fmt: skip


class _PGState:
    """A psycopg connection after the connect: its settings and cursor classes (the tracked ones)."""

    __slots__ = ("client", "cursor", "handlers", "server_cursor")

    def __init__(self, dbapi: Any) -> None:
        self.cursor = dbapi.cursor_factory
        self.server_cursor = dbapi.server_cursor_factory
        self.handlers = (list(dbapi._notice_handlers), list(dbapi._notify_handlers))
        self.client = _pg_client(dbapi)


_SERVER_CURSORS: dict[Any, Any] = {}


def _tracked_server_cursor(base: Any) -> Any:
    """*base* (``psycopg.ServerCursor`` or a subclass) with the pooled connection's scan mixed in."""
    import psycopg

    from ..connectors import postgresql

    if issubclass(base, postgresql._ScansServerStatements):
        return base
    if base is psycopg.ServerCursor:
        return postgresql.PooledPGServerCursor
    cls = _SERVER_CURSORS.get(base)
    if cls is None:
        cls = _SERVER_CURSORS[base] = type(f"Pooled{base.__name__}", (postgresql._ScansServerStatements, base), {})
    return cls


class _PostgreSQLRules(DriverRules):
    """What both PostgreSQL drivers' rules do alike, each with its connector module's functions."""

    _connector = ""  #: the connector module (gunicorn_pool.connectors.<name>)

    def _module(self) -> Any:
        return importlib.import_module(f"..connectors.{self._connector}", __package__)

    def drop(self, dbapi: Any, *, inherited: bool) -> None:
        if inherited:
            self._module().drop_inherited(dbapi)
            return
        DriverRules.drop(self, dbapi, inherited=False)

    def ping(self, dbapi: Any, timeout: float, dialect: Any) -> None:
        self._module().ping(dbapi, timeout)

    def autocommit_on(self, dbapi: Any) -> bool:
        return bool(dbapi.autocommit)

    def autocommit_off(self, dbapi: Any) -> None:
        dbapi.autocommit = False


class PsycopgRules(_PostgreSQLRules):
    """psycopg 3 (see the module docstring)."""

    _connector = "postgresql"

    def adopt(self, dbapi: Any, owner: Any) -> Any:
        import psycopg

        from ..connectors import postgresql

        if dbapi.pgconn.transaction_status != postgresql._TX_IDLE:
            postgresql.rollback(dbapi, owner.own_timeout)
        verdicts = owner.verdicts
        if not owner.names_read:  # the server's builtins and keywords, once per pool
            result = postgresql._run(dbapi, postgresql._NAMES_SQL, owner.own_timeout, "builtin function names")[-1]
            verdicts.learn(*(bytes(result.get_value(0, i) or b"").decode() for i in (0, 1)))
            owner.names_read = True
        base = dbapi.cursor_factory
        if not issubclass(base, postgresql._ScansStatements) and not hasattr(base, "_gp_scans"):
            tracked = postgresql.PooledPGCursor if base is psycopg.Cursor else _tracked_cursor(base)
            dbapi.cursor_factory = tracked
        dbapi.server_cursor_factory = _tracked_server_cursor(dbapi.server_cursor_factory)
        dbapi._gp_verdicts = verdicts
        dbapi._gp_server = dbapi._gp_maybe = dbapi._gp_close = False
        return _PGState(dbapi)

    def in_transaction(self, dbapi: Any) -> Optional[bool]:
        return bool(dbapi.pgconn.transaction_status)  # 0 is IDLE; ACTIVE, INTRANS, INERROR, UNKNOWN are not

    def clean(self, entry: Any) -> Optional[bool]:
        dbapi, state = entry.dbapi, entry.state
        return not (
            dbapi.pgconn.transaction_status  # a transaction, a query or COPY running, or closed
            or dbapi._gp_server
            or dbapi.cursor_factory is not state.cursor
            or dbapi.server_cursor_factory is not state.server_cursor
            or dbapi._pipeline is not None
            or _pg_client(dbapi) != state.client
        )

    def unusable(self, dbapi: Any) -> bool:
        from ..connectors import postgresql

        status = dbapi.pgconn.transaction_status
        return bool(
            status == postgresql._TX_ACTIVE  # mid-query, mid-COPY or mid-stream: never reused
            or status == postgresql._TX_UNKNOWN  # closed or broken
            or dbapi._pipeline is not None
            or dbapi._num_transactions  # a transaction() block still open
            or dbapi._tpc is not None  # a two-phase transaction
        )

    def settle(self, dbapi: Any, *, commit: bool, timeout: float) -> None:
        from ..connectors import postgresql

        status = dbapi.pgconn.transaction_status
        if status == postgresql._TX_INTRANS and commit:
            dbapi.commit()
        elif status != postgresql._TX_IDLE:
            postgresql.rollback(dbapi, timeout)

    def needs_reset(self, entry: Any, failed: bool) -> bool:
        return not self.clean(entry) or failed

    def reset(self, entry: Any, failed: bool, timeout: float) -> Optional[bool]:
        from ..connectors import postgresql

        dbapi, state = entry.dbapi, entry.state
        if dbapi._gp_close:
            return None  # what it changed outlives DISCARD ALL (setseed)
        server = bool(dbapi._gp_server or dbapi.cursor_factory is not state.cursor
                      or dbapi.server_cursor_factory is not state.server_cursor)  # fmt: skip
        server = server or failed
        if server:
            postgresql.discard_all(dbapi, timeout)
        (autocommit, isolation, read_only, deferrable, row_factory, threshold, prepared_max, _, _, adapters) = (
            state.client
        )
        dbapi.autocommit = autocommit  # no round trip: the transaction is settled
        dbapi.isolation_level, dbapi.read_only, dbapi.deferrable = isolation, read_only, deferrable
        dbapi.row_factory = row_factory
        dbapi._prepared.prepare_threshold, dbapi._prepared.prepared_max = threshold, prepared_max
        dbapi._adapters = adapters
        dbapi.cursor_factory, dbapi.server_cursor_factory = state.cursor, state.server_cursor
        if server:
            dbapi._notice_handlers[:], dbapi._notify_handlers[:] = (), ()  # the connect events add theirs again
        else:
            dbapi._notice_handlers[:], dbapi._notify_handlers[:] = state.handlers
        return server

    def ready(self, entry: Any, timeout: float) -> None:
        dbapi = entry.dbapi
        self.settle(dbapi, commit=False, timeout=timeout)
        dbapi._gp_server = dbapi._gp_maybe = False

    def probe(self, dbapi: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(dbapi.pgconn.socket)


_CURSORS: dict[Any, Any] = {}


def _tracked_cursor(base: Any) -> Any:
    from ..connectors.postgresql import tracked_cursor

    cls = _CURSORS.get(base)
    if cls is None:
        cls = _CURSORS[base] = tracked_cursor(base)
        cls._gp_scans = True
    return cls


# -- psycopg2 -----------------------------------------------------------------------------------

_PG2_CLASS: list[Any] = []  # PG2SAConnection, once built


def pg2_connection_class() -> Any:
    """``PG2SAConnection``: the psycopg2 connector's tracked connection class, as a psycopg2
    ``connection_factory`` (psycopg2 calls it with the DSN and its own arguments). Its guard lets
    anyone through (SQLAlchemy guards its connections); its cursors note what changes the session.
    Built on first use, by a psycopg2 engine's first connect: an app on another driver never
    imports psycopg2 for it (a C extension and libpq: ~2 MiB of private memory per worker)."""
    if not _PG2_CLASS:
        from psycopg2.extensions import connection as pg2_connection

        from ..connectors.psycopg2 import PooledPG2Connection

        class PG2SAConnection(PooledPG2Connection):
            __doc__ = pg2_connection_class.__doc__

            def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
                pg2_connection.__init__(self, dsn, *args, **kwargs)  # psycopg2's own (no connect deadline)

        _PG2_CLASS.append(PG2SAConnection)
    return _PG2_CLASS[0]


class _PG2State:
    """A psycopg2 connection after the connect: its settings (restored after a reset)."""

    __slots__ = ("autocommit", "cursor", "deferrable", "encoding", "isolation", "readonly", "tracked")

    def __init__(self, dbapi: Any, tracked: bool) -> None:
        self.tracked = tracked
        self.autocommit = bool(dbapi.autocommit)
        self.isolation, self.readonly, self.deferrable = dbapi.isolation_level, dbapi.readonly, dbapi.deferrable
        self.encoding = dbapi.encoding
        self.cursor = dbapi.cursor_factory


class Psycopg2Rules(_PostgreSQLRules):
    """psycopg2 (see the module docstring)."""

    _connector = "psycopg2"

    def adopt(self, dbapi: Any, owner: Any) -> Any:
        from ..connectors import psycopg2 as pg2

        pg2.end_transaction(dbapi, commit=False, timeout=owner.own_timeout)
        tracked = type(dbapi) is pg2_connection_class()
        if tracked:
            if not owner.names_read:
                ((builtins, keywords),) = pg2.fetch(dbapi, NAMES_SQL, owner.own_timeout)
                owner.verdicts.learn(builtins or "", keywords or "")
                owner.names_read = True
            dbapi.cursor_factory = dbapi.cursor_factory  # the guarded and tracked class of the factory
            dbapi._gp_verdicts = owner.verdicts
            dbapi._gp_server = dbapi._gp_maybe = dbapi._gp_client = dbapi._gp_close = False
        return _PG2State(dbapi, tracked)

    def in_transaction(self, dbapi: Any) -> Optional[bool]:
        from ..connectors.psycopg2 import transaction_open

        return transaction_open(dbapi)

    def clean(self, entry: Any) -> Optional[bool]:
        dbapi, state = entry.dbapi, entry.state
        if not state.tracked:
            return False  # its statements are not seen: reset at every return
        notices, notifies = dbapi.notices, dbapi.notifies
        if notices:
            notices.clear()
        if notifies:
            notifies.clear()
        return not (
            dbapi.get_transaction_status()  # 0 is IDLE
            or dbapi._gp_server
            or dbapi._gp_client
            or dbapi.autocommit is not state.autocommit
            or dbapi.cursor_factory is not state.cursor
        )

    def unusable(self, dbapi: Any) -> bool:
        import psycopg2.extensions as ext

        status = dbapi.get_transaction_status()
        return bool(
            dbapi.closed
            or status in (ext.TRANSACTION_STATUS_ACTIVE, ext.TRANSACTION_STATUS_UNKNOWN)
            or getattr(dbapi, "_gp_tpc", False)
            or dbapi.status == ext.STATUS_PREPARED
        )

    def settle(self, dbapi: Any, *, commit: bool, timeout: float) -> None:
        from ..connectors.psycopg2 import end_transaction

        end_transaction(dbapi, commit=commit, timeout=timeout)

    def needs_reset(self, entry: Any, failed: bool) -> bool:
        return failed or not self.clean(entry)

    def reset(self, entry: Any, failed: bool, timeout: float) -> Optional[bool]:
        import psycopg2.extensions as ext

        from ..connectors import psycopg2 as pg2

        dbapi, state = entry.dbapi, entry.state
        if getattr(dbapi, "_gp_close", False):
            return None  # what it changed outlives DISCARD ALL (setseed)
        server = not state.tracked or dbapi._gp_server or failed
        if server:
            pg2.discard_all(dbapi, timeout)
        settings = (dbapi.isolation_level, dbapi.readonly, dbapi.deferrable)
        with pg2._bounded(dbapi, timeout, "restore the session characteristics"):
            if server or settings != (state.isolation, state.readonly, state.deferrable):
                default = "DEFAULT"
                ext.connection.set_session(
                    dbapi,
                    isolation_level=default if state.isolation is None else state.isolation,
                    readonly=default if state.readonly is None else state.readonly,
                    deferrable=default if state.deferrable is None else state.deferrable,
                    autocommit=False,
                )
            if dbapi.encoding != state.encoding:
                ext.connection.set_client_encoding(dbapi, state.encoding)
        ext.connection.autocommit.__set__(dbapi, state.autocommit)
        if dbapi.cursor_factory is not state.cursor:
            dbapi.cursor_factory = state.cursor
        return bool(server)

    def ready(self, entry: Any, timeout: float) -> None:
        dbapi = entry.dbapi
        self.settle(dbapi, commit=False, timeout=timeout)
        if entry.state.tracked:
            dbapi._gp_server = dbapi._gp_maybe = dbapi._gp_client = False

    def probe(self, dbapi: Any) -> Optional[Callable[[], Any]]:
        from ..connectors.psycopg2 import socket_of

        return socket_probe(socket_of(dbapi))


# -- sqlite3 ------------------------------------------------------------------------------------


class SQLiteRules(DriverRules):
    """sqlite3: ``in_transaction`` is exact; nothing else is reset, as for DatabasePool's SQLite
    connector (no server session: PRAGMAs and temporary tables stay with the connection)."""

    def in_transaction(self, dbapi: Any) -> Optional[bool]:
        from ..connectors.sqlite import transaction_state

        state = transaction_state(dbapi)
        return True if state is None else state

    def clean(self, entry: Any) -> Optional[bool]:
        return not entry.dbapi.in_transaction

    def unusable(self, dbapi: Any) -> bool:
        from ..connectors.sqlite import transaction_state

        return transaction_state(dbapi) is None

    def ping(self, dbapi: Any, timeout: float, dialect: Any) -> None:
        dbapi.execute("SELECT 1").fetchall()


_OTHER = DriverRules()


def rules_for(dbapi: Any) -> DriverRules:
    """The rules of *dbapi*'s driver; :class:`DriverRules` for one not known (or a PyMySQL
    subclass of the app's own, whose attributes a class change would lose)."""
    cls = type(dbapi)
    if pymysql is not None and (cls is pymysql.connections.Connection or cls is StatusExactSAConnection):
        return _MYSQL
    driver = cls.__module__.partition(".")[0]
    if driver == "psycopg":
        return _PSYCOPG
    if driver == "sqlite3":
        return _SQLITE
    extensions = sys.modules.get("psycopg2.extensions")  # loaded if this is a psycopg2 connection
    if extensions is not None and isinstance(dbapi, extensions.connection):
        return _PSYCOPG2
    return _OTHER


_MYSQL, _PSYCOPG, _PSYCOPG2, _SQLITE = MySQLRules(), PsycopgRules(), Psycopg2Rules(), SQLiteRules()


def track_sessions(engine: Any) -> None:
    """Give *engine*'s connects what the exact reads need (a ``do_connect`` event): PyMySQL's
    ``CLIENT.SESSION_TRACK`` (the server then reports session changes), psycopg2's
    ``connection_factory`` (:func:`pg2_connection_class`, unless the app set its own)."""
    from sqlalchemy import event

    driver = engine.dialect.driver
    if driver in ("pymysql", "psycopg2") and not event.contains(engine, "do_connect", _track):
        event.listen(engine, "do_connect", _track)


def _track(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if dialect.driver == "pymysql":
        from pymysql.constants import CLIENT

        cparams["client_flag"] = int(cparams.get("client_flag") or 0) | CLIENT.SESSION_TRACK
    elif dialect.driver == "psycopg2":
        cparams.setdefault("connection_factory", pg2_connection_class())
