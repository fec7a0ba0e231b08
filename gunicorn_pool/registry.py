"""Registry and discovery: which pool services a worker opens.

Three sources, in this order, each service taken once (by identity):

1. **Registered** with :func:`register`, from gunicorn.conf.py or app code::

       db = gunicorn_pool.register(gunicorn_pool.DatabasePool(...), name="db")

   Registering a name again replaces the old entry: gunicorn re-runs
   gunicorn.conf.py on SIGHUP, and the new workers must see the new config.
2. **Entry points** in the group ``gunicorn_pool.services``; each names a
   PoolInterface instance, or a class/factory called without arguments::

       [options.entry_points]
       gunicorn_pool.services =
           cache = myapp.services:cache_pool

3. **The loaded WSGI app**: PoolInterface instances reachable from the app
   object through instance ``__dict__``\\s, dicts, lists, tuples and sets (a
   Flask app's ``extensions``, a Django-style container, a middleware's
   ``app`` attribute...). The walk is bounded (``walk_depth``, 4 by default,
   and 20,000 objects), safe against cycles, never calls properties or
   ``__getattr__``, and skips modules, classes and functions. Switch it off
   with ``gunicorn_pool.configure(walk_app=False)``.

:func:`configure` holds the process-wide settings (they cannot be gunicorn
settings: gunicorn ignores unknown names in its config file).
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections import deque
from typing import Any, Iterator, Optional, TypeVar

from .base import PoolInterface

__all__ = ["Settings", "configure", "discover", "get", "register", "registered", "settings", "unregister"]

logger = logging.getLogger("gunicorn_pool")
ENTRY_POINT_GROUP = "gunicorn_pool.services"
_MAX_OBJECTS = 20_000
_SKIP_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
               str, bytes, bytearray, int, float, complex, bool, type(None))  # fmt: skip

S = TypeVar("S", bound=PoolInterface)


@dataclasses.dataclass
class Settings:
    """Process-wide behaviour; change it with :func:`configure`."""

    warmup_timeout: float = 30.0  #: total seconds a worker's warm-up may take
    walk_app: bool = True  #: look for services inside the WSGI app object
    walk_depth: int = 4  #: how deep the app walk goes
    entry_points: bool = True  #: load services from the entry point group
    stats_interval: float = 10.0  #: seconds between statsd/Prometheus updates
    warm_up: bool = True  #: run a fresh worker's first-request code before traffic (gunicorn_pool.warmup)
    warm_requests: int = 8  #: synthetic requests through gunicorn's HTTP code in that warm-up


settings = Settings()
_services: dict[str, PoolInterface] = {}


def configure(**changes: Any) -> Settings:
    """Change :class:`Settings` fields, e.g. ``configure(warmup_timeout=10)``."""
    for key, value in changes.items():
        if not hasattr(settings, key):
            known = ", ".join(f.name for f in dataclasses.fields(Settings))
            raise TypeError(f"gunicorn_pool.configure: unknown setting {key!r} (known: {known})")
        setattr(settings, key, value)
    return settings


def register(service: S, name: Optional[str] = None) -> S:
    """Register *service* under *name* (default: its ``name`` attribute) and return it."""
    if not isinstance(service, PoolInterface):
        raise TypeError(f"register() needs a PoolInterface, got {type(service).__name__}")
    key = name or getattr(service, "name", None) or type(service).__name__
    _services[str(key)] = service
    return service


def unregister(name: str) -> None:
    """Forget the service registered as *name* (no error if unknown)."""
    _services.pop(name, None)


def get(name: str) -> PoolInterface:
    """The service registered as *name*; KeyError lists the known names."""
    try:
        return _services[name]
    except KeyError:
        known = ", ".join(sorted(_services)) or "none registered"
        raise KeyError(f"no pool service named {name!r} (known: {known})") from None


def registered() -> dict[str, PoolInterface]:
    """A copy of the registered services, by name."""
    return dict(_services)


def discover(app: Any = None) -> list[tuple[str, PoolInterface]]:
    """Every service to open in this worker, as (name, service) pairs."""
    found: list[tuple[str, PoolInterface]] = []
    seen: set[int] = set()

    def add(name: str, service: PoolInterface) -> None:
        if id(service) not in seen:
            seen.add(id(service))
            found.append((name, service))

    for name, service in _services.items():
        add(name, service)
    if settings.entry_points:
        for name, service in _from_entry_points():
            add(name, service)
    if settings.walk_app and app is not None:
        for name, service in walk(app, max_depth=settings.walk_depth):
            add(name, service)
    return found


def _from_entry_points() -> Iterator[tuple[str, PoolInterface]]:
    from importlib.metadata import entry_points

    select: Any = entry_points
    try:
        eps = select(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9: no selection interface
        eps = select().get(ENTRY_POINT_GROUP, [])
    for ep in eps:
        obj = ep.load()
        if not isinstance(obj, PoolInterface) and callable(obj):
            obj = obj()
        if not isinstance(obj, PoolInterface):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a PoolInterface")
        yield ep.name, obj


def walk(root: Any, *, max_depth: int = 4) -> Iterator[tuple[str, PoolInterface]]:
    """Yield (path, service) for PoolInterface objects reachable from *root*."""
    seen = {id(root)}
    queue: deque[tuple[str, Any, int]] = deque([("app", root, 0)])
    visited = 0
    while queue and visited < _MAX_OBJECTS:
        path, obj, depth = queue.popleft()
        visited += 1
        if isinstance(obj, PoolInterface):
            yield path, obj
        if depth >= max_depth:
            continue
        for child_path, child in _children(path, obj):
            if id(child) not in seen and not isinstance(child, _SKIP_TYPES):
                seen.add(id(child))
                queue.append((child_path, child, depth + 1))


def _children(path: str, obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, (dict, types.MappingProxyType)):
        for key, value in list(obj.items()):
            yield f"{path}[{key!r}]", value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(list(obj)):
            yield f"{path}[{i}]", value
    else:
        try:
            attrs = object.__getattribute__(obj, "__dict__")
        except AttributeError:
            return
        if isinstance(attrs, dict):
            for key, value in list(attrs.items()):
                yield f"{path}.{key}", value
