"""Any DB-API 2 driver through a ``creator``: oracledb, pyodbc, mysqlclient, pymssql, a FastD-style
in-house wrapper...

The pool sizes, waits, ages and counts these connections like any other;
what it can know about a connection it did not build is less, so this
adapter keeps to what every DB-API driver has (``cursor()``, ``commit()``,
``rollback()``, ``close()``) and uses a driver's own extras only where their
meaning is certain.

Opening
    ``creator()`` opens the connection: the connect is bounded only by the
    timeouts the creator passes to its driver (``connect_timeout`` cannot
    reach it). The pool then sets autocommit as configured (an
    ``autocommit`` attribute: pyodbc, oracledb, psycopg, mysql-connector; an
    ``autocommit(on)`` method: PyMySQL, mysqlclient, pymssql; sqlite3's
    ``isolation_level``), runs ``init_command`` and the ``session``
    statements, and commits them unless autocommit is on. A failure closes
    the connection again.

Transactions on return: the rule
    A generic DB-API connection does not say whether a transaction is open,
    so a connection goes back to the pool without a round trip only when the
    driver tells, without asking the server, that none is:

    1. an ``in_transaction`` attribute (sqlite3, mysql-connector) or
       ``transaction_in_progress`` (python-oracledb >= 2): exact;
    2. PyMySQL's ``server_status`` transaction bit: exact for ``begin()``;
    3. autocommit read back as on (the ``autocommit`` attribute is True, or
       ``get_autocommit()`` returns True), on a driver without a ``begin()``
       method (pyodbc, pymssql): no statement can leave a transaction open.
       A driver with ``begin()`` (mysqlclient, cx_Oracle) can hold an
       explicit transaction under autocommit, so its autocommit proves
       nothing.

    Otherwise (autocommit off, or a driver that tells nothing) every return
    ends with ``commit()`` when the ``with`` block exited cleanly and
    ``rollback()`` when it raised or on ``putconn()``: one round trip per
    lease, the price of not knowing. A connection whose commit, rollback or
    state read fails (closed by its user, dead) is dropped.

Checks
    The checkout ping (idle longer than ``check_interval``) runs
    ``ping_query`` if set; else the driver's own ping where it is a plain
    round trip that never reconnects (PyMySQL's ``ping(reconnect=False)``,
    mysqlclient's ``ping()``, oracledb's and cx_Oracle's ``ping()``); else
    ``SELECT 1``. It is bounded by ``check_timeout`` where the driver has a
    per-call timeout (oracledb's ``call_timeout``, pyodbc's ``timeout``,
    PyMySQL's read and write timeouts), otherwise by the driver's own
    timeouts. There is no socket probe: the pool cannot see the socket.

No lease guard
    The other adapters subclass the driver's connection class to refuse use
    outside the lease; an arbitrary driver's class cannot be subclassed
    safely (C types, factories), so a reference kept past ``with`` is not
    caught here. The pool still reclaims a lease its request left out, and
    ``putconn()`` still checks who gives a connection back.

Fork
    A driver has no way to drop a connection without telling the server, and
    its ``close()`` (or its finaliser) in a forked child would end the
    parent's session on the shared socket. An inherited connection is
    therefore never closed in the child: its socket's file descriptor is
    closed where the driver exposes it (PyMySQL's ``_sock``), and the object
    is kept alive for the rest of the process, so no finaliser ever runs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable

from .base import DROP, RESET, REUSE, Connector

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = ["DBAPIConnector", "abandon"]

logger = logging.getLogger("gunicorn_pool")

#: Drivers whose ping() is a plain round trip, and how to call it so it never reconnects.
_PINGS: dict[str, Callable[[Any], Any]] = {
    "pymysql": lambda raw: raw.ping(reconnect=False),
    "MySQLdb": lambda raw: raw.ping(),
    "oracledb": lambda raw: raw.ping(),
    "cx_Oracle": lambda raw: raw.ping(),
}
_IN_TRANS = 0x0001  # MySQL's SERVER_STATUS_IN_TRANS
_BROKEN = "broken"  # the state read raised: closed or dead
_abandoned: list[Any] = []  # inherited connections, kept alive so no finaliser runs


def _is_sqlite3(raw: Any) -> bool:
    """Is *raw* a sqlite3 connection? (sqlite3 is not imported for the question: a creator of
    sqlite3 connections imported it already.)"""
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(raw, sqlite3.Connection)


class DBAPIConnector(Connector):
    """Opens connections with the config's ``creator`` for one pool."""

    adapter = "dbapi"

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn)
        self.config = config
        self._creator: Callable[[], Any] = config.creator
        self._opened_in: dict[int, int] = {}  # id(raw) -> pid that opened it
        self._warned = False

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        raw = self._creator()
        try:
            self._set_autocommit(raw, self.config.autocommit)
            statements = ((self.config.init_command,) if self.config.init_command else ()) + self.config.session
            if statements:
                cursor = raw.cursor()
                try:
                    for statement in statements:
                        cursor.execute(statement)
                finally:
                    cursor.close()
                if not self._autocommit_on(raw):
                    raw.commit()
        except BaseException:
            _close_quietly(raw)
            raise
        self._opened_in[id(raw)] = os.getpid()
        return raw

    def close(self, raw: Any) -> None:
        if self._opened_in.pop(id(raw), None) == os.getpid():
            _close_quietly(raw)
        else:
            abandon(raw)

    def discard(self, raw: Any) -> None:
        # A generic driver cannot drop a connection without a word: in the process that
        # opened it, close() is the only way; anywhere else it would end the parent's session.
        self.close(raw)

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        query = self.config.ping_query
        native = None if query else _PINGS.get(type(raw).__module__.partition(".")[0])
        with _bounded(raw, timeout):
            if native is not None:
                native(raw)
                return
            cursor = raw.cursor()
            try:
                cursor.execute(query or "SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
            if not self._autocommit_on(raw):
                raw.rollback()  # the ping's SELECT may have opened a transaction (InnoDB, Oracle)

    def warm(self, raw: Any, timeout: float) -> None:
        self.ping(raw, timeout)

    # -- leases ------------------------------------------------------------------------------

    def begin(self, raw: Any) -> None:
        """Autocommit off for the rest of the lease where it is on (the return switches it back):
        the driver then runs every statement in a transaction until commit or rollback."""
        if self._autocommit_on(raw):
            self._set_autocommit(raw, False)

    def check_in(self, raw: Any) -> bool:
        try:
            return _transaction_state(raw) is False and self._autocommit_on(raw) == self.config.autocommit
        except Exception:  # noqa: BLE001 - closed: finish() drops it
            return False

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        state = _transaction_state(raw)
        if state == _BROKEN:
            return DROP
        if state is not False:
            raw.commit() if commit else raw.rollback()
        if self._autocommit_on(raw) != self.config.autocommit and self._set_autocommit(raw, self.config.autocommit):
            return RESET  # the user switched autocommit: back to the pool's
        return REUSE

    # -- autocommit ---------------------------------------------------------------------------

    def _set_autocommit(self, raw: Any, on: bool) -> bool:
        """Switch *raw* to autocommit *on* where the driver lets us; False if it has no switch."""
        if _is_sqlite3(raw):
            raw.isolation_level = None if on else "DEFERRED"
            return True
        current = getattr(raw, "autocommit", None)
        if isinstance(current, bool):
            if current != on:
                raw.autocommit = on
            return True
        if callable(current):
            current(on)
            return True
        if on and not self._warned:
            self._warned = True
            logger.warning(
                "pool %s (%s): the driver has no autocommit switch; every connection goes back to the pool"
                " with a commit() or rollback() (one round trip per lease)", self.pool_name, self.dsn,
            )  # fmt: skip
        return False

    @staticmethod
    def _autocommit_on(raw: Any) -> bool:
        """Is autocommit on, as the driver says without a round trip? (False: off or unknown)."""
        if _is_sqlite3(raw):
            return raw.isolation_level is None
        current = getattr(raw, "autocommit", None)
        if isinstance(current, bool):
            return current
        get = getattr(raw, "get_autocommit", None)
        return bool(get()) if callable(get) else False


def _transaction_state(raw: Any) -> Any:
    """False: no transaction open, the driver says so without a round trip (the rule in the module
    docstring); True or None: open or unknown; _BROKEN: the connection would not say (closed)."""
    try:
        for name in ("in_transaction", "transaction_in_progress"):
            flag = getattr(raw, name, None)
            if isinstance(flag, bool):
                return flag
        status = getattr(raw, "server_status", None)
        if type(status) is int and type(raw).__module__.startswith("pymysql"):
            return bool(status & _IN_TRANS) or not DBAPIConnector._autocommit_on(raw)
        if hasattr(raw, "begin"):
            return None  # an explicit BEGIN may be open, whatever autocommit says
        return None if not DBAPIConnector._autocommit_on(raw) else False
    except Exception:  # noqa: BLE001 - a closed connection raises on reads
        return _BROKEN


class _bounded:
    """Bound the driver calls of a block by *timeout* where the driver has a per-call timeout."""

    def __init__(self, raw: Any, timeout: float) -> None:
        self.raw = raw
        self.timeout = timeout
        self.saved: list[tuple[str, Any]] = []

    def __enter__(self) -> None:
        raw, timeout = self.raw, self.timeout
        module = type(raw).__module__.partition(".")[0]
        if module in ("oracledb", "cx_Oracle"):
            self._swap("call_timeout", max(1, int(timeout * 1000)))  # milliseconds
        elif module == "pyodbc":
            self._swap("timeout", max(1, int(timeout + 0.999)))  # whole seconds
        elif module == "pymysql":
            self._swap("_read_timeout", timeout)
            self._swap("_write_timeout", timeout)

    def _swap(self, name: str, value: Any) -> None:
        self.saved.append((name, getattr(self.raw, name)))
        setattr(self.raw, name, value)

    def __exit__(self, *exc: Any) -> None:
        for name, value in reversed(self.saved):
            try:
                setattr(self.raw, name, value)
            except Exception:  # noqa: BLE001 - a connection closed meanwhile
                pass


def _close_quietly(raw: Any) -> None:
    try:
        raw.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail
        pass


def abandon(raw: Any) -> None:
    """Forget *raw* without closing it (it belongs to another process): close its socket's file
    descriptor where the driver exposes it, and keep the object alive so no finaliser runs."""
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.close()  # this process's descriptor only; no shutdown(), no goodbye
        except OSError:
            pass
    _abandoned.append(raw)
    try:  # also through interpreter shutdown, which clears module globals and runs finalisers
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(raw))
    except (ImportError, AttributeError):  # no CPython C API (PyPy)
        pass
