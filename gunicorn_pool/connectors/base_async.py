"""The asyncio connector contract: :class:`~gunicorn_pool.connectors.base.Connector`'s, with
``await`` on every round trip.

An :class:`AsyncConnector` serves :class:`gunicorn_pool.pool_async.AsyncConnectionPool`.
What costs a round trip is a coroutine (``connect``, ``close``, ``ping``,
``warm``, ``begin``, ``finish``, ``free_connections``); what the pool core
calls on its hot paths without a round trip stays synchronous and is shared
with the synchronous connectors (:class:`~gunicorn_pool.connectors.base.ConnectorBase`:
``probe``, ``lend``, ``check_in``, ``discard``, ``describe_error``), so a
request's leaks are reclaimed (a ``discard``) the same way in both worlds and
the zero-timeout socket probe works on asyncio sockets too.

``close`` and ``discard`` never raise. A connector module keeps the rules of
its database in plain functions shared with its synchronous twin (what is a
clean session, which statements change it, how it is reset): the asyncio
connector differs only in how it waits.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

from ..core import LEASE_SINK, REUSE
from .base import CLOSED, IDLE, ConnectorBase, LeaseGuard, lease_error

__all__ = ["AsyncConnector", "TaskGuard", "stream_probe", "task_ident"]


def task_ident() -> int:
    """Who is running: the current asyncio task (its id), or the thread outside a task."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop runs in this thread (a finaliser, a close at exit)
        task = None
    return id(task) if task is not None else threading.get_ident()


def stream_probe(reader: asyncio.StreamReader) -> Callable[[], bool]:
    """The checkout probe of a connection over an asyncio stream (aiomysql, ``redis.asyncio``):
    anything in its buffer, EOF, or an error. The loop reads the socket whenever it runs, so
    what the server sent while the connection sat idle (a KILL's error and EOF, a restart) is
    there by the next checkout: no system call."""

    def probe() -> bool:
        return bool(reader._buffer) or reader.at_eof() or reader.exception() is not None  # type: ignore[attr-defined]

    return probe


class TaskGuard(LeaseGuard):
    """:class:`~gunicorn_pool.connectors.base.LeaseGuard` for an asyncio connection: its holder
    is the task that took it (``_gp_holder``), and the request that task ran (``_gp_scope``).

    A task started inside that request (``asyncio.gather``, ``create_task``, ``asyncio.wait_for``,
    which runs its coroutine in a task of its own before Python 3.12) runs in a copy of the
    request's context, so it sees the same request scope: it may use the connection too. A
    reference kept past the lease and used by a later request (another scope), or used after
    the connection went back (IDLE) or was closed by the pool (CLOSED), is refused before
    anything is sent. The connector's ``lend`` sets both fields (:meth:`arm`).
    """

    _gp_scope: Any = None

    def _gp_check(self) -> None:
        holder = self._gp_holder
        if holder is not None and holder != task_ident():
            scope = self._gp_scope
            if scope is None or holder == IDLE or holder == CLOSED or LEASE_SINK.get() is not scope:
                raise lease_error(self._gp_pool, holder, self._gp_taken_at)

    def arm(self, holder: Optional[int], taken_at: str) -> None:
        """A lease starts, taken by task *holder* (None: anyone) at *taken_at*."""
        self._gp_holder = holder
        self._gp_taken_at = taken_at
        self._gp_scope = LEASE_SINK.get() if holder is not None else None
        self._gp_closed_by_user = False


class AsyncConnector(ConnectorBase):
    """Base class of every asyncio connector (see the module docstring)."""

    async def connect(self) -> Any:
        """Open one connection, bounded by the connect timeout, with the session the config asks for."""
        raise NotImplementedError

    async def close(self, raw: Any) -> None:
        """Close *raw* and tell the server (it ends the session now). Never raises."""
        raise NotImplementedError

    async def ping(self, raw: Any, timeout: float) -> None:
        """Raise if *raw* is dead; take at most *timeout* seconds."""
        raise NotImplementedError

    async def warm(self, raw: Any, timeout: float) -> None:
        """Give *raw* its first use now, before traffic (a ping by default)."""
        await self.ping(raw, timeout)

    async def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """How many more connections the server accepts now (None: no such figure)."""
        return None

    async def begin(self, raw: Any) -> None:
        """Start a transaction on lent *raw* now, whatever the pool's ``autocommit`` (the
        request's connection under an ASGI request scope)."""

    async def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """End what the user left open on *raw* (see ``Connector.finish``): REUSE, RESET or DROP."""
        return REUSE
