"""The Connector contract: how one kind of connection is opened, checked, lent, settled and closed.

The pool core (:mod:`gunicorn_pool.pool`) knows nothing of drivers; it calls
these methods, and each adapter (:mod:`.mysql`, :mod:`.sqlite`, ...) answers
for its driver. A connector knows nothing of pools either: it is given one
connection at a time.

Per lease the pool calls, in order::

    connect()                   once per physical connection (bounded)
    probe(raw)                  once per connection: a no-round-trip check, or None
    ping(raw, timeout)          on checkout when the connection sat idle a while
    lend(raw, holder)           the lease starts (holder: who may use it, or None)
    check_in(raw) -> clean?     the lease ends; one call on the hot path
    finish(raw, commit=...)     only when check_in() said "not clean"
    close(raw) / discard(raw)   when the slot closes: politely, or without a word

``close`` and ``discard`` never raise. Everything else raises the driver's
error, which the pool reports through :meth:`Connector.describe_error` (the
connector's password masked).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import describe

__all__ = ["DROP", "RESET", "REUSE", "Connector"]

_MASK = "***"

#: Outcomes of :meth:`Connector.finish`.
REUSE = "reuse"
RESET = "reset"
DROP = "drop"


class Connector:
    """Base class of every connector; subclasses implement :meth:`connect`, :meth:`close`
    and :meth:`discard` and override the rest where their driver allows better."""

    #: The adapter's name, as in a config's ``adapter`` key.
    adapter = ""

    def __init__(self, *, pool_name: str = "", address: str = "", dsn: str = "", password: str = "") -> None:
        self.pool_name = pool_name
        self.address = address  #: host:port or path, for messages (no secret)
        self.dsn = dsn  #: the connection URL with the password masked, for logs
        self._password = password

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        """Open one connection, bounded by the connect timeout, with the session the config asks for."""
        raise NotImplementedError

    def close(self, raw: Any) -> None:
        """Close *raw* and tell the server (it ends the session now). Never raises."""
        raise NotImplementedError

    def discard(self, raw: Any) -> None:
        """Drop *raw* without a word to the server (after fork, or mid-protocol). Never raises."""
        raise NotImplementedError

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        """Raise if *raw* is dead; take at most *timeout* seconds."""
        cursor = raw.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        """A check of idle *raw* without a round trip, prepared once per connection, or None.

        The pool keeps it with the connection and calls it on checkout; a truthy
        result means "ping before lending"."""
        return None

    def warm(self, raw: Any, timeout: float) -> None:
        """Give *raw* its first use now, before traffic: a ping and one trivial query."""
        self.ping(raw, timeout)
        Connector.ping(self, raw, timeout)

    # -- leases ------------------------------------------------------------------------------

    def lend(self, raw: Any, holder: Optional[int]) -> None:
        """A lease of *raw* starts; *holder* (a thread or greenlet id) alone may use it, or anyone if None."""

    def check_in(self, raw: Any) -> bool:
        """The lease of *raw* ends: True if it is clean and goes straight back to the pool;
        False if :meth:`finish` must run first. One call on the hot path."""
        return True

    def finish(self, raw: Any, *, commit: bool) -> str:
        """End what the user left open on *raw*: commit (*commit*) or roll back an open
        transaction, restore a session the user changed. Returns :data:`REUSE`, :data:`RESET`
        (reusable after its session was reset) or :data:`DROP` (must not be lent again).
        Raises the driver's error if that fails (the pool then drops *raw*)."""
        return REUSE

    # -- messages ---------------------------------------------------------------------------

    def describe_error(self, exc: BaseException) -> str:
        """*exc* in one line, the server's message kept and the password masked."""
        text = describe(exc)
        return text.replace(self._password, _MASK) if self._password else text
