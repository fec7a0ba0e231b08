"""Errors raised by gunicorn_pool.

Every error the package raises on purpose derives from :class:`PoolError`, so
``except gunicorn_pool.PoolError`` catches all of them. The hierarchy is small
and mirrors psycopg_pool's:

- :class:`ConfigError` (also a ``ValueError``): a pool's configuration is wrong
  (unknown key, bad URL, missing password file). Raised when the config is
  built, so a typo stops start-up with a message naming the pool and the key.
- :class:`PoolTimeout`: no connection became free within ``timeout`` seconds.
- :class:`TooManyRequests`: ``max_waiting`` callers already wait; this one is
  turned away at once instead of queueing.
- :class:`PoolClosed`: the pool was closed; it hands out nothing any more.
- :class:`ConnectError`: opening a server connection failed, or the pool is
  backing off after recent failures. The message names the pool and
  ``host:port`` and never contains the password.
- :class:`PoolStartupError`: a pool in ``strict`` mode could not warm up when
  the server first started.
- :class:`LeaseError`: a connection was used or given back outside its lease:
  after it was returned, by a thread or greenlet that did not take it, after
  the pool reclaimed it at the end of a request, or ``putconn()`` of a
  connection the pool did not lend to this caller.

:func:`describe` turns a driver error into one line that carries the server's
message and never the password.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "ConnectError",
    "LeaseError",
    "PoolClosed",
    "PoolError",
    "PoolStartupError",
    "PoolTimeout",
    "TooManyRequests",
    "describe",
]


class PoolError(Exception):
    """Base class of every error gunicorn_pool raises on purpose."""


class ConfigError(PoolError, ValueError):
    """A pool configuration is invalid (unknown key, bad value, bad URL)."""


class PoolTimeout(PoolError):
    """No connection became available within the pool's ``timeout``."""


class TooManyRequests(PoolError):
    """``max_waiting`` callers already wait for a connection."""


class PoolClosed(PoolError):
    """The pool is closed and hands out no connection."""


class ConnectError(PoolError):
    """A server connection could not be opened (or the pool is backing off)."""


class PoolStartupError(PoolError):
    """A ``strict`` pool failed to warm up on the server's first start."""


class LeaseError(PoolError):
    """A connection was used or given back outside its lease (see the module docstring)."""


def describe(exc: BaseException) -> str:
    """A one-line description of a driver error: ``(code) message``, or the message."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
