"""The integrations, named in one place: what discovery finds beyond registered services.

:mod:`gunicorn_pool.registry` names no framework: the worker's boot
(:mod:`gunicorn_pool.lifecycle`) and ``gunicorn-pool check`` hand it
:data:`FINDERS` and :data:`ADOPTERS` from here. A new framework integration
adds its finder or adopter to this module and lives in a folder of its own
(``gunicorn_pool/<framework>/``); nothing else changes.

- Django: a project whose settings are loaded and that pools an alias
  (``ENGINE: "gunicorn_pool.django.mysql"``, or PostgreSQL with
  ``OPTIONS["pool"]``) gets :class:`gunicorn_pool.django.DjangoPools`
  (named ``django``). Nothing is imported unless ``django`` already is.
- SQLAlchemy: an ``Engine``, an ``AsyncEngine`` or a Flask-SQLAlchemy extension
  met by the app walk is adopted as :func:`gunicorn_pool.sqlalchemy.adopt` would,
  unless ``adopt()`` took it already.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Optional

from . import registry
from .base import PoolInterface
from .registry import Adopter, Finder, settings

__all__ = ["ADOPTERS", "FINDERS", "adopt_sqlalchemy", "discover", "django_services"]


def django_services() -> Iterator[tuple[str, PoolInterface]]:
    """The loaded Django project's pooled aliases, as one service (none if Django is not loaded,
    or ``configure(django=False)``)."""
    if not settings.django or "django" not in sys.modules:
        return
    from .django.service import configured_service

    service = configured_service()
    if service is not None:
        yield service.name, service


def adopt_sqlalchemy(obj: Any, path: str) -> Optional[PoolInterface]:
    """The service putting the SQLAlchemy engine or Flask-SQLAlchemy extension *obj* (met by the
    app walk at *path*) on per-worker pools, or None if it was adopted already."""
    from .sqlalchemy.service import adopted_by_walk

    return adopted_by_walk(obj, path=path)


#: Sources of services beyond registered ones and entry points.
FINDERS: tuple[Finder, ...] = (django_services,)
#: Classes the app walk adopts, by (module, class name): nothing is imported to recognise them.
ADOPTERS: dict[tuple[str, str], Adopter] = {
    ("sqlalchemy.engine.base", "Engine"): adopt_sqlalchemy,
    ("sqlalchemy.ext.asyncio.engine", "AsyncEngine"): adopt_sqlalchemy,
    ("flask_sqlalchemy.extension", "SQLAlchemy"): adopt_sqlalchemy,
}


def discover(app: Any = None, *, entry_points: bool = True) -> list[tuple[str, PoolInterface]]:
    """Every service to open in this worker, with the integrations' finders and adopters
    (:func:`gunicorn_pool.registry.discover`). Never raises."""
    return registry.discover(app, finders=FINDERS, adopters=ADOPTERS, entry_points=entry_points)
