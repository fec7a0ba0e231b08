"""``ENGINE: "gunicorn_pool.django.postgresql"``: Django's PostgreSQL backend on a gunicorn_pool pool.

Everything is Django's PostgreSQL backend (SQL, introspection, schema
editor, features, the driver Django chose: psycopg 3, or psycopg2 where
psycopg 3 is not installed) except where a connection comes from and where it
goes, as for :mod:`gunicorn_pool.django.mysql`:

- ``connect()`` takes a connection from the alias's pool (:mod:`..pools`):
  a psycopg2 or psycopg connection of gunicorn_pool's connectors, with the
  lease guard, the tracking of what a request changes, the probe, fork
  safety; :meth:`DatabaseWrapper.get_new_connection` is a checkout.
- ``close()`` (at the end of each request with ``CONN_MAX_AGE=0``) gives it
  back: a transaction left open is rolled back, a session the request changed
  is reset (``DISCARD ALL``) before the next request gets it.
- What Django runs on each new connection (the time zone, ``assume_role``,
  the isolation level) is one of the pool's session statements: run when a
  connection opens and after a reset, never per request.
- On psycopg 3 the connections carry Django's adapters (its time zone loader,
  JSON and inet loaders) and Django's client-side binding cursor (or the
  server-side one with ``OPTIONS["server_side_binding"]``); on psycopg2,
  Django's JSONB loader is registered once per connection.

``CONN_MAX_AGE`` must stay 0; ``OPTIONS["pool"]`` holds the pool keys (README,
*Configuration keys*). Django's own pool (``django.db.backends.postgresql``
with ``OPTIONS["pool"]``) needs psycopg 3 and psycopg_pool; this backend needs
neither. See docs/django.md.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as _base
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3

from .. import pools

__all__ = ["DatabaseWrapper"]


class DatabaseWrapper(pools.PooledWrapper, _base.DatabaseWrapper):  # type: ignore[misc]  # Django is untyped
    """Django's PostgreSQL ``DatabaseWrapper`` whose connections are leases of a gunicorn_pool pool
    (``connect`` a checkout, ``_close`` a return, ``pool``, ``close_pool``: :class:`..pools.PooledWrapper`)."""

    def _gp_extra(self) -> tuple[Any, ...]:
        """What the alias's connections depend on besides DATABASES: Django's time zone."""
        return (self.timezone_name, settings.USE_TZ, self.timezone if settings.USE_TZ else None)

    def get_connection_params(self) -> pools.PoolTarget:
        if self.alias == NO_DB_ALIAS or not self.settings_dict["NAME"]:
            found = pools.direct(self.alias, self.settings_dict, self._gp_extra(), "postgresql")
        else:
            found = pools.target(self.alias, self.settings_dict, self._gp_extra(), "postgresql")
        self.isolation_level = found.isolation_level or IsolationLevel.READ_COMMITTED
        return found

    def get_new_connection(self, conn_params: pools.PoolTarget) -> Any:
        raw = self._gp_checkout(conn_params)
        if not is_psycopg3 and not getattr(raw, "_gp_django", False):
            # What Django does on each psycopg2 connect, once per connection here: JSONB loaded as text.
            _base.psycopg2.extras.register_default_jsonb(conn_or_curs=raw, loads=lambda x: x)
            raw._gp_django = True
        return raw

    def init_connection_state(self) -> None:
        # The time zone and the role are session statements of the pool: already set.
        BaseDatabaseWrapper.init_connection_state(self)

    def ensure_timezone(self) -> bool:
        # The time zone is part of the pool's key: the next connect builds a pool for the new one.
        self.close_pool()
        return False
