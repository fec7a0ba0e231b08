"""EnginePool and adopt(): SQLAlchemy engines on per-worker gunicorn_pool pools, opened at boot.

Both are :class:`~gunicorn_pool.service.NamedPools` services (found and opened
by the worker after fork, before the first request, all at once within the
warm-up deadline; closed at exit; ``stats()`` by name). Each named pool is the
core of a :class:`~gunicorn_pool.sqlalchemy.GunicornPool` set as the engine's
``pool``:

- :class:`EnginePool` builds its engines in the worker, from URLs and
  ``create_engine`` keyword arguments: nothing is opened, or even created,
  in the master.
- :func:`adopt` takes the engines the app created at import (in the master
  under ``--preload``) and, in each worker, replaces each engine's pool with
  one built from the same creator and options. The old pool is set aside and
  never used or closed in the worker (closing would end the master's sessions
  on the sockets the fork shared).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
from typing import Any, Callable, Mapping, Optional, Union

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

from ..base import current_profile
from ..config import DatabaseConfig, _shown, parse_config, password_from_source
from ..errors import ConfigError
from ..options import PoolOptions, coerce, pool_option_names, rule_of
from ..pool import ConnectionPool
from ..registry import register
from ..service import NamedPools
from .pool import GunicornPool
from .sessions import track_sessions

__all__ = ["AdoptedEngines", "EngineConfig", "EnginePool", "adopt", "adopted_by_walk", "parse_engine_config"]

logger = logging.getLogger("gunicorn_pool")

#: Seconds a connect may take when neither the URL nor connect_args bound it.
CONNECT_TIMEOUT = 5
#: SQLAlchemy's asyncio dialects take ``async_creator_fn`` (the coroutine that connects) since 2.0.16.
_ASYNC_CREATOR = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:3] if part.isdigit()) >= (2, 0, 16)
#: Drivers used for a URL that names none (the project's: PyMySQL and psycopg 3).
_DEFAULT_DRIVERS = {"mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql", "postgresql": "postgresql+psycopg",
                    "postgres": "postgresql+psycopg"}  # fmt: skip
#: create_engine() pool arguments that name gunicorn_pool options.
_TRANSLATED = {"pool_timeout": "timeout", "pool_recycle": "max_lifetime"}
#: create_engine() arguments of QueuePool that have no meaning here.
_REFUSED = {
    "pool_size": "sizes follow the worker type; set max_size (and min_size) instead",
    "max_overflow": "set max_size instead",
    "poolclass": "the pool is gunicorn_pool's",
    "pool": "the pool is gunicorn_pool's",
    "pool_use_lifo": "the pool lends the most recently returned connection first already",
}
_SOURCES = ("password_env", "password_file")
_OPTIONS = {f.name: f for f in dataclasses.fields(PoolOptions)}
_adopted: dict[int, Any] = {}  # id(target) -> target, for every target adopt() or the app walk took
_retired: list[Any] = []  # pools replaced in a worker: kept, never closed there (their sessions are the master's)


@dataclasses.dataclass(frozen=True)
class EngineConfig(PoolOptions):
    """One named engine: a URL and ``create_engine`` keyword arguments (:class:`EnginePool`), or an
    engine the app made (:func:`adopt`), plus the :class:`~gunicorn_pool.options.PoolOptions` of
    its pool."""

    pool_name: str = ""
    url: Optional[URL] = dataclasses.field(default=None, repr=False)
    engine_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    engine: Optional[Engine] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def dsn(self) -> str:
        """The URL with the password masked (safe to log)."""
        url = self.url if self.engine is None else self.engine.url
        return url.render_as_string(hide_password=True) if url is not None else self.pool_name


def _pool_options(owner: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The gunicorn_pool options in *raw*, checked (a ConfigError names *owner* and the key)."""
    return {key: coerce(owner, key, val, rule_of(_OPTIONS[key])) for key, val in raw.items() if key in _OPTIONS}


def parse_engine_config(
    pool_name: str, value: Union[str, URL, Mapping[str, Any]], *, drivers: Mapping[str, str] = _DEFAULT_DRIVERS
) -> EngineConfig:
    """Validate one named engine: a URL (``mysql://``, ``postgresql://``, ``sqlite:///``, or with a
    driver: ``mysql+pymysql://``), or a dict with ``url`` and pool options (``max_size``,
    ``timeout``...; also accepted in the URL's query string), ``password_env``/``password_file``,
    and any other ``create_engine`` keyword argument. No error text shows the password. A URL
    without a driver gets the one *drivers* names for its database."""
    raw: dict[str, Any] = {"url": value} if isinstance(value, (str, URL)) else dict(value)
    if not isinstance(value, (str, URL, Mapping)):
        raise ConfigError(f"pool {pool_name!r}: an engine config is a URL or a dict, not {type(value).__name__}")
    if "url" not in raw:
        raise ConfigError(f"pool {pool_name!r}: no url given")
    try:
        url = make_url(raw.pop("url"))
    except (ArgumentError, ValueError, TypeError):
        raise ConfigError(
            f"pool {pool_name!r}: not a SQLAlchemy URL (dialect+driver://user:password@host/db)"
        ) from None
    url = url.set(drivername=drivers.get(url.drivername, url.drivername))
    in_query = {k: v for k, v in url.query.items() if k in _OPTIONS}
    url = url.difference_update_query(in_query)
    password = password_from_source(pool_name, raw)
    if password is not None:
        if url.password:
            raise ConfigError(f"pool {pool_name!r}: give the password once (in the URL, password_env or password_file)")
        url = url.set(password=password)
    for key in _SOURCES:
        raw.pop(key, None)
    for key, why in _REFUSED.items():
        if key in raw:
            raise ConfigError(f"pool {pool_name!r}: {key} does not apply: {why}")
    for key, option in _TRANSLATED.items():
        if key in raw:
            raw[option] = raw.pop(key)
    options = _pool_options(pool_name, {**in_query, **raw})
    kwargs = {k: v for k, v in raw.items() if k not in _OPTIONS}
    _check_engine_arguments(pool_name, url, kwargs)
    config = EngineConfig(pool_name=pool_name, url=url, engine_kwargs=kwargs, **options)
    config.check(pool_name)
    return config


#: create_engine()'s arguments read by the function itself, not by the dialect, pool or Engine it makes.
_CREATE_ENGINE_OWN = frozenset({"connect_args", "creator", "module", "plugins", "future", "enable_from_linting",
                                "_coerce_config", "_initialize", "_is_async"})  # fmt: skip
#: Names create_engine() takes that are no option of a config (internal, or refused above).
_NOT_LISTED = frozenset({"cls", "dbapi", "dialect", "url", "pool", "_dispatch", *_REFUSED})


def _check_engine_arguments(pool_name: str, url: URL, kwargs: Mapping[str, Any]) -> None:
    """Refuse, here in the master, a key ``create_engine()`` would refuse in every worker (a typo such
    as ``max_sise``): ConfigError naming the pool and the key, listing the known ones."""
    if not kwargs or "plugins" in kwargs or "plugin" in url.query:  # a plugin may take any key
        return
    accepted = _create_engine_arguments(url)
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            names = (accepted | set(_OPTIONS) | set(_TRANSLATED) | set(_SOURCES)) - _NOT_LISTED | {"url"}
            known = sorted(n for n in names if not n.startswith("_"))
            shown = _shown(key) if isinstance(key, str) else f"(a {type(key).__name__})"
            raise ConfigError(f"pool {pool_name!r}: unknown option {shown} (known: {', '.join(known)})")


def _create_engine_arguments(url: URL) -> Optional[set[str]]:
    """The keyword arguments ``create_engine(url, ...)`` consumes, found as it finds them (the dialect's,
    its DBAPI import's, its pool class's with their ``pool_`` names, the Engine's, its own); None when
    unknown: a dialect SQLAlchemy does not ship (loading it could import its driver in the master,
    before gevent patched), or a SQLAlchemy whose create_engine() reads them otherwise."""
    from sqlalchemy import util
    from sqlalchemy.engine import create

    backend, _, driver = url.drivername.partition("+")
    package = "mysql" if backend == "mariadb" else backend
    translate = getattr(create, "_pool_translate_kwargs", None)
    try:
        if translate is None or importlib.util.find_spec(f"sqlalchemy.dialects.{package}.{driver or 'base'}") is None:
            return None
        dialect: Any = url._get_entrypoint().get_dialect_cls(url)  # a DefaultDialect: get_pool_class()
        names = set(util.get_cls_kwargs(dialect)) | set(util.get_func_kwargs(dialect.import_dbapi))
        for pool_class in {dialect.get_pool_class(url), QueuePool}:
            names |= {translate.get(k, k) for k in util.get_cls_kwargs(pool_class)}
        return names | set(util.get_cls_kwargs(Engine)) | _CREATE_ENGINE_OWN
    except Exception:  # noqa: BLE001 - no such dialect: create_engine() says so in the worker, as before
        return None


def bound_connects(engine: Engine) -> None:
    """Give *engine*'s connects a ``connect_timeout`` (:data:`CONNECT_TIMEOUT`) where neither the URL
    nor ``connect_args`` set one (PyMySQL waits 10 s by default, psycopg forever, asyncpg 60 s
    (its ``timeout``); aiomysql's handshake is bounded by it too, see
    :func:`~.pool_async.aiomysql_connect`), and PyMySQL's
    ``read_timeout`` unset is gunicorn's ``timeout`` in gthread and gevent workers (as for
    DatabasePool: gunicorn does not end a request hung on a query there)."""
    drivers = ("pymysql", "psycopg", "aiomysql", "asyncpg")
    if engine.dialect.driver in drivers and not event.contains(engine, "do_connect", _bound):
        event.listen(engine, "do_connect", _bound)


def _bound(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if dialect.driver == "asyncpg":  # its name for it; 60 s by default
        cparams.setdefault("timeout", CONNECT_TIMEOUT)
        return
    cparams.setdefault("connect_timeout", CONNECT_TIMEOUT)
    if dialect.driver == "aiomysql" and _ASYNC_CREATOR:  # its connect_timeout: the TCP connect only
        from .pool_async import aiomysql_connect

        cparams.setdefault("async_creator_fn", aiomysql_connect)
    bound = current_profile().query_bound()
    if dialect.driver == "pymysql" and bound and "read_timeout" not in cparams:
        cparams["read_timeout"] = bound


def _retire(old: Any) -> None:
    """Set aside the pool an engine had: one of ours closes (its core drops what a fork left it
    without a word to the server); another is kept, unused and unclosed, for the life of the
    process (under --preload its connections are the master's, on sockets the fork shared)."""
    if isinstance(old, GunicornPool):
        old.dispose()
    else:
        _retired.append(old)


class _EngineService(NamedPools[EngineConfig]):
    """Named engines, each on a GunicornPool whose core is the named pool."""

    _what = "engine"
    #: The SQLAlchemy pool class each engine gets (the asyncio services: AsyncGunicornPool).
    _pool_class: type[GunicornPool] = GunicornPool

    def __init__(self, configs: Mapping[str, EngineConfig], *, name: str) -> None:
        super().__init__(configs, name=name)
        self._made: dict[int, tuple[Engine, GunicornPool]] = {}  # id(core) -> its engine and pool
        self._engines: dict[str, Engine] = {}  # by name, once on our pool in this process

    def _engine_for(self, name: str, config: EngineConfig) -> Engine:
        raise NotImplementedError

    def _build(self, name: str, config: EngineConfig) -> ConnectionPool:
        engine = self._engine_for(name, config)
        bound_connects(engine)
        track_sessions(engine)  # what the exact reads need from each connect (sessions.py)
        pool = self._pool_class.from_pool(engine.pool, pool_name=name, url=engine.url, options=config)
        self._made[id(pool.core)] = (engine, pool)
        return pool.core

    def pool(self, name: str = "default") -> ConnectionPool:
        """The :class:`~gunicorn_pool.pool.ConnectionPool` behind engine *name*, built on first use
        (the engine's pool is set to its GunicornPool then)."""
        core = super().pool(name)
        engine, pool = self._made[id(core)]
        if engine.pool is not pool:
            _retire(engine.pool)
            engine.pool = pool
            self._engines[name] = engine
        return core

    def engine(self, name: str = "default") -> Engine:
        """The :class:`~sqlalchemy.engine.Engine` *name*, on this worker's pool."""
        return self._made[id(self.pool(name))][0]

    def engines(self) -> dict[str, Engine]:
        """Every engine, by name (built now where not yet)."""
        return {key: self.engine(key) for key in self.configs}

    def _current(self) -> dict[str, GunicornPool]:
        """Each engine's pool now: the one this service set, or the fresh one a later
        ``engine.dispose()`` put in its place (SQLAlchemy's ``recreate()``)."""
        return {key: e.pool for key, e in list(self._engines.items()) if isinstance(e.pool, GunicornPool)}

    def stats(self) -> dict[str, Any]:
        """``{engine name: stats}`` of each engine's pool in this process."""
        return {key: pool.stats() for key, pool in self._current().items()}

    def pool_configs(self) -> dict[str, DatabaseConfig]:
        """``{engine name: DatabaseConfig}`` of the engines known now, for ``gunicorn-pool check``:
        each engine's server, login and sizes (its ``connect_args`` are not carried over).
        Adopted engines are known only once the app is loaded."""
        out = {}
        for key, config in (self.configs or self._known_configs()).items():
            url = config.url if config.engine is None else config.engine.url
            if url is None:
                continue
            out[key] = server_config(key, url, config)
        return out

    def _known_configs(self) -> dict[str, EngineConfig]:
        return {}

    def connection_pools(self) -> dict[str, ConnectionPool]:
        """Each engine's pool core in this process (for observers)."""
        return {key: pool.core for key, pool in self._current().items()}

    def close_pool(self) -> None:
        """Close every engine's pool in this process (later use raises PoolClosed until
        :meth:`init_pool`)."""
        current = self._current()
        super().close_pool()
        for pool in current.values():
            pool.dispose()
        self._made = {key: made for key, made in self._made.items() if not made[1].core.closed}


class EnginePool(_EngineService):
    """Named SQLAlchemy engines built in each worker, each on a :class:`GunicornPool`.

    ::

        # gunicorn.conf.py
        gunicorn_pool.register(EnginePool({
            "default": "postgresql://app@10.0.0.5/shop?password_env=SHOP_PW",
            "reports": {"url": "mysql://ro@10.0.0.6/reports", "max_size": 2, "echo": False},
        }), name="orm")

        # app.py
        engine = gunicorn_pool.get("orm").engine("default")

    Every config is validated here, in the master (:func:`parse_engine_config`); the engines
    are created in the worker, after fork (and after gevent patched), and warmed before the
    first request. A URL without a driver gets the project's (``mysql+pymysql``,
    ``postgresql+psycopg``).

    ``asyncio=True`` makes ``create_async_engine()`` engines instead, for ASGI apps
    (:class:`~gunicorn_pool.sqlalchemy.AsyncEnginePool`: opened in the worker's event loop;
    ``engine()`` is an ``AsyncEngine``; a URL without a driver gets ``mysql+aiomysql``,
    ``postgresql+psycopg`` or ``sqlite+aiosqlite``).
    """

    _drivers: Mapping[str, str] = _DEFAULT_DRIVERS

    def __new__(cls, *args: Any, asyncio: bool = False, **kwargs: Any) -> EnginePool:
        if asyncio and cls is EnginePool:
            from .service_async import AsyncEnginePool

            cls = AsyncEnginePool
        return super().__new__(cls)

    def __init__(
        self, configs: Union[Mapping[str, Any], str, URL], *, name: str = "orm", asyncio: bool = False
    ) -> None:
        if isinstance(configs, (str, URL)) or (isinstance(configs, Mapping) and "url" in configs):
            configs = {"default": configs}
        if not configs:
            raise ConfigError(f"EnginePool {name!r}: no engine configured")
        parsed = {key: parse_engine_config(key, val, drivers=self._drivers) for key, val in configs.items()}
        super().__init__(parsed, name=name)

    def _engine_for(self, name: str, config: EngineConfig) -> Engine:
        assert config.url is not None
        return sqlalchemy.create_engine(config.url, **config.engine_kwargs)


class AdoptedEngines(_EngineService):
    """The service :func:`adopt` registers: the app's own engines, on this worker's pools.

    The engines are looked up when the worker opens its pools (so a
    Flask-SQLAlchemy object may get its ``init_app()`` after :func:`adopt`);
    ``stats()`` maps each to its pool's figures: the bind key (``"default"`` for
    the main engine), or ``"default"``, ``"engine1"``... for a list.
    """

    _allow_empty = True

    def __init__(self, find: Callable[[], dict[str, Engine]], *, name: str, options: PoolOptions) -> None:
        super().__init__({}, name=name)
        self._find = find
        self._options = options

    def init_pool(self) -> None:
        """Find the engines, then open their pools in this process (see NamedPools.init_pool)."""
        if self._found():
            super().init_pool()

    def _found(self) -> bool:
        """Look the engines up now; False (logged) if there is none."""
        self.configs = self._configs()
        if not self.configs:
            logger.error("%s %r: no engine to adopt (was init_app() called?)", type(self).__name__, self.name)
        return bool(self.configs)

    def _configs(self) -> dict[str, EngineConfig]:
        configs = {}
        for key, engine in self._find().items():
            pool = engine.pool
            if (
                not isinstance(pool, (QueuePool, GunicornPool))
                or engine.url.database in (None, "", ":memory:")
                and (engine.url.get_backend_name() == "sqlite")
            ):
                logger.warning(
                    "%s %r: engine %s (%s) keeps its %s: only engines on a QueuePool are adopted"
                    " (an in-memory SQLite database lives in its one connection)",
                    type(self).__name__, self.name, key, engine.url.render_as_string(hide_password=True),
                    type(pool).__name__,
                )  # fmt: skip
                continue
            configs[key] = EngineConfig(pool_name=key, engine=engine, **dataclasses.asdict(self._options))
        return configs

    def _engine_for(self, name: str, config: EngineConfig) -> Engine:
        assert config.engine is not None
        return config.engine

    def _known_configs(self) -> dict[str, EngineConfig]:
        try:
            return self._configs()
        except Exception:  # noqa: BLE001 - a Flask-SQLAlchemy object before init_app(): nothing known yet
            return {}


_ADAPTERS = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql", "sqlite": "sqlite"}


def server_config(name: str, url: URL, options: PoolOptions) -> DatabaseConfig:
    """The :class:`~gunicorn_pool.config.DatabaseConfig` of the server *url* names, with the pool
    sizes of *options* (what ``gunicorn-pool check`` budgets); ConfigError for a database family
    gunicorn_pool has no adapter for."""
    adapter = _ADAPTERS.get(url.get_backend_name())
    if adapter is None:
        raise ConfigError(f"pool {name!r}: no gunicorn_pool adapter for {url.get_backend_name()!r} to check it with")
    raw: dict[str, Any] = {"adapter": adapter, "min_size": options.min_size, "max_size": options.max_size}
    if adapter == "sqlite":
        raw["database"] = url.database or ":memory:"
    else:
        raw.update(host=url.host, port=url.port, user=url.username, password=url.password or "", database=url.database)
    return parse_config(name, {key: val for key, val in raw.items() if val is not None})


def adopt(target: Any, *, name: str = "sqlalchemy", **options: Any) -> AdoptedEngines:
    """Put the engines the app creates at import on per-worker gunicorn_pool pools.

    *target* is an :class:`~sqlalchemy.engine.Engine`, a list of them, a dict
    ``{name: engine}``, or a Flask-SQLAlchemy ``SQLAlchemy`` object (all its
    binds; before or after ``init_app()``). *options* are pool options
    (``max_size``, ``min_size``, ``timeout``, ``max_waiting``...); sizes left
    unset follow the worker type. Registers and returns the service
    (:class:`AdoptedEngines`): in each worker, before the first request, each
    engine's pool is replaced with a :class:`GunicornPool` built from the same
    creator and options and ``min_size`` connections are opened; nothing the
    master or the import opened is used in a worker; the pools close at exit.

    ``create_async_engine()`` engines (an ``AsyncEngine``, or a list or dict of them) get an
    :class:`~gunicorn_pool.sqlalchemy.AsyncGunicornPool` each, opened in the worker's event
    loop in the ASGI lifespan (:class:`~gunicorn_pool.sqlalchemy.AsyncAdoptedEngines`).
    """
    unknown = sorted(set(options) - set(pool_option_names()))
    if unknown:
        raise ConfigError(f"adopt({name!r}): unknown option(s) {', '.join(unknown)}")
    checked = PoolOptions(**_pool_options(name, options))
    checked.check(name)
    service = _service_class(target)(_finder(target, name), name=name, options=checked)
    _adopted[id(target)] = target
    return register(service, name=name)


def adopted_by_walk(target: Any, *, path: str) -> Optional[AdoptedEngines]:
    """The service for an engine or Flask-SQLAlchemy object the app walk found at *path*
    (``gunicorn_pool.configure(walk_app=True)``, the default), or None if :func:`adopt` or
    an earlier walk took it already."""
    if _adopted.get(id(target)) is target:
        return None
    _adopted[id(target)] = target
    return _service_class(target)(_finder(target, path), name=f"sqlalchemy {path}", options=PoolOptions())


def _service_class(target: Any) -> type[AdoptedEngines]:
    """AdoptedEngines, or for ``AsyncEngine``s the asyncio service (opened in the event loop)."""
    if _async_engines(target):
        from .service_async import AsyncAdoptedEngines

        return AsyncAdoptedEngines
    return AdoptedEngines


def _async_engines(target: Any) -> bool:
    """True if *target* is an ``AsyncEngine`` or a non-empty list or dict of them."""
    if "sqlalchemy.ext.asyncio" not in sys.modules:
        return False
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(target, Mapping):
        target = list(target.values())
    values = target if isinstance(target, (list, tuple)) else [target]
    return bool(values) and all(isinstance(e, AsyncEngine) for e in values)


def _finder(target: Any, name: str) -> Callable[[], dict[str, Engine]]:
    """How to find *target*'s engines when the worker opens its pools (an ``AsyncEngine``'s is
    its ``sync_engine``, where its pool is)."""
    if _async_engines(target):
        if isinstance(target, Mapping):
            return _finder({k: e.sync_engine for k, e in target.items()}, name)
        if isinstance(target, (list, tuple)):
            return _finder([e.sync_engine for e in target], name)
        return _finder(target.sync_engine, name)
    if isinstance(target, Engine):
        return lambda: {"default": target}
    if isinstance(target, Mapping) and all(isinstance(e, Engine) for e in target.values()):
        engines = {str(k): e for k, e in target.items()}
        return lambda: dict(engines)
    if isinstance(target, (list, tuple)) and all(isinstance(e, Engine) for e in target):
        listed = {("default" if i == 0 else f"engine{i}"): e for i, e in enumerate(target)}
        return lambda: dict(listed)
    if type(target).__module__.partition(".")[0] == "flask_sqlalchemy":
        return lambda: _flask_engines(target)
    raise TypeError(
        f"adopt({name!r}) takes an Engine, a list or dict of them, or a Flask-SQLAlchemy object;"
        f" got {type(target).__name__}"
    )


def _flask_engines(db: Any) -> dict[str, Engine]:
    """Every engine of a Flask-SQLAlchemy extension, by bind key ("default" for the main one);
    with several apps, prefixed by the app's name."""
    per_app = list(db._app_engines.items())  # Flask-SQLAlchemy's engines, filled by init_app()
    engines = {}
    for app, binds in per_app:
        for bind, engine in binds.items():
            key = "default" if bind is None else str(bind)
            engines[key if len(per_app) == 1 else f"{app.name}:{key}"] = engine
    return engines
