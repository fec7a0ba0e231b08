"""SQLAlchemy and Flask-SQLAlchemy: engines whose pools are gunicorn_pool's, opened per worker at boot.

Install ``gunicorn-pool[sqlalchemy]`` (or ``[flask]``). Three ways in:

- :func:`adopt`: engines the app already creates at import (an ``Engine``, a
  list of them, or a Flask-SQLAlchemy ``SQLAlchemy`` object and all its binds)
  get, in each worker, a pool of ours built from the same creator and options::

      db = SQLAlchemy(app)
      gunicorn_pool.sqlalchemy.adopt(db)

- :class:`EnginePool`: named engines built in each worker from URLs and
  ``create_engine`` keyword arguments (``gunicorn_pool.get("orm").engine()``).
- :class:`GunicornPool`: the SQLAlchemy pool class under both.

``create_async_engine()`` engines (FastAPI, Starlette, SQLModel under an ASGI
worker): ``adopt(async_engine)`` or ``EnginePool(..., asyncio=True)``; their
pools (:class:`AsyncGunicornPool`) open in the worker's event loop.

The guide is docs/sqlalchemy.md.
"""

from __future__ import annotations

from .pool import GunicornPool, SQLAlchemyPoolTimeout
from .pool_async import AsyncGunicornPool
from .service import AdoptedEngines, EngineConfig, EnginePool, adopt

__all__ = [
    "AdoptedEngines", "AsyncGunicornPool", "EngineConfig", "EnginePool", "GunicornPool", "SQLAlchemyPoolTimeout",
    "adopt",
]  # fmt: skip
