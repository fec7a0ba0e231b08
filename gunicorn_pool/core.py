"""What the pool core owns and the layers above plug into: the lease sink and the observer.

The core imports nothing above it. The request layer (:mod:`gunicorn_pool.request`)
and the metrics layer (:mod:`gunicorn_pool.otel`) attach from above:

- :data:`LEASE_SINK`: a context variable the core owns and reads on every
  checkout. The request layer sets it to the current request's scope; a lease
  taken while it is set is appended to the sink's ``leases``, so the request
  can reclaim what its code left out when it ends. Unset (None), nothing is
  recorded.
- ``pool.observer``: a :class:`PoolObserver`, told of each connect, wait and
  lease as it happens (OpenTelemetry's histograms).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from .slot import Slot

__all__ = ["LEASE_SINK", "LeaseSink", "PoolObserver"]


class LeaseSink(Protocol):
    """Where leases taken during one request are recorded (the request layer's scope is one).

    ``leases`` gets ``(pool, slot, lease number)`` for each lease that starts
    while the sink is current; ``owner`` is the thread, greenlet or task that
    runs the request (a lease taken by another one was handed off, see
    :mod:`gunicorn_pool.request`).
    """

    owner: int
    leases: list[tuple[Any, Slot, int]]


#: The sink of the request running in this thread, greenlet or task (None: no request).
LEASE_SINK: contextvars.ContextVar[Optional[LeaseSink]] = contextvars.ContextVar("gunicorn_pool_lease_sink",
                                                                                 default=None)  # fmt: skip


class PoolObserver(Protocol):
    """What a pool tells an observer (``pool.observer``), in seconds, as it happens:
    the distributions behind OpenTelemetry's histograms (gunicorn_pool.otel)."""

    def connected(self, seconds: float) -> None:
        """A new connection opened, taking *seconds*."""

    def waited(self, seconds: float) -> None:
        """A caller obtained a connection *seconds* after asking (0 from the idle stack)."""

    def used(self, seconds: float) -> None:
        """A lease of *seconds* ended."""
