"""GunicornPool: a SQLAlchemy pool whose checkouts are checkouts of a gunicorn_pool ConnectionPool.

SQLAlchemy keeps each DBAPI connection in a ``_ConnectionRecord`` (its
:class:`~sqlalchemy.pool.ConnectionPoolEntry`) and asks its pool for a record
on checkout (``Pool._do_get()``) and gives it back on checkin
(``Pool._do_return_conn()``). Here each record is one slot of a
:class:`~gunicorn_pool.pool.ConnectionPool`:

- the core's connector opens a connection by creating a record
  (``Pool._create_connection()``): SQLAlchemy's creator (the dialect's
  ``connect()`` with the engine's arguments) and its ``connect`` events (the
  dialect's initialisation, ``on_connect``) run as they would in QueuePool;
- ``_do_get()`` is ``ConnectionPool.getconn()``: sizing per worker type, FIFO
  waits bounded by ``timeout`` (:class:`PoolTimeout`, also a
  ``sqlalchemy.exc.TimeoutError``) and ``max_waiting``, the checkout probe and
  ping, lifetime and idle limits, fork adoption, stats, and a lease its request
  left out reclaimed when the request ends;
- ``_do_return_conn()`` is ``putconn()``.

Transactions are SQLAlchemy's: connections run with the driver's autocommit
off (the pool switches it off if a creator turned it on, unless the engine's
``isolation_level`` is ``AUTOCOMMIT``). Sessions are the pool's: the driver's
rules (:mod:`.sessions`) read the transaction status exactly where the driver
allows (PyMySQL, psycopg 3, psycopg2, sqlite3), so SQLAlchemy's rollback on
return sends nothing when no transaction is open (PyMySQL; the other drivers
skip it themselves) and one left open (``pool_reset_on_return=None``, a
failed statement) is rolled back; a session a user may have changed (``SET``,
a function or procedure call, a lock, a temporary table...) is reset before
the next user, then the engine's ``connect`` events run again on it. A driver
without such rules keeps SQLAlchemy's reset on return only. A record
SQLAlchemy invalidated (a disconnect, an interrupted statement) or reconnected
comes back with another or no DBAPI connection: it is dropped and its capacity
freed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Optional

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.pool.base import ResetStyle

from ..connectors.base import DROP, RESET, REUSE, Connector, select_one
from ..connectors.pgcalls import Verdicts
from ..errors import LeaseError, PoolTimeout
from ..options import DEFAULTS, PoolOptions
from ..pool import ConnectionPool
from .sessions import DriverRules, rules_for

__all__ = ["GunicornPool", "OWN_TIMEOUT", "SQLAlchemyPoolTimeout"]

_IN_TRANS = 0x0001  # MySQL's SERVER_STATUS_IN_TRANS (the asyncio connector reads aiomysql's)

#: Seconds each of the pool's own statements may take (ROLLBACK, the session reset, the reads of
#: a new connection): past it the connection is dropped.
OWN_TIMEOUT = 5.0

logger = logging.getLogger("gunicorn_pool")


class SQLAlchemyPoolTimeout(PoolTimeout, sa_exc.TimeoutError):
    """No connection became free within ``timeout``: gunicorn_pool's PoolTimeout and
    SQLAlchemy's ``TimeoutError`` at once, so either ``except`` catches it."""


class _Entry:
    """What the connector knows of one record: the DBAPI connection it opened, where, which driver
    (its class's top module, as opened), and its driver's rules and what they kept of the session
    as the connect left it (:mod:`.sessions`; the asyncio connector keeps neither)."""

    __slots__ = ("dbapi", "driver", "pid", "rules", "state")

    def __init__(self, dbapi: Any, driver: str, rules: Optional[DriverRules] = None, state: Any = None) -> None:
        self.dbapi = dbapi
        self.pid = os.getpid()
        self.driver = driver
        self.rules: DriverRules = rules if rules is not None else DriverRules()
        self.state = state


class RecordConnector(Connector):
    """The connector of a :class:`GunicornPool`'s core: its connections are SQLAlchemy records,
    their sessions watched and reset by their driver's rules (:mod:`.sessions`)."""

    adapter = "sqlalchemy"

    def __init__(self, pool: GunicornPool, *, pool_name: str, address: str, dsn: str, password: str) -> None:
        super().__init__(pool_name=pool_name, address=address, dsn=dsn, password=password)
        self._pool = pool
        self._entries: dict[int, _Entry] = {}  # id(record) -> what was opened
        self._warned = False
        isolation = getattr(pool._dialect, "_on_connect_isolation_level", None)  # create_engine(isolation_level=)
        self._autocommit_wanted = isinstance(isolation, str) and isolation.upper() == "AUTOCOMMIT"
        #: Bound of the pool's own statements (ROLLBACK, the session reset, the first connect's reads).
        self.own_timeout = OWN_TIMEOUT
        #: The PostgreSQL statement scan's verdicts, judged by the server's builtins (read once).
        self.verdicts = Verdicts()
        self.names_read = False

    # -- the physical connection ----------------------------------------------------------

    def connect(self) -> Any:
        record = self._pool._create_connection()  # SQLAlchemy's creator, then its connect events
        dbapi: Any = record.dbapi_connection
        driver, rules = type(dbapi).__module__.partition(".")[0], rules_for(dbapi)
        try:
            if not self._autocommit_wanted and rules.autocommit_on(dbapi):
                rules.autocommit_off(dbapi)
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "pool %s (%s): the engine's creator returned connections in autocommit mode; switched"
                        " off (SQLAlchemy's transactions need it off; ask for isolation_level='AUTOCOMMIT'"
                        " to keep it)", self.pool_name, self.dsn,
                    )  # fmt: skip
            state = rules.adopt(dbapi, self)  # what the connect events ran leaves nothing open
        except BaseException:
            record.close()
            raise
        self._entries[id(record)] = _Entry(dbapi, driver, rules, state)
        return record

    def close(self, raw: Any) -> None:
        entry = self._entries.get(id(raw))
        if entry is None or entry.pid != os.getpid():
            self.discard(raw)
            return
        del self._entries[id(raw)]
        try:
            raw.close()  # SQLAlchemy's close events, then the dialect's do_close()
        except Exception:  # noqa: BLE001 - never raises (SQLAlchemy logs a failed close)
            pass

    def discard(self, raw: Any) -> None:
        entry = self._entries.pop(id(raw), None)
        current = raw.dbapi_connection
        dbapis = [c for c in (entry.dbapi if entry else None, current) if c is not None]
        inherited = entry is not None and entry.pid != os.getpid()
        for dbapi in dict.fromkeys(dbapis):  # the one opened, and one SQLAlchemy reconnected since
            rules_for(dbapi).drop(dbapi, inherited=inherited)

    # -- health ---------------------------------------------------------------------------

    def ping(self, raw: Any, timeout: float) -> None:
        entry = self._entries.get(id(raw))
        dbapi = raw.dbapi_connection
        if entry is None or dbapi is not entry.dbapi:
            raise sa_exc.DisconnectionError("the record lost its connection")
        entry.rules.ping(dbapi, timeout, self._pool._dialect)

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        dbapi = raw.dbapi_connection
        return rules_for(dbapi).probe(dbapi)

    def warm(self, raw: Any, timeout: float) -> None:
        self.ping(raw, timeout)
        entry = self._entries[id(raw)]
        select_one(entry.dbapi)  # SELECT 1 through the driver's cursor
        entry.rules.settle(entry.dbapi, commit=False, timeout=timeout)  # rolled back if it opened a transaction
        entry.rules.ready(entry, timeout)

    # -- leases ------------------------------------------------------------------------------

    def check_in(self, raw: Any) -> bool:
        entry = self._entries.get(id(raw))
        if entry is None or raw.dbapi_connection is not entry.dbapi:
            return False  # invalidated or reconnected by SQLAlchemy: finish() drops it
        clean = entry.rules.clean(entry)
        if clean is None:  # a driver that does not say: SQLAlchemy's reset, if any, decides
            return self._pool._reset_on_return is not ResetStyle.reset_none
        return clean

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """End the transaction (or roll back one that may be open); reset a session that may have
        changed, then run the engine's ``connect`` events again on it (see :mod:`.sessions`)."""
        entry = self._entries.get(id(raw))
        dbapi = raw.dbapi_connection
        if entry is None or dbapi is not entry.dbapi:
            return DROP
        rules, timeout = entry.rules, self.own_timeout
        if rules.unusable(dbapi):
            return DROP
        rules.settle(dbapi, commit=commit, timeout=timeout)
        if not rules.needs_reset(entry, failed):
            rules.ready(entry, timeout)
            return REUSE
        server = rules.reset(entry, failed, timeout)
        if server is None:
            return DROP  # it cannot be reset: a new connection replaces it
        if server:
            self._pool.dispatch.connect(dbapi, raw)  # the session as the connect events left it
        rules.ready(entry, timeout)
        return RESET


class GunicornPool(Pool):
    """A SQLAlchemy :class:`~sqlalchemy.pool.Pool` lending the connections of a gunicorn_pool
    :class:`~gunicorn_pool.pool.ConnectionPool` (see the module docstring).

    Usually built by :class:`~gunicorn_pool.sqlalchemy.EnginePool` or
    :func:`~gunicorn_pool.sqlalchemy.adopt`; to build one yourself from an engine's pool::

        engine.pool = GunicornPool.from_pool(engine.pool, pool_name="default", max_size=4)

    *options* (or keyword *overrides* of it) size and bound the core; sizes left
    unset follow the worker type (sync 1, gthread ``--threads``, gevent 10).
    """

    #: The core's front end and connector (:class:`~gunicorn_pool.sqlalchemy.AsyncGunicornPool`
    #: sets the asyncio ones).
    _core_class: type[ConnectionPool] = ConnectionPool
    _connector_class: Any = RecordConnector

    def __init__(self, creator: Any, *, options: PoolOptions = DEFAULTS, pool_name: str = "sqlalchemy",
                 url: Any = None, **kw: Any) -> None:  # fmt: skip
        super().__init__(creator, **kw)
        self._url = url
        described = describe_url(url) if url is not None else {"address": pool_name, "dsn": "", "password": ""}
        options = dataclasses.replace(options, owner_check=False)  # SQLAlchemy guards its connections
        connector = self._connector_class(self, pool_name=pool_name, **described)
        #: The gunicorn_pool core this pool lends from (``stats()``, ``open()``, sizes).
        self.core = self._core_class(connector, name=pool_name, options=options)
        self._getconn, self._putconn = self.core.getconn, self.core.putconn

    @classmethod
    def from_pool(cls, pool: Pool, *, pool_name: str = "sqlalchemy", url: Any = None,
                  options: Optional[PoolOptions] = None) -> GunicornPool:  # fmt: skip
        """A GunicornPool with *pool*'s creator, dialect, events, echo, reset-on-return and
        pre-ping (what SQLAlchemy's own ``recreate()`` copies), named *pool_name*; *url* (the
        engine's) names the server in messages. *pool*'s ``pool_recycle`` becomes
        ``max_lifetime`` when shorter; its sizes are not taken (they follow the worker type
        unless *options* set them)."""
        opts = options or DEFAULTS
        recycle = pool._recycle
        if 0 < recycle < opts.max_lifetime:
            opts = dataclasses.replace(opts, max_lifetime=float(recycle))
        return cls(pool._creator, options=opts, pool_name=pool_name, url=url, **_sa_args(pool))

    # -- SQLAlchemy's Pool interface -----------------------------------------------------------

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            record: ConnectionPoolEntry = self._getconn()
        except PoolTimeout as exc:
            raise SQLAlchemyPoolTimeout(str(exc)) from None
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            self._putconn(record)
        except LeaseError:
            pass  # reclaimed at the end of its request (closed already), or lent before a fork

    def recreate(self) -> GunicornPool:
        """A new pool like this one (``engine.dispose()`` calls it after :meth:`dispose`)."""
        return type(self)(
            self._creator, options=self.core.options, pool_name=self.core.name, url=self._url, **_sa_args(self)
        )

    def dispose(self) -> None:
        """Close the core: idle connections now, lent ones when they come back."""
        self.core.close()

    def status(self) -> str:
        """One line: the core's sizes and figures."""
        return repr(self.core)

    def stats(self) -> dict[str, int]:
        """The core's figures (:meth:`ConnectionPool.stats`)."""
        return self.core.stats()


def _sa_args(pool: Pool) -> dict[str, Any]:
    """The constructor arguments SQLAlchemy's ``recreate()`` copies from *pool*."""
    return {
        "echo": pool.echo,
        "logging_name": pool._orig_logging_name,
        "reset_on_return": pool._reset_on_return,
        "pre_ping": pool._pre_ping,
        "_dispatch": pool.dispatch,
        "dialect": pool._dialect,
    }


def describe_url(url: Any) -> dict[str, str]:
    """``address`` (host:port, or the SQLite file), ``dsn`` (the URL, password masked) and
    ``password`` of a SQLAlchemy URL, for messages that never show the password."""
    if url.get_backend_name() == "sqlite":
        address = url.database or ":memory:"
    else:
        host = url.host or "localhost"
        address = f"[{host}]" if ":" in host else host
        address += f":{url.port}" if url.port else ""
    return {"address": address, "dsn": url.render_as_string(hide_password=True), "password": url.password or ""}
