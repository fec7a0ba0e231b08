"""Registry and discovery: which pool services a worker opens.

This module names no integration: :func:`discover` is handed the finders and
adopters of the integrations by its caller (:mod:`gunicorn_pool.integrations`
is the one module that names Django and SQLAlchemy). Four sources, in this
order, each service taken once (by identity):

1. **Registered** with :func:`register`, from gunicorn.conf.py or app code::

       db = gunicorn_pool.register(gunicorn_pool.DatabasePool(...), name="db")

   Registering a name again replaces the old entry. gunicorn runs
   gunicorn.conf.py again on SIGHUP: registrations made by an earlier run of
   the config file that the new run did not make again are dropped, so a
   service renamed or removed in the file is not opened by the new workers.
2. **Entry points** in the group ``gunicorn_pool.services``; each names a
   PoolInterface instance, or a class/factory called without arguments::

       [options.entry_points]
       gunicorn_pool.services =
           cache = myapp.services:cache_pool

   One that fails to load is logged and skipped.
3. **Finders** passed in by the caller, each yielding (name, service): the
   integrations' (a Django project's pooled aliases,
   :class:`gunicorn_pool.django.DjangoPools`, when Django's settings are
   loaded; switch it off with ``gunicorn_pool.configure(django=False)``).
4. **The loaded WSGI app**: PoolInterface instances reachable from the app
   object through instance ``__dict__``\\s, dicts, lists, tuples and sets (a
   Flask app's ``extensions``, a Django-style container, a middleware's
   ``app`` attribute...). The walk is bounded (``walk_depth``, 4 levels; 20,000
   objects; the first 1,000 items of any one container; 0.25 s), safe against
   cycles, runs no app code (containers are read through their builtin base
   type, never a subclass's ``items()``/``__iter__``; no property, not even a
   ``__dict__`` one, no ``__getattr__``, ``__class__`` or metaclass attribute),
   finds subclasses of PoolInterface, skips modules, classes and functions,
   never raises, and logs when it stops early.
   An object of a class the caller's *adopters* name (by module and class
   name: a SQLAlchemy ``Engine``, a Flask-SQLAlchemy extension) met on the way
   is handed to its adopter, which returns the service that puts it on pools
   of ours (or None). Switch it off with ``gunicorn_pool.configure(walk_app=False)``.

:func:`configure` holds the process-wide settings (they cannot be gunicorn
settings: gunicorn ignores unknown names in its config file).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import sys
import time
import types
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar

from .base import PoolInterface

__all__ = [
    "Adopter", "Adopters", "Finder", "Settings", "configure", "discover", "get", "register", "registered", "settings",
    "unregister", "walk",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")
ENTRY_POINT_GROUP = "gunicorn_pool.services"
_CONFIG_MODULE = "__config__"  # the name gunicorn runs gunicorn.conf.py under
_MAX_OBJECTS = 20_000
_MAX_ITEMS = 1_000
_MAX_SECONDS = 0.25
_SKIP_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
               str, bytes, bytearray, int, float, complex, bool, type(None))  # fmt: skip

S = TypeVar("S", bound=PoolInterface)
#: Yields (name, service) pairs of one source of services (an integration's).
Finder = Callable[[], Iterable[tuple[str, PoolInterface]]]
#: Puts an object the app walk met at a path on pools of ours: the service doing it, or None.
Adopter = Callable[[Any, str], Optional[PoolInterface]]
#: Adopters by the (module, class name) of the objects they take.
Adopters = Mapping[tuple[str, str], Adopter]


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
    request_scope: bool = True  #: run each request in a scope: leaks reclaimed, request_connection() (wsgi.py)
    django: bool = True  #: open a loaded Django project's pooled aliases (gunicorn_pool.integrations)


@dataclasses.dataclass
class _Registration:
    service: PoolInterface
    config_run: Optional[int]  # id() of the config file run's namespace that registered it, if any


settings = Settings()
_services: dict[str, _Registration] = {}


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
    key = str(name or getattr(service, "name", None) or type(service).__name__)
    run = _config_run()
    if run is not None:
        # A new run of gunicorn.conf.py (SIGHUP): what earlier runs registered goes.
        for old in [k for k, reg in _services.items() if reg.config_run not in (None, run)]:
            del _services[old]
    _services[key] = _Registration(service, run)
    return service


def _config_run() -> Optional[int]:
    """The run of gunicorn.conf.py calling us, if any: id() of its module namespace."""
    frame: Any = sys._getframe(2)
    for _ in range(30):
        if frame is None:
            return None
        if frame.f_globals.get("__name__") == _CONFIG_MODULE:
            return id(frame.f_globals)
        frame = frame.f_back
    return None


def _current_config_run() -> Optional[int]:
    module = sys.modules.get(_CONFIG_MODULE)
    return id(vars(module)) if module is not None else None


def unregister(name: str) -> None:
    """Forget the service registered as *name* (no error if unknown)."""
    _services.pop(name, None)


def get(name: str) -> PoolInterface:
    """The service registered as *name*; KeyError lists the known names."""
    try:
        return _services[name].service
    except KeyError:
        known = ", ".join(sorted(_services)) or "none registered"
        raise KeyError(f"no pool service named {name!r} (known: {known})") from None


def registered() -> dict[str, PoolInterface]:
    """The registered services, by name (those of an outdated run of the config file left out)."""
    current = _current_config_run()
    return {k: r.service for k, r in _services.items() if r.config_run is None or r.config_run == current}


def discover(app: Any = None, *, finders: Iterable[Finder] = (), adopters: Optional[Adopters] = None,
             entry_points: bool = True) -> list[tuple[str, PoolInterface]]:  # fmt: skip
    """Every service to open in this worker, as (name, service) pairs: registered ones, entry
    points (unless *entry_points* is False: a discovery after the boot's, whose entry points'
    factories would build their services again), what each of *finders* yields, and what the walk
    of *app* finds (*adopters*: see :func:`walk`). Never raises."""
    found: list[tuple[str, PoolInterface]] = []
    seen: set[int] = set()

    def add(name: str, service: PoolInterface) -> None:
        if id(service) not in seen:
            seen.add(id(service))
            found.append((name, service))

    for name, service in registered().items():
        add(name, service)
    if settings.entry_points and entry_points:
        for name, service in _from_entry_points():
            add(name, service)
    for finder in finders:
        try:
            for name, service in finder():
                add(name, service)
        except Exception as exc:  # noqa: BLE001 - a broken integration must not stop a worker
            logger.error("gunicorn_pool: %s failed, its services are not opened at boot: %s",
                         getattr(finder, "__name__", finder), exc)  # fmt: skip
    if settings.walk_app and app is not None:
        try:
            for name, service in walk(app, max_depth=settings.walk_depth, adopters=adopters):
                add(name, service)
        except Exception as exc:  # noqa: BLE001 - walk() does not raise; this guards its callers' boot anyway
            logger.error("gunicorn_pool: the app walk failed, services found so far are used: %s", exc)
    return found


def _group_declared() -> bool:
    """Does any installed distribution declare an entry point of our group? Read from the
    ``entry_points.txt`` files on ``sys.path`` with a substring search: ``importlib.metadata``
    parses every distribution's metadata and imports ~40 modules (the email and csv packages
    among them), ~0.8 MiB of private memory per worker, to find out there is none (bench/memory.py).
    A path entry that is no directory (a zip) cannot be read this way: then True."""
    marker = f"[{ENTRY_POINT_GROUP}]"
    for entry in sys.path:
        try:
            if not os.path.isdir(entry or "."):
                if os.path.exists(entry):
                    return True
                continue
            with os.scandir(entry or ".") as it:
                names = [e.name for e in it if e.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as fh:
                    if marker in fh.read():
                        return True
            except (OSError, UnicodeDecodeError):
                continue
    return False


def _from_entry_points() -> Iterator[tuple[str, PoolInterface]]:
    if not _group_declared():
        return
    from importlib.metadata import entry_points

    select: Any = entry_points
    try:
        try:
            eps = list(select(group=ENTRY_POINT_GROUP))
        except TypeError:  # Python 3.9: no selection interface
            eps = list(select().get(ENTRY_POINT_GROUP, []))
    except Exception as exc:  # noqa: BLE001 - broken metadata must not stop a worker
        logger.error("gunicorn_pool: cannot read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return
    for ep in eps:
        try:
            obj = ep.load()
            if not isinstance(obj, PoolInterface) and callable(obj):
                obj = obj()
            if not isinstance(obj, PoolInterface):
                raise TypeError(f"it is a {type(obj).__name__}, not a PoolInterface")
        except Exception as exc:  # noqa: BLE001 - one bad entry point must not stop a worker
            logger.error("gunicorn_pool: entry point %r (%s) skipped: %s", ep.name, ep.value, exc)
            continue
        yield ep.name, obj


def walk(root: Any, *, max_depth: int = 4, max_objects: int = _MAX_OBJECTS, max_seconds: float = _MAX_SECONDS,
         adopters: Optional[Adopters] = None) -> Iterator[tuple[str, PoolInterface]]:  # fmt: skip
    """Yield (path, service) for PoolInterface objects reachable from *root* (see the module
    docstring), and for objects of a class named in *adopters* (``{(module, class name):
    adopter}``, matched on the class and its bases) the service their adopter returns.

    No code of the app runs: containers are read through their builtin base type's C methods
    (an overridden ``items()``, ``__iter__`` or ``__len__`` is never called), an instance's
    ``__dict__`` only through the descriptor Python itself made for it (a ``__dict__`` property
    is never resolved), and classes through ``type``'s own slots (no metaclass attribute)."""
    deadline = time.monotonic() + max_seconds
    seen = {id(root)}
    queue: deque[tuple[str, Any, int]] = deque([("app", root, 0)])
    visited = 0
    while queue:
        if visited >= max_objects or (visited % 256 == 0 and time.monotonic() > deadline):
            logger.warning(
                "gunicorn_pool: the app walk stopped early after %d objects (limits: %d objects, %gs);"
                " register services with gunicorn_pool.register() instead",
                visited, max_objects, max_seconds,
            )  # fmt: skip
            return
        path, obj, depth = queue.popleft()
        visited += 1
        if _is_service(obj):
            yield path, obj
        elif adopters and (adopter := _adopter_of(obj, adopters)) is not None:
            service = _adopt_found(path, obj, adopter)
            if service is not None:
                yield path, service
        if depth >= max_depth:
            continue
        for child_path, child in _children(path, obj):
            if id(child) not in seen and not _skipped(child):
                seen.add(id(child))
                queue.append((child_path, child, depth + 1))


# The walk reads classes through type's own descriptors: a metaclass can define __mro__,
# __module__ or __dict__ as properties, and reading cls.__mro__ would run them.
_MRO_OF = type.__dict__["__mro__"]
_NAMESPACE_OF = type.__dict__["__dict__"]
_QUALNAME_OF = type.__dict__["__qualname__"]
#: Descriptors written in C: what Python makes for an instance __dict__ (getset for a class
#: statement, member for SimpleNamespace and C types). Anything else is app code.
_C_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType)
#: Sequence types the walk reads, through the base type's C __iter__/__len__ (never a subclass's).
_SEQUENCES = (list, tuple, deque, set, frozenset)


def _mro(kind: type) -> tuple[type, ...]:
    mro: tuple[type, ...] = _MRO_OF.__get__(kind)
    return mro


def _is_service(obj: Any) -> bool:
    # The real MRO, compared by identity: no isinstance() (reads obj.__class__), no issubclass()
    # (ABCMeta.__subclasscheck__ asks every subclass of PoolInterface, whose metaclasses are the app's).
    return any(klass is PoolInterface for klass in _mro(type(obj)))


def _adopter_of(obj: Any, adopters: Adopters) -> Optional[Adopter]:
    """The adopter of *obj*'s class or of one of its bases (by module and class name, read
    through ``type``'s own slots: nothing is imported, no metaclass attribute runs), or None."""
    for klass in _mro(type(obj)):
        module = _NAMESPACE_OF.__get__(klass).get("__module__")
        if type(module) is str:
            adopter = adopters.get((module, _QUALNAME_OF.__get__(klass)))
            if adopter is not None:
                return adopter
    return None


def _adopt_found(path: str, obj: Any, adopter: Adopter) -> Optional[PoolInterface]:
    """The service *adopter* puts *obj* (found at *path*) on, or None (adopted already, or it
    failed: logged)."""
    try:
        return adopter(obj, path)
    except Exception as exc:  # noqa: BLE001 - the walk never raises
        logger.error("gunicorn_pool: %s (%s) not adopted: %s", path, type(obj).__name__, exc)
        return None


def _skipped(obj: Any) -> bool:
    return issubclass(type(obj), _SKIP_TYPES)  # builtin types only: a C-level MRO check, no __subclasscheck__


def _children(path: str, obj: Any) -> Iterator[tuple[str, Any]]:
    kind = type(obj)
    try:
        if issubclass(kind, types.MappingProxyType):
            # mappingproxy.items() calls the wrapped mapping's items(): read the mapping itself,
            # only if it is a dict (gc.get_referents() is the proxy's C traverse: its one mapping).
            inner = gc.get_referents(obj)
            if len(inner) == 1 and issubclass(type(inner[0]), dict):
                yield from _dict_items(path, inner[0])
        elif issubclass(kind, dict):
            yield from _dict_items(path, obj)
        elif issubclass(kind, _SEQUENCES):
            base = next(b for b in _SEQUENCES if issubclass(kind, b))
            values = list(itertools.islice(base.__iter__(obj), _MAX_ITEMS))
            _note_truncated(path, base.__len__(obj), len(values))
            for i, value in enumerate(values):
                yield f"{path}[{i}]", value
        else:
            attrs = _instance_dict(obj, kind)
            if attrs is not None:
                for key, value in list(itertools.islice(attrs.items(), _MAX_ITEMS)):
                    yield f"{path}.{key if type(key) is str else '?'}", value
    except Exception:  # noqa: BLE001 - a container changed under us, a slot-less object: nothing to follow
        return


def _dict_items(path: str, mapping: dict[Any, Any]) -> Iterator[tuple[str, Any]]:
    """*mapping*'s items read from its storage (dict's C methods, also for a subclass that overrides them)."""
    items = list(itertools.islice(dict.items(mapping), _MAX_ITEMS))
    _note_truncated(path, dict.__len__(mapping), len(items))
    for key, value in items:
        yield f"{path}[{key!r}]" if type(key) in (str, int) else f"{path}[...]", value  # builtin repr only


def _instance_dict(obj: Any, kind: type) -> Optional[dict[str, Any]]:
    """*obj*'s instance dict, if Python's own descriptor holds it: the first ``__dict__`` on the MRO
    (the one attribute lookup would use) must be a C descriptor, never app code (a property)."""
    for klass in _mro(kind):
        descriptor = _NAMESPACE_OF.__get__(klass).get("__dict__")
        if descriptor is None:
            continue
        if type(descriptor) not in _C_DESCRIPTORS:
            return None
        attrs = descriptor.__get__(obj, kind)
        return attrs if type(attrs) is dict else None
    return None


def _note_truncated(path: str, length: int, taken: int) -> None:
    if taken == _MAX_ITEMS and length > _MAX_ITEMS:
        logger.info("gunicorn_pool: the app walk looked at the first %d of %d items of %s", taken, length, path)
