"""The Connector contract: how one kind of connection is opened, checked, lent, settled and closed.

The pool core (:mod:`gunicorn_pool.pool`) knows nothing of drivers; it calls
these methods, and each adapter (:mod:`.mysql`, :mod:`.sqlite`, ...) answers
for its driver. A connector knows nothing of pools either: it is given one
connection at a time.

Per lease the pool calls, in order::

    connect()                     once per physical connection (bounded)
    probe(raw)                    once per connection: a no-round-trip check, or None
    ping(raw, timeout)            on checkout when the connection sat idle a while
    (lease starts)                the pool arms a guarded connection's LeaseGuard;
    lend(raw, holder, taken_at)   then per-lease work, for connectors that have some
    check_in(raw) -> clean?       the lease ends; one call on the hot path
    finish(raw, commit=...)       only when check_in() said "not clean"
    close(raw) / discard(raw)     when the slot closes: politely, or without a word

``close`` and ``discard`` never raise. Everything else raises the driver's
error, which the pool reports through :meth:`Connector.describe_error` (the
connector's password masked).

The lease guard
---------------
Where the driver lets us, the connection object is an instance of a small
subclass of the driver's own class (so it *is* a ``pymysql.Connection``, a
``psycopg.Connection``...) that mixes in :class:`LeaseGuard`. At the driver's
one command chokepoint it checks ``_gp_holder``:

- ``None``: anyone may use it (the pool's own use: ping, rollback, reset; or
  a pool with ``owner_check`` off, such as the SQLAlchemy and Django ones,
  whose frameworks guard their connections themselves);
- a thread or greenlet id: only that caller (the one that took it);
- :data:`IDLE`: nobody: it is back in the pool;
- :data:`CLOSED`: nobody: the pool closed or dropped it (a leak reclaimed at
  the end of its request ends here).

A use that fails the check raises :class:`~gunicorn_pool.errors.LeaseError`
before anything is sent, so a reference kept past its lease can never
interleave with the next borrower's protocol stream. ``close()`` by the user
during the lease marks the connection so the pool drops it at return, and is
refused outside the lease; on a ``request_connection()`` connection it does
nothing (its request gives it back when it ends, committed or rolled back) and
is counted then.
"""

from __future__ import annotations

import functools
import select
from typing import Any, Callable, Optional

from .._concurrency import get_ident, original_poll
from ..core import DROP, RESET, REUSE
from ..errors import LeaseError, describe

__all__ = [
    "CLOSED", "DROP", "IDLE", "RESET", "REUSE", "Connector", "ConnectorBase", "LeaseGuard", "lease_error", "select_one",
    "socket_probe",
]  # fmt: skip

_MASK = "***"

#: Outcomes of :meth:`Connector.finish` (REUSE, RESET, DROP) are the core's: see gunicorn_pool.core.

#: Values of LeaseGuard._gp_holder besides None (anyone) and a thread/greenlet id.
IDLE = -1
CLOSED = -2


def lease_error(pool_name: str, holder: Optional[int], taken_at: str) -> LeaseError:
    """The LeaseError for a use of a connection whose holder is *holder* (not the caller)."""
    where = f" (it was taken at {taken_at})" if taken_at else ""
    if holder == IDLE:
        why = "used after it was returned to the pool"
    elif holder == CLOSED:
        why = "used after the pool closed it (a lease not given back by the end of its request is closed)"
    else:
        why = "used by a thread or greenlet other than the one that took it"
    return LeaseError(f"pool {pool_name!r}: connection {why}{where}")


class LeaseGuard:
    """Mixin for a driver's connection class: who may use this connection now (see above).

    Subclasses call :meth:`_gp_check` (or inline it) where every command
    passes, and :meth:`_gp_user_close` from their ``close()``.
    """

    _gp_holder: Optional[int] = None
    _gp_pool = ""
    _gp_taken_at = ""
    _gp_closed_by_user = False
    _gp_request = False  # lent by request_connection(): its request gives it back
    _gp_close_asked = False  # close() was called during such a lease

    def _gp_check(self) -> None:
        holder = self._gp_holder
        if holder is not None and holder != get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)

    def _gp_user_close(self) -> bool:
        """The user closes the connection: True if the driver's close must run now (allowed only
        by its holder; the pool drops the connection at return). False: nothing more to do, the
        pool closed it already, or it is a request_connection() connection, which its request
        gives back when it ends (the attempt is counted then)."""
        if self._gp_holder == CLOSED:
            return False
        self._gp_check()
        if self._gp_request:
            self._gp_close_asked = True
            return False
        if self._gp_holder is not None:
            self._gp_closed_by_user = True
        return True


class ConnectorBase:
    """What every connector has, synchronous (:class:`Connector`) or asyncio
    (:class:`~gunicorn_pool.connectors.base_async.AsyncConnector`): its identity, and the calls
    the pool core makes without a round trip (probe, lend, check_in, discard, messages)."""

    #: The adapter's name, as in a config's ``adapter`` key.
    adapter = ""
    #: True if connections are LeaseGuard instances: the pool then writes ``_gp_holder`` and
    #: ``_gp_taken_at`` on them when a lease starts, and :meth:`lend` need not.
    guarded = False
    #: Seconds a statement may wait for the server when the config sets no bound of its own
    #: (None: unbounded). The service layer sets it from the worker it runs in (gunicorn's
    #: ``timeout`` in gthread and gevent workers, which gunicorn does not end when a request
    #: hangs); connections opened from then on use it.
    query_bound: Optional[float] = None

    def __init__(self, *, pool_name: str = "", address: str = "", dsn: str = "", password: str = "") -> None:
        self.pool_name = pool_name
        self.address = address  #: host:port or path, for messages (no secret)
        self.dsn = dsn  #: the connection URL with the password masked, for logs
        self._password = password

    @property
    def lends(self) -> bool:
        """True if this connector has per-lease work (:meth:`lend` overridden): the pool calls it."""
        return type(self).lend is not ConnectorBase.lend

    def discard(self, raw: Any) -> None:
        """Drop *raw* without a word to the server (after fork, or mid-protocol). Never raises."""
        raise NotImplementedError

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        """A check of idle *raw* without a round trip, prepared once per connection, or None.

        The pool keeps it with the connection and calls it on checkout; a truthy
        result means "ping before lending"."""
        return None

    def lend(self, raw: Any, holder: Optional[int], taken_at: str = "") -> None:
        """A lease of *raw* starts, taken by *holder* (a thread, greenlet or task id; None:
        anyone) at *taken_at* (``file:line``, may be empty). A connector with per-lease work
        overrides this; the pool calls it only then (a :attr:`guarded` connector's guard is armed
        by the pool)."""

    def check_in(self, raw: Any) -> bool:
        """The lease of *raw* ends: True if it is clean and goes straight back to the pool (its
        guard then reads IDLE); False if ``finish()`` must run first (the guard then lets the
        pool's own statements through). One call on the hot path, no round trip."""
        return True

    def is_clean(self, raw: Any) -> bool:
        """True if the lease of *raw* left nothing for ``finish()`` to do: :meth:`check_in`'s test
        without ending the lease, for a framework that keeps a connection across its requests
        (Django in a sync worker). The default, False, makes it give the connection back."""
        return False

    def describe_error(self, exc: BaseException) -> str:
        """*exc* in one line, the server's message kept and the password masked."""
        text = describe(exc)
        return text.replace(self._password, _MASK) if self._password else text


class Connector(ConnectorBase):
    """Base class of every synchronous connector; subclasses implement :meth:`connect`,
    :meth:`close` and :meth:`discard` and override the rest where their driver allows better."""

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        """Open one connection, bounded by the connect timeout, with the session the config asks for."""
        raise NotImplementedError

    def close(self, raw: Any) -> None:
        """Close *raw* and tell the server (it ends the session now). Never raises."""
        raise NotImplementedError

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        """Raise if *raw* is dead; take at most *timeout* seconds."""
        select_one(raw)

    def warm(self, raw: Any, timeout: float) -> None:
        """Give *raw* its first use now, before traffic: a ping and one trivial query."""
        self.ping(raw, timeout)
        select_one(raw)

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """How many more connections the server accepts now, read on idle *raw* within
        *timeout* (the pool's own use); None where the adapter has no such figure."""
        return None

    # -- leases ------------------------------------------------------------------------------

    def begin(self, raw: Any) -> None:
        """Start a transaction on lent *raw* now, whatever the pool's ``autocommit``:
        ``request_connection()`` makes a whole request one transaction, committed or rolled back
        when it ends. The default does nothing: a DB-API connection is transactional unless its
        autocommit is on."""

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """End what the user left open on *raw*: commit (*commit*) or roll back an open
        transaction, restore a session the user changed. *failed*: the lease ended with an
        exception, so the user's clean-up code may have been skipped: restore the session even if
        no change was seen. Returns :data:`REUSE`, :data:`RESET`
        (reusable after its session was reset; the guard then reads IDLE) or :data:`DROP` (must
        not be lent again: closed by the user, mid-result, or not resettable). Raises the
        driver's error if that fails (the pool then drops *raw*)."""
        return REUSE


def _suspect() -> bool:
    return True


def select_one(raw: Any) -> None:
    """``SELECT 1`` through the DB-API cursor of *raw*: the ping any SQL driver understands."""
    cursor = raw.cursor()
    try:
        cursor.execute("SELECT 1")
        cursor.fetchall()
    finally:
        cursor.close()


def socket_probe(sock: Any) -> Optional[Callable[[], Any]]:
    """The checkout probe of a connection over *sock*: a zero-timeout ``poll()``, no round trip.

    An idle session's socket has nothing to read; EOF, a reset or bytes (the
    server ended the session: KILL, pg_terminate_backend, a restart, an idle
    timeout) make it readable. The poller is built and the socket registered
    once, so each checkout pays one ``poll`` call. No socket: always suspect.
    A closed socket reports POLLNVAL, so it stays suspect too. None where the
    OS has no ``poll``.
    """
    if sock is None:
        return _suspect
    make_poller = original_poll()  # the OS poll, also once gevent patched select
    if make_poller is None:
        return None
    poller = make_poller()
    poller.register(sock, select.POLLIN)  # POLLHUP and POLLERR are always reported
    return functools.partial(poller.poll, 0)
