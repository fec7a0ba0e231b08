"""PostgreSQL through psycopg2 (``driver: psycopg2``): the guarantees of :mod:`.postgresql`, on psycopg2.

psycopg2 has no Python chokepoint (its commands run in C), so the guard and
the session tracking sit on the methods that reach the server:

- The lease guard: :class:`PooledPG2Connection` (``commit``, ``rollback``,
  ``cursor``, ``set_session`` and the setters of ``autocommit``,
  ``isolation_level``, ``readonly``, ``deferrable``, ``set_client_encoding``,
  ``reset``, ``tpc_*``, ``lobject``, ``poll``, ``cancel``, ``close``) and
  every cursor it makes: ``conn.cursor(cursor_factory=...)`` with any
  factory (``RealDictCursor``, ``NamedTupleCursor``, Django's) gets that
  factory with the guard mixed in (``execute``, ``executemany``,
  ``callproc``, ``copy_*``; a named cursor's ``fetch*``, ``scroll``,
  ``close`` and iteration too). A use by anyone but the holder raises
  :class:`~gunicorn_pool.errors.LeaseError` before anything is sent.
- Transaction status without a round trip: ``get_transaction_status()``
  (libpq's ``PQtransactionStatus``).
- Session reset only when needed: the same rules as the psycopg 3 connector
  (:mod:`.pgcalls`): the command tag of each statement
  (``cursor.statusmessage``) and the scan of its text, both before
  ``DISCARD ALL`` is decided. psycopg2 merges parameters into the text on the
  client: the scan reads the template given to ``execute()`` (so each
  template is scanned once per pool, whatever its values), and a text built
  with the values already in it (``psycopg2.extras.execute_values``) as
  sent. ``PQexec`` keeps the last statement's result only, so a statement
  followed by another one counts by its first word (``SET x = 1; SELECT
  1`` is a change).
- The checkout probe is a zero-timeout ``poll()`` of ``conn.fileno()``.
- Fork safety: a connection inherited through ``fork()`` is never closed in
  the child (psycopg2's own finaliser would send Terminate on the parent's
  session); the child's copy of its socket is pointed at ``/dev/null``.
- Bounded connects, fractions of a second honoured, each host of a list
  bounded by ``connect_timeout``: libpq's own ``connect_timeout`` (whole
  seconds, at least 2) when the value is such a number; otherwise the connect
  runs on a helper thread the caller waits for at most ``connect_timeout``
  (an attempt that gives up is closed when libpq returns, at most
  ``max(2, ceil(connect_timeout))`` seconds later). Under gevent the wait
  callback below drives the connect and ends it at the deadline.
- The pool's own statements (ping, ``ROLLBACK``, ``DISCARD ALL``, the session
  statements) are bounded: a watchdog thread shuts the socket down at the
  deadline (psycopg2 has no per-call timeout), or, under gevent, the wait
  callback gives up.
- gevent: :func:`wait_callback` is psycogreen's loop, looking up
  ``select.poll`` on each call (gevent's once patched), honouring the
  deadlines above. The gevent worker installs it (:func:`install_wait_callback`:
  ``psycopg2.extensions.set_wait_callback``, only where none is set); sync
  and gthread workers never have one (psycopg2 refuses COPY and large
  objects while a wait callback is set).

A connection's asynchronous mode (``async_=1``) is not used: psycopg2's
asynchronous connections refuse ``commit()``, ``rollback()``, the
``autocommit`` setter and ``with conn:``, so they cannot be lent to code
written for ordinary connections.

See docs/postgresql.md ("psycopg2").
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional

import psycopg2
import psycopg2.extensions as ext

from .base import CLOSED, DROP, IDLE, RESET, REUSE, Connector, LeaseGuard, lease_error, select_one, socket_probe
from .pgcalls import (
    CACHED,
    CALLS,
    FREE_SQL,
    NAMES_SQL,
    PLAIN_TAGS,
    PLAIN_TAGS_WITH_TEMP,
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
    from ..config import DatabaseConfig

__all__ = [
    "PooledPG2Connection", "Psycopg2Connector", "discard_all", "drop_inherited", "end_transaction", "fetch",
    "install_wait_callback", "ping", "socket_of", "transaction_open", "wait_callback",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

_TX_IDLE = ext.TRANSACTION_STATUS_IDLE
_TX_ACTIVE = ext.TRANSACTION_STATUS_ACTIVE
_TX_INTRANS = ext.TRANSACTION_STATUS_INTRANS
_TX_UNKNOWN = ext.TRANSACTION_STATUS_UNKNOWN
_POLL_OK = ext.POLL_OK
_POLL_READ = ext.POLL_READ
_POLL_WRITE = ext.POLL_WRITE
_PLAIN = PLAIN_TAGS
_PLAIN_WITH_TEMP = PLAIN_TAGS_WITH_TEMP
_BASE = ext.connection
_CURSOR = ext.cursor
# psycopg2's own settings descriptors (C getsets), called where the guard must not run twice.
_AUTOCOMMIT = ext.connection.__dict__["autocommit"]
_ISOLATION_LEVEL = ext.connection.__dict__["isolation_level"]
_READONLY = ext.connection.__dict__["readonly"]
_DEFERRABLE = ext.connection.__dict__["deferrable"]
_CURSOR_FACTORY = ext.connection.__dict__["cursor_factory"]


class _WaitTimeout(psycopg2.OperationalError):  # type: ignore[misc]  # psycopg2 is untyped
    """A wait of :func:`wait_callback` passed its connection's deadline."""


def _refuse(conn: Any) -> None:
    """The lease guard: raise LeaseError unless the caller may use *conn* now (see .base)."""
    holder = conn._gp_holder
    if holder is not None and holder != threading.get_ident():
        raise lease_error(conn._gp_pool, holder, conn._gp_taken_at)


# -- the statement scan --------------------------------------------------------------------------


def _scan(conn: Any, query: Any, cursor: Any) -> None:
    """Note on *conn* what *query* (a template, or a text with its values in it) does to the
    session: the verdict of :func:`.pgcalls.scan`, kept per text in the pool's cache
    (``conn._gp_verdicts``). A ``psycopg2.sql`` object is judged by its text. A long bytes text
    is not kept: it was built with its values (``execute_values``), so it is never sent again."""
    verdicts: Verdicts = conn._gp_verdicts
    key: Any = query if isinstance(query, (str, bytes)) else query.as_string(cursor)
    verdict = verdicts.get(key)
    if verdict is None:
        text = key if isinstance(key, str) else bytes(key).decode("latin-1")
        verdict = scan(text, verdicts.harmless, verdicts.grammar, False)
        if not (isinstance(key, bytes) and len(key) > CACHED):
            remember(verdicts, key, verdict)
    if verdict:
        note(conn, verdict)


def _tag(conn: Any, cursor: Any) -> None:
    """Mark *conn* for a reset unless the command tag of the statement *cursor* ran is a plain one."""
    tag = cursor.statusmessage
    if tag and not tag.startswith(_PLAIN_WITH_TEMP if conn._gp_maybe else _PLAIN):
        conn._gp_server = True


if TYPE_CHECKING:
    _CursorBase = Any
else:
    _CursorBase = object


class _GuardedCursor(_CursorBase):  # type: ignore[misc]  # a mixin over psycopg2's cursors
    """Mixed into a pooled connection's cursor classes: the guard, and the tracking of statements
    when the pool resets sessions (``conn._gp_verdicts`` is then the pool's verdicts)."""

    _gp_base: Any = _CURSOR  # the factory this class guards
    # execute(): built per factory by _execute_of(), calling the factory's own without super().

    def executemany(self, query: Any, vars_list: Any) -> Any:
        conn = self.connection
        _refuse(conn)
        if conn._gp_verdicts is None:
            return super().executemany(query, vars_list)
        _scan(conn, query, self)
        result = super().executemany(query, vars_list)
        _tag(conn, self)
        return result

    def callproc(self, procname: Any, parameters: Any = None) -> Any:
        conn = self.connection
        _refuse(conn)
        verdicts = conn._gp_verdicts
        if verdicts is not None and str(procname).lower() not in verdicts.harmless:
            note(conn, CALLS)  # a function of the user's: it may change anything
        return super().callproc(procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> Any:
        conn = self.connection
        _refuse(conn)
        if conn._gp_verdicts is None:
            return super().copy_expert(sql, file, size)
        _scan(conn, sql, self)  # psycopg2 keeps no tag of a COPY: its text is all there is
        return super().copy_expert(sql, file, size)

    def copy_from(self, *args: Any, **kwargs: Any) -> Any:
        _refuse(self.connection)
        return super().copy_from(*args, **kwargs)

    def copy_to(self, *args: Any, **kwargs: Any) -> Any:
        _refuse(self.connection)
        return super().copy_to(*args, **kwargs)


class _GuardedNamedCursor(_GuardedCursor):
    """The guard of a named (server-side) cursor: its fetches and its close reach the server too.
    A cursor ``WITH HOLD`` outlives its transaction: the session is reset at return."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        conn = self.connection
        _refuse(conn)
        if conn._gp_verdicts is not None:
            if self.withhold:
                conn._gp_server = True
            _scan(conn, query, self)
        return super(_GuardedCursor, self).execute(query, vars)  # its tag is DECLARE CURSOR: not the user's

    def fetchone(self) -> Any:
        _refuse(self.connection)
        return super().fetchone()

    def fetchmany(self, size: Any = None) -> Any:
        _refuse(self.connection)
        return super().fetchmany() if size is None else super().fetchmany(size)

    def fetchall(self) -> Any:
        _refuse(self.connection)
        return super().fetchall()

    def scroll(self, value: Any, mode: str = "relative") -> Any:
        _refuse(self.connection)
        return super().scroll(value, mode)

    def close(self) -> Any:
        if not self.closed:
            _refuse(self.connection)
        return super().close()

    def __iter__(self) -> Any:
        _refuse(self.connection)
        return super().__iter__()


def _execute_of(parent: Callable[..., Any]) -> Callable[..., Any]:
    """The guarded and tracked ``execute()`` over a factory's own *parent* (every statement passes
    here: the factory's method is called directly, not through ``super()``)."""

    def execute(self: Any, query: Any, vars: Any = None) -> Any:
        conn = self.connection
        holder = conn._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(conn._gp_pool, holder, conn._gp_taken_at)
        verdicts = conn._gp_verdicts
        if verdicts is None:
            return parent(self, query, vars)
        if query.__class__ is not str or verdicts.get(query) != 0:
            _scan(conn, query, self)
        result = parent(self, query, vars)
        tag = self.statusmessage  # _tag(), inline
        if tag and not tag.startswith(_PLAIN_WITH_TEMP if conn._gp_maybe else _PLAIN):
            conn._gp_server = True
        return result

    return execute


_CURSORS: dict[tuple[Any, bool], Any] = {}


def cursor_class(factory: Any, named: bool = False) -> Any:
    """*factory* (``psycopg2.extensions.cursor`` or a subclass) with the guard mixed in (built once
    per factory); a class built here is returned as it is."""
    if issubclass(factory, _GuardedNamedCursor if named else _GuardedCursor):
        return factory
    base = factory._gp_base if issubclass(factory, _GuardedCursor) else factory
    cls = _CURSORS.get((base, named))
    if cls is None:
        mixin = _GuardedNamedCursor if named else _GuardedCursor
        name = f"Pooled{'Named' if named else ''}{base.__name__}"
        namespace = {"__module__": __name__, "_gp_base": base}
        if not named:
            namespace["execute"] = _execute_of(base.execute)
        cls = _CURSORS[(base, named)] = type(name, (mixin, base), namespace)
    return cls


# -- the connection ------------------------------------------------------------------------------


def _setting(descriptor: Any, mark: bool = True) -> Any:
    """A setting of psycopg2's connection (its C descriptor), read as psycopg2 reads it and set
    only by the holder, marking the connection (with *mark*) so the pool restores it at return.
    ``autocommit`` marks nothing: the pool compares it with its own at return (Django switches it
    off and on again around every ``atomic()`` block, and sets it on every connect)."""

    def get(conn: Any) -> Any:
        return descriptor.__get__(conn)

    def set_(conn: Any, value: Any) -> None:
        _refuse(conn)
        descriptor.__set__(conn, value)
        if mark:
            conn._gp_client = True

    return property(get, set_, doc=f"psycopg2's ``{descriptor.__name__}`` (restored when the lease ends).")


class PooledPG2Connection(LeaseGuard, ext.connection):  # type: ignore[misc]  # psycopg2 is untyped
    """A ``psycopg2.extensions.connection`` that knows its lease and what its user changed.

    - Every method that reaches the server refuses a use by anyone but the holder (see
      :mod:`.base`); ``cancel()`` may come from any thread during a lease, never while the
      connection is idle in the pool or closed.
    - ``_gp_server``: a statement changed the server-side session (set by its cursors);
      ``_gp_client``: the user changed a setting of this object (autocommit, isolation level,
      read-only, deferrable, client encoding, ``reset()``).
    - ``close()`` by the holder closes it at once; the pool drops it at return.
    """

    _gp_pid = 0  # the process that connected
    _gp_server = False
    _gp_maybe = False  # a statement named a temporary object
    _gp_close = False  # a statement changed what no reset undoes: close it at return
    _gp_client = False
    _gp_begun = False  # request_connection() switched autocommit off for this lease
    _gp_tpc = False  # a two-phase transaction is open
    _gp_encoding = ""  # the client encoding the pool connected with
    #: The pool's verdicts (see _scan); None: the pool does not track statements. A connection
    #: opened by no pool knows no builtin: every call of a function counts.
    _gp_verdicts: Optional[Verdicts] = Verdicts()
    _gp_deadline: Optional[float] = None  # time.monotonic() by which the current wait must end

    def __init__(self, dsn: str, deadline: Optional[float] = None) -> None:
        self._gp_deadline = deadline  # read by wait_callback() while the connect runs
        _BASE.__init__(self, dsn)

    def cursor(self, name: Any = None, cursor_factory: Any = None, withhold: bool = False,
               scrollable: Any = None) -> Any:  # fmt: skip
        """psycopg2's ``cursor()``, guarded: any *cursor_factory* gets the guard mixed in."""
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        if name is None and cursor_factory is None and not withhold and scrollable is None:
            return _BASE.cursor(self)  # the common case: the connection's factory, guarded when set
        factory = cursor_class(cursor_factory or _CURSOR_FACTORY.__get__(self) or _CURSOR, name is not None)
        return _BASE.cursor(self, name, cursor_factory=factory, withhold=withhold, scrollable=scrollable)

    @property
    def cursor_factory(self) -> Any:
        """psycopg2's ``cursor_factory``: a factory set here gets the guard mixed in."""
        return _CURSOR_FACTORY.__get__(self)

    @cursor_factory.setter
    def cursor_factory(self, factory: Any) -> None:
        _CURSOR_FACTORY.__set__(self, cursor_class(factory or _CURSOR))

    def commit(self) -> None:
        _refuse(self)
        _BASE.commit(self)

    def rollback(self) -> None:
        _refuse(self)
        _BASE.rollback(self)

    def close(self) -> None:
        # Nothing more when the pool closed or dropped it (one inherited through fork is never
        # finished here), or for a request_connection() connection (see LeaseGuard).
        if self._gp_user_close():
            _BASE.close(self)

    def cancel(self) -> None:
        holder = self._gp_holder
        if holder == IDLE or holder == CLOSED:
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        _BASE.cancel(self)

    def poll(self) -> Any:
        _refuse(self)
        return _BASE.poll(self)

    def lobject(self, *args: Any, **kwargs: Any) -> Any:
        _refuse(self)
        return _BASE.lobject(self, *args, **kwargs)

    def reset(self) -> None:
        _refuse(self)
        _BASE.reset(self)
        self._gp_server = self._gp_client = True  # the pool's session statements are gone too

    def tpc_begin(self, xid: Any) -> None:
        _refuse(self)
        _BASE.tpc_begin(self, xid)
        self._gp_tpc = True

    def tpc_prepare(self) -> None:
        _refuse(self)
        _BASE.tpc_prepare(self)

    def tpc_commit(self, *xid: Any) -> None:
        _refuse(self)
        _BASE.tpc_commit(self, *xid)
        if not xid:
            self._gp_tpc = False

    def tpc_rollback(self, *xid: Any) -> None:
        _refuse(self)
        _BASE.tpc_rollback(self, *xid)
        if not xid:
            self._gp_tpc = False

    def tpc_recover(self) -> Any:
        _refuse(self)
        return _BASE.tpc_recover(self)

    # Settings of this object the next user must not inherit.

    def set_session(self, *args: Any, **kwargs: Any) -> None:
        _refuse(self)
        _BASE.set_session(self, *args, **kwargs)
        self._gp_client = True

    def set_isolation_level(self, level: Any) -> None:
        _refuse(self)
        _BASE.set_isolation_level(self, level)
        self._gp_client = True

    def set_client_encoding(self, encoding: str) -> None:
        _refuse(self)
        _BASE.set_client_encoding(self, encoding)
        self._gp_client = True

    autocommit = _setting(_AUTOCOMMIT, mark=False)
    isolation_level = _setting(_ISOLATION_LEVEL)
    readonly = _setting(_READONLY)
    deferrable = _setting(_DEFERRABLE)


# -- waits: gevent's wait callback, and the bound of the pool's own statements ------------------


def wait_callback(conn: Any) -> None:
    """psycopg2's wait callback (``psycopg2.extensions.set_wait_callback``): psycogreen's loop,
    waiting with ``select.poll`` looked up on each call (gevent's once gevent patched ``select``:
    the wait parks the greenlet, the hub runs). A connection with a deadline
    (``_gp_deadline``: the pool's connect and own statements) raises when it passes; psycopg2
    then closes the connection."""
    deadline = getattr(conn, "_gp_deadline", None)
    while True:
        state = conn.poll()
        if state == _POLL_OK:
            return
        if state == _POLL_READ:
            events = select.POLLIN
        elif state == _POLL_WRITE:
            events = select.POLLOUT
        else:
            raise psycopg2.OperationalError(f"bad result from poll: {state!r}")
        wait_ms = None
        if deadline is not None:
            wait_ms = (deadline - time.monotonic()) * 1000.0
            if wait_ms <= 0:
                raise _WaitTimeout("no answer from the server in time")
        poller = select.poll()
        poller.register(conn.fileno(), events)
        if not poller.poll(wait_ms) and deadline is not None and time.monotonic() >= deadline:
            raise _WaitTimeout("no answer from the server in time")


def install_wait_callback() -> bool:
    """Install :func:`wait_callback` as psycopg2's wait callback unless one is set (psycogreen's,
    or the application's): every psycopg2 operation of this process then waits cooperatively. For
    gevent workers only (psycopg2 refuses COPY and large objects while a callback is set). True
    if :func:`wait_callback` is the process's callback now."""
    current = ext.get_wait_callback()
    if current is None:
        ext.set_wait_callback(wait_callback)
        return True
    return current is wait_callback


def _gevent_patched_select() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("select"))


class _Watchdog:
    """One daemon thread per process that shuts down the socket of a call still running at its
    deadline: psycopg2's blocking calls have no timeout, and libpq returns at once from a socket
    shut down under it ("server closed the connection unexpectedly"). Arming and disarming cost
    a lock and a dict operation; the thread sleeps until the earliest deadline."""

    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._reinit()

    def _reinit(self) -> None:
        """A fresh state: at start, and in a forked child (the parent's thread is gone, and its lock
        may have been held at the fork)."""
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}
        self._fired: set[int] = set()
        self._pid = 0

    def arm(self, deadline: float, fd: int) -> int:
        with self._cond:
            if self._pid != os.getpid():  # no thread yet in this process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="gunicorn_pool-pg2-watchdog", daemon=True).start()
            token = next(self._tokens)
            self._armed[token] = (deadline, fd)
            self._cond.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Stop watching *token*'s call: True if its deadline passed and its socket was shut down."""
        with self._cond:
            if self._armed.pop(token, None) is not None:
                return False
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        pid = os.getpid()
        with self._cond:
            while self._pid == pid:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        shutdown_socket(fd)
                soonest = min((deadline for deadline, _ in self._armed.values()), default=None)
                self._cond.wait(None if soonest is None else max(0.0, soonest - now))


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._reinit)


@contextlib.contextmanager
def _bounded(conn: Any, timeout: float, what: str) -> Iterator[None]:
    """Run the block's calls on *conn* within *timeout* seconds: past it they fail, the connection
    is unusable (the caller drops it) and OperationalError says ``what: no answer...``."""
    message = f"{what}: no answer from the server within {timeout:g}s"
    callback = ext.get_wait_callback()
    if callback is None:
        token = _watchdog.arm(time.monotonic() + timeout, conn.fileno())
        try:
            yield
        except psycopg2.Error:
            if _watchdog.disarm(token):
                raise psycopg2.OperationalError(message) from None
            raise
        if _watchdog.disarm(token):  # it fired as the call returned: the socket is shut down
            raise psycopg2.OperationalError(message)
    elif callback is wait_callback:
        conn._gp_deadline = time.monotonic() + timeout
        try:
            yield
        except _WaitTimeout:
            raise psycopg2.OperationalError(message) from None
        finally:
            conn._gp_deadline = None
    else:
        with _foreign_green_timeout(timeout, message):
            yield


@contextlib.contextmanager
def _foreign_green_timeout(timeout: float, message: str) -> Iterator[None]:
    """Under another library's wait callback (psycogreen's): gevent's Timeout, if gevent runs."""
    gevent = sys.modules.get("gevent")
    if gevent is None:
        yield
        return
    with gevent.Timeout(timeout, psycopg2.OperationalError(message)):
        yield


def _own(conn: Any, sql: str, timeout: float, what: str, *, rows: bool = False, names: bool = False) -> Any:
    """Run *sql* (the pool's own statement: outside any transaction, one or more statements) on
    idle *conn* within *timeout*, through psycopg2's plain cursor (no guard, no tracking), in
    autocommit for its duration (no BEGIN, no round trip to switch); its rows if *rows* (as dicts
    of column name to value with *names*)."""
    switch = not _AUTOCOMMIT.__get__(conn)
    with _bounded(conn, timeout, what):
        if switch:
            _AUTOCOMMIT.__set__(conn, True)
        try:
            if not rows:
                _command(conn, sql)
                return None
            cursor = _CURSOR(conn)
            try:
                cursor.execute(sql)
                found = cursor.fetchall()
                if names:
                    columns = [d.name for d in cursor.description or ()]
                    return [dict(zip(columns, row)) for row in found]
                return found
            finally:
                cursor.close()
        finally:
            if switch and not conn.closed:
                _AUTOCOMMIT.__set__(conn, False)


def _forget_messages(conn: Any) -> None:
    """Empty the connection's NOTICEs and notifications: the last user's are not the next one's."""
    notices, notifies = conn.notices, conn.notifies
    if notices:
        notices.clear()
    if notifies:
        notifies.clear()


def _command(conn: Any, sql: str) -> None:
    """Send *sql* through psycopg2's plain cursor (no guard, no tracking)."""
    cursor = _CURSOR(conn)
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def ping(conn: Any, timeout: float) -> None:
    """``SELECT 1`` on any idle psycopg2 connection, read within *timeout* seconds, opening no
    transaction; raises if the connection is dead (also for gunicorn_pool.sqlalchemy)."""
    _own(conn, "SELECT 1", timeout, "ping")


def fetch(conn: Any, sql: str, timeout: float, *, names: bool = False) -> list[Any]:
    """The rows of *sql* on idle *conn* within *timeout* seconds (dicts with *names*), opening no
    transaction: the pool's own queries (``gunicorn-pool check``)."""
    conn._gp_holder = None  # the pool's own use
    rows: list[Any] = _own(conn, sql, timeout, "query", rows=True, names=names)
    return rows


def end_transaction(conn: Any, *, commit: bool, timeout: float) -> None:
    """End what is open on psycopg2 connection *conn*: ``COMMIT`` with *commit* (the user's:
    unbounded, as theirs), else ``ROLLBACK`` within *timeout* seconds; nothing when no transaction
    is open. psycopg2's ``commit()`` and ``rollback()`` do nothing unless psycopg2 began the
    transaction itself (autocommit off): one the user began with a BEGIN statement ends with a
    statement. Also used by gunicorn_pool.sqlalchemy."""
    status = conn.get_transaction_status()
    if status == _TX_IDLE:
        return
    began = conn.status == ext.STATUS_BEGIN
    if status == _TX_INTRANS and commit:
        _BASE.commit(conn) if began else _command(conn, "COMMIT")
    else:
        with _bounded(conn, timeout, "ROLLBACK"):
            _BASE.rollback(conn) if began else _command(conn, "ROLLBACK")


def discard_all(conn: Any, timeout: float) -> None:
    """``DISCARD ALL`` on idle psycopg2 connection *conn* within *timeout* seconds, and its kept
    NOTICEs and notifications forgotten (the next user never listened to those channels). Also
    used by gunicorn_pool.sqlalchemy."""
    _own(conn, "DISCARD ALL", timeout, "DISCARD ALL")
    _forget_messages(conn)


def transaction_open(conn: Any) -> bool:
    """Is a transaction open (or a statement running, or the connection broken) on psycopg2
    connection *conn*? libpq's status, no round trip (for gunicorn_pool.sqlalchemy)."""
    return bool(conn.get_transaction_status() != _TX_IDLE)


def socket_of(conn: Any) -> int:
    """The socket of psycopg2 connection *conn*, for the checkout probe (:func:`.base.socket_probe`)."""
    return int(conn.fileno())


def drop_inherited(conn: Any) -> None:
    """A psycopg2 connection opened by another process (inherited through fork): never closed
    here (psycopg2 would send Terminate on the parent's session), kept referenced, and this
    process's copy of its socket pointed at /dev/null (:func:`.pgcalls.drop_inherited_socket`)."""
    try:
        fd: Optional[int] = None if conn.closed else int(conn.fileno())
    except Exception:  # noqa: BLE001 - no socket (closed, or never connected)
        fd = None
    drop_inherited_socket(conn, fd)


# -- connecting ----------------------------------------------------------------------------------


def _timed_out(where: str, timeout: float) -> psycopg2.OperationalError:
    return psycopg2.OperationalError(f"connection to {where} timed out after {timeout:g}s (connect_timeout)")


def _open(dsn: str, timeout: float, hosts: int, where: str) -> PooledPG2Connection:
    """A new connection, each of the *hosts* tried bounded by *timeout* (see the module docstring)."""
    limit = timeout * hosts
    callback = ext.get_wait_callback()
    if callback is wait_callback:
        try:
            conn = PooledPG2Connection(dsn, time.monotonic() + limit)
        except _WaitTimeout:
            raise _timed_out(where, timeout) from None
        conn._gp_deadline = None
        return conn
    if callback is not None:
        with _foreign_green_timeout(limit, str(_timed_out(where, timeout))):
            return PooledPG2Connection(dsn)
    if timeout >= 2 and float(timeout).is_integer():
        return PooledPG2Connection(f"{dsn} connect_timeout={int(timeout)}")  # libpq's own bound, per host
    return _open_on_thread(f"{dsn} connect_timeout={max(2, math.ceil(timeout))}", limit, where, timeout)


def _open_on_thread(dsn: str, limit: float, where: str, timeout: float) -> PooledPG2Connection:
    """Connect on a helper thread and wait for it at most *limit* seconds: libpq's own bound is
    whole seconds, at least 2. A connect the caller gave up on is closed when libpq returns."""
    lock = threading.Lock()
    done = threading.Event()
    box: dict[str, Any] = {}

    def attempt() -> None:
        try:
            conn = PooledPG2Connection(dsn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            with lock:
                box["error"] = exc
        else:
            with lock:
                if box.get("abandoned"):
                    _BASE.close(conn)  # the caller gave up: nobody will use it
                else:
                    box["conn"] = conn
        done.set()

    threading.Thread(target=attempt, name="gunicorn_pool-pg2-connect", daemon=True).start()
    done.wait(limit)
    with lock:
        if "conn" in box:
            return box["conn"]  # type: ignore[no-any-return]
        if "error" in box:
            raise box["error"].with_traceback(None)
        box["abandoned"] = True
    raise _timed_out(where, timeout)


class Psycopg2Connector(SessionRules, Connector):
    """Opens psycopg2 connections for one pool (see the module docstring)."""

    adapter = "postgresql"
    guarded = True

    def __init__(self, config: DatabaseConfig, *, libpq: Optional[Mapping[str, str]] = None,
                 cursor_base: Any = None) -> None:  # fmt: skip
        """For a framework with needs of its own (Django's backend): *libpq*, more libpq keywords
        (``client_encoding``); *cursor_base*, the cursor factory of every connection (guarded)."""
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self._take_rules(config)
        self._dsn = ext.make_dsn(**conninfo_params(config), **extra_libpq(config, libpq))
        self._hosts = max(1, len(config.hosts))
        self._cursor = cursor_class(cursor_base or _CURSOR)
        self._autocommit = bool(config.autocommit)
        if not config.reset_session:
            self.check_in = self._check_in_transaction  # type: ignore[method-assign]

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> PooledPG2Connection:
        """Open one connection, each host tried bounded by ``connect_timeout``, with the session
        the config asks for (autocommit, init_command, session)."""
        if _gevent_patched_select():
            install_wait_callback()  # a stock gevent worker with the hooks, or an app patched by itself
        conn = _open(self._dsn, self.config.connect_timeout, self._hosts, self.address)
        try:
            self._set_up(conn)
        except BaseException:
            _BASE.close(conn)
            raise
        return conn

    def _set_up(self, conn: PooledPG2Connection) -> None:
        cfg = self.config
        conn._gp_pool = cfg.pool_name
        conn._gp_pid = os.getpid()
        conn._gp_verdicts = None
        conn._gp_encoding = conn.encoding
        conn.cursor_factory = self._cursor
        if self._setup_sql:
            _own(conn, self._setup_sql, self._own_timeout, "init_command/session")
        if self._reset_server:
            if not self._names_read:
                self._read_names(conn)
            conn._gp_verdicts = self._verdicts
        _AUTOCOMMIT.__set__(conn, cfg.autocommit)  # no round trip: psycopg2 sends BEGIN itself when off
        conn._gp_server = conn._gp_maybe = conn._gp_client = False

    def _read_names(self, conn: PooledPG2Connection) -> None:
        """Read the server's builtin function names and keywords (one query, once per pool)."""
        ((builtins, keywords),) = _own(conn, NAMES_SQL, self._own_timeout, "builtin function names", rows=True)
        self._learn_names(builtins, keywords)

    def close(self, raw: Any) -> None:
        if raw._gp_pid != os.getpid():
            self.discard(raw)
            return
        raw._gp_holder = None  # the pool's own use
        try:
            _BASE.close(raw)  # Terminate, then the socket is closed
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            pass
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        holder = raw._gp_holder
        raw._gp_holder = CLOSED
        if raw._gp_pid != os.getpid():
            drop_inherited(raw)
            return
        if holder is not None and holder not in (IDLE, CLOSED) and holder != threading.get_ident() and not raw.closed:
            # Lent to another thread, which may be inside a call right now (a reclaimed leak still
            # running): psycopg2's close() would wait for it. Its socket is shut down first.
            shutdown_socket(raw.fileno())
        try:
            _BASE.close(raw)
        except Exception:  # noqa: BLE001 - never raises
            pass

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        """``SELECT 1`` in autocommit, bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        ping(raw, timeout)

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        # An idle session's socket has nothing to read. A terminated backend (FATAL, then EOF),
        # a server restart or a reset show up in a zero-timeout poll() without a round trip.
        return socket_probe(raw.fileno())

    def warm(self, raw: Any, timeout: float) -> None:
        """A ping, then ``SELECT 1`` through the pool's own cursor class (its guard and tracking
        code), both bounded by *timeout*; the guard is left IDLE."""
        self.ping(raw, timeout)
        with _bounded(raw, timeout, "warm-up"):
            select_one(raw)
            if raw.get_transaction_status() != _TX_IDLE:
                _BASE.rollback(raw)
        raw._gp_server = raw._gp_maybe = False
        raw._gp_holder = IDLE

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``max_connections`` minus the reserved slots and the client backends, in one query
        bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        try:
            ((free,),) = _own(raw, FREE_SQL, timeout, "free connections", rows=True)
        finally:
            raw._gp_holder = IDLE
        return int(free)

    # -- leases ------------------------------------------------------------------------------

    def begin(self, raw: Any) -> None:
        """A transaction for the whole lease (``request_connection()``): autocommit off for this
        lease (psycopg2 sends BEGIN before the first statement; no round trip now). A ``BEGIN`` in
        autocommit mode would make psycopg2's ``commit()`` a no-op."""
        if _AUTOCOMMIT.__get__(raw):
            _AUTOCOMMIT.__set__(raw, False)
            raw._gp_begun = True

    def _transaction_clean(self, raw: Any) -> bool:
        """No transaction left open or failed, and the pool's own client settings and autocommit:
        all a return needs with ``reset_session`` off. No round trip."""
        return bool(
            raw.get_transaction_status() == _TX_IDLE
            and not raw._gp_client
            and _AUTOCOMMIT.__get__(raw) is self._autocommit
        )

    def is_clean(self, raw: Any) -> bool:
        """True if the lease of *raw* left nothing for :meth:`finish` to do: :meth:`check_in`'s
        test (with ``reset_session`` off, :meth:`_transaction_clean`), without ending the lease.
        No round trip."""
        return self._transaction_clean(raw) and (
            not self.config.reset_session or not (raw._gp_server or _CURSOR_FACTORY.__get__(raw) is not self._cursor)
        )

    def check_in(self, raw: Any) -> bool:
        # is_clean() written out: one call less on the hot path of every return
        notices, notifies = raw.notices, raw.notifies  # _forget_messages(), inline: every return passes here
        if notices:
            notices.clear()
        if notifies:
            notifies.clear()
        if (
            raw.get_transaction_status() != _TX_IDLE  # a transaction open or failed, or closed
            or raw._gp_server
            or raw._gp_client
            or _AUTOCOMMIT.__get__(raw) is not self._autocommit
            or _CURSOR_FACTORY.__get__(raw) is not self._cursor
        ):
            raw._gp_holder = None  # finish() runs the pool's own statements
            return False
        raw._gp_maybe = False
        raw._gp_holder = IDLE
        return True

    def _check_in_transaction(self, raw: Any) -> bool:
        """check_in() with ``reset_session`` off: only transactions and autocommit."""
        clean = self._transaction_clean(raw)
        raw._gp_holder = IDLE if clean else None  # None: finish() runs the pool's own statements
        return clean

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        raw._gp_holder = None
        _forget_messages(raw)
        status = raw.get_transaction_status()
        if (
            raw._gp_closed_by_user
            or raw.closed
            or status == _TX_ACTIVE  # mid-statement: as psycopg_pool, never reused
            or status == _TX_UNKNOWN  # closed or broken
            or raw._gp_tpc  # a two-phase transaction
            or raw.status == ext.STATUS_PREPARED
        ):
            return DROP
        end_transaction(raw, commit=commit, timeout=self._own_timeout)
        if raw._gp_close:
            return DROP  # settled above: what it changed outlives DISCARD ALL
        if raw._gp_begun:
            _AUTOCOMMIT.__set__(raw, self.config.autocommit)  # request_connection()'s own switch
            raw._gp_begun = False
        outcome = REUSE
        if self._restore_settings(raw):
            outcome = RESET
        if self._reset_server and (failed or raw._gp_server):
            try:
                self._reset_session(raw)
            except Exception as exc:  # noqa: BLE001 - a session not reset is never lent again
                logger.warning("pool %s (%s): session reset failed, dropping the connection: %s",
                               self.pool_name, self.dsn, self.describe_error(exc))  # fmt: skip
                return DROP
            outcome = RESET
        raw._gp_server = raw._gp_maybe = raw._gp_client = False
        raw._gp_holder = IDLE
        return outcome

    def _reset_session(self, raw: PooledPG2Connection) -> None:
        """``DISCARD ALL`` (one round trip), then the pool's own statements again: cursors (``WITH
        HOLD`` ones too), settings back to the session's defaults (startup ``options`` included),
        the session authorization, prepared statements, LISTEN, session advisory locks, temporary
        objects, cached plans and sequence state."""
        discard_all(raw, self._own_timeout)
        if self._setup_sql:
            _own(raw, self._setup_sql, self._own_timeout, "init_command/session")

    def _restore_settings(self, raw: PooledPG2Connection) -> bool:
        """Give the connection object back the pool's settings; True if anything was restored.
        psycopg2 applies isolation level, read-only and deferrable to the next BEGIN, or, in
        autocommit, with ``SET default_transaction_*``: switching back reverts those (its own
        rule), so the round trips happen only for a setting the user changed in autocommit."""
        if not (
            raw._gp_client or raw.cursor_factory is not self._cursor or _AUTOCOMMIT.__get__(raw) is not self._autocommit
        ):
            return False
        changed = False
        wanted = self.config.autocommit
        if self._reset_client:
            if (_ISOLATION_LEVEL.__get__(raw), _READONLY.__get__(raw), _DEFERRABLE.__get__(raw)) != (None, None, None):
                with _bounded(raw, self._own_timeout, "restore the session characteristics"):
                    _BASE.set_session(raw, isolation_level="DEFAULT", readonly="DEFAULT", deferrable="DEFAULT",
                                      autocommit=False)  # fmt: skip
                changed = True
            if raw.encoding != raw._gp_encoding:
                with _bounded(raw, self._own_timeout, "restore the client encoding"):
                    _BASE.set_client_encoding(raw, raw._gp_encoding)
                changed = True
            if raw.cursor_factory is not self._cursor:
                raw.cursor_factory = self._cursor
                changed = True
        if _AUTOCOMMIT.__get__(raw) != wanted:
            _AUTOCOMMIT.__set__(raw, wanted)  # no round trip: the characteristics are the defaults
            changed = True
        return changed
