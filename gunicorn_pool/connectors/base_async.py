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

from typing import Any, Optional

from ..core import REUSE
from .base import ConnectorBase

__all__ = ["AsyncConnector"]


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
