"""Boot paths that used to halt or stall the server: the app walk, pools warmed one after another,
a SIGHUP with a renamed service, and --preload + gevent against a server that offers TLS.

lifecycle.boot()/shutdown() run here against stand-in gunicorn workers (no
server); the rest against real gunicorn processes and real MariaDB servers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from support import figure, pool_conf, wait_until

import gunicorn_pool
from gunicorn_pool import DatabasePool, PoolInterface, PoolStartupError, lifecycle, registry
from gunicorn_pool.base import current_profile, set_profile


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    saved, settings = dict(registry._services), registry.Settings(**vars(registry.settings))
    profile = current_profile()
    registry._services.clear()
    gunicorn_pool.configure(warm_up=False, entry_points=False)
    yield
    lifecycle.shutdown()
    registry._services.clear()
    registry._services.update(saved)
    registry.settings.__dict__.update(vars(settings))
    set_profile(profile)


def stand_in_worker(app: Any = None, **cfg: Any) -> Any:
    """What lifecycle.boot() reads of a gunicorn worker (class-based kind: a plain object is 'sync')."""
    config = SimpleNamespace(threads=1, workers=1, timeout=30, statsd_host=None, **cfg)
    return SimpleNamespace(cfg=config, age=1, pid=os.getpid(), log=logging.getLogger("test"), wsgi=app)


@pytest.fixture
def silent_listeners() -> Iterator[list[int]]:
    """Three loopback ports that accept TCP (the kernel's backlog) and never say a word."""
    socks = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        socks.append(sock)
    yield [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()


# -- several dead servers cost one connect_timeout -------------------------------------------


def test_named_pools_on_silent_servers_warm_up_at_once(silent_listeners):
    """Three pools on servers that accept TCP and never answer delayed the worker by
    3 x connect_timeout: they opened one after another."""
    db = DatabasePool({f"p{i}": {"host": "127.0.0.1", "port": port, "connect_timeout": 1.0}
                       for i, port in enumerate(silent_listeners)}, name="silent")  # fmt: skip
    start = time.monotonic()
    db.init_pool()  # logs the failures, never raises
    elapsed = time.monotonic() - start
    figure("3 silent servers, connect_timeout = 1: warm-up took", elapsed)
    assert 0.95 <= elapsed < 1.9, elapsed
    db.close_pool()


def test_services_on_silent_servers_warm_up_at_once_in_boot(silent_listeners):
    for i, port in enumerate(silent_listeners):
        gunicorn_pool.register(DatabasePool({"default": {"host": "127.0.0.1", "port": port, "connect_timeout": 1.0}}),
                               name=f"svc{i}")  # fmt: skip
    start = time.monotonic()
    services = lifecycle.boot(stand_in_worker())
    elapsed = time.monotonic() - start
    assert [name for name, _ in services] == ["svc0", "svc1", "svc2"]
    assert 0.95 <= elapsed < 1.9, elapsed


# -- lifecycle.boot() / shutdown() on SQLite ------------------------------------------------------


def test_boot_opens_every_service_wraps_the_app_and_shutdown_closes_them(tmp_path):
    db = gunicorn_pool.register(DatabasePool({"default": f"sqlite:///{tmp_path / 'b.db'}"}), name="db")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        gunicorn_pool.get("db").pool().getconn()  # leaks: the request scope must reclaim it
        start_response("200 OK", [])
        return [b"ok"]

    worker = stand_in_worker(app)
    services = lifecycle.boot(worker)
    assert [s for _, s in services] == [db]
    assert db.stats()["default"]["pool_size"] == 1  # min_size opened at boot
    body = worker.wsgi({"PATH_INFO": "/"}, lambda *a: None)
    assert body == [b"ok"]  # a list body: the request ended when the app returned it
    assert db.stats()["default"]["connections_leaked"] == 1
    lifecycle.shutdown()
    with pytest.raises(gunicorn_pool.PoolClosed):
        db.connection()


def test_shutdown_in_another_process_than_boot_does_nothing(tmp_path):
    db = gunicorn_pool.register(DatabasePool({"default": f"sqlite:///{tmp_path / 's.db'}"}), name="db")
    lifecycle.boot(stand_in_worker())
    lifecycle._booted["pid"] = -1  # as if this were the master after fork (worker_exit there)
    lifecycle.shutdown()
    assert db.stats()["default"]["pool_size"] == 1  # untouched
    lifecycle._booted["pid"] = os.getpid()


def test_a_failing_service_never_stops_boot_but_a_strict_one_on_first_start_does(tmp_path):
    class Broken(PoolInterface):
        def init_pool(self) -> None:
            raise RuntimeError("no")

        def close_pool(self) -> None:
            pass

    class Strict(Broken):
        def init_pool(self) -> None:
            raise PoolStartupError("strict pool could not start")

    ok = gunicorn_pool.register(DatabasePool({"default": f"sqlite:///{tmp_path / 'f.db'}"}), name="ok")
    gunicorn_pool.register(Broken(), name="broken")
    lifecycle.boot(stand_in_worker())
    assert ok.stats()["default"]["pool_size"] == 1
    lifecycle.shutdown()
    gunicorn_pool.register(Strict(), name="strict")
    with pytest.raises(PoolStartupError):
        lifecycle.boot(stand_in_worker())


@pytest.mark.parametrize("module, kind", [("gthread", "thread"), ("ggevent", "gevent"), ("sync", "sync")])
def test_profile_follows_the_worker_class_and_config(module, kind):
    import importlib

    base = {"gthread": "ThreadWorker", "ggevent": "GeventWorker", "sync": "SyncWorker"}[module]
    cls = getattr(importlib.import_module(f"gunicorn.workers.{module}"), base)
    worker = object.__new__(type("W", (cls,), {}))  # gunicorn's __init__ wants a live arbiter: not needed here
    worker.cfg, worker.age = SimpleNamespace(threads=6, workers=2, timeout=20), 3
    profile = lifecycle.profile_for(worker)
    assert (profile.kind, profile.threads, profile.timeout, profile.first_boot) == (kind, 6, 20.0, False)
    assert profile.deadline is not None and profile.deadline > time.monotonic()
    assert profile.default_sizes() == {"thread": (1, 6), "gevent": (1, 10), "sync": (1, 1)}[kind]


# -- the app walk ------------------------------------------------------------------------------------


class _LazyProxy:
    """Like a lazy object proxy: even reading __class__ raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise RuntimeError("not configured yet")


def test_walk_never_raises_on_objects_whose_class_raises():
    svc = DatabasePool("sqlite:///:memory:", name="walked")
    app = SimpleNamespace(proxy=_LazyProxy(), items=[_LazyProxy(), svc], more={"p": _LazyProxy()})
    assert [s for _, s in registry.walk(app)] == [svc]
    assert [s for _, s in registry.discover(app)] == [svc]


def test_walk_is_bounded_in_time_and_objects_and_says_so(caplog):
    huge = list(range(3_000_000))
    wide = [SimpleNamespace(a=SimpleNamespace(b=i)) for i in range(30_000)]
    app = SimpleNamespace(huge=huge, wide=wide, deep={"x": SimpleNamespace(y=[1, 2, 3])})
    caplog.set_level(logging.INFO, logger="gunicorn_pool")
    start = time.monotonic()
    assert list(registry.walk(app)) == []
    assert time.monotonic() - start < 0.5  # before: 1.5 s per boot for a 3M-item list
    assert "looked at the first 1000 of 3000000 items of app.huge" in caplog.text
    start = time.monotonic()
    assert list(registry.walk(app, max_objects=500)) == []
    assert "stopped early after 500 objects" in caplog.text


_RAN: list[str] = []  # the app code below appends its name here when it runs


class _ItemsSleep(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        _RAN.append("items()")
        time.sleep(10)
        return super().items()


class _IterSleep(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        _RAN.append("__iter__()")
        time.sleep(10)
        return super().__iter__()


class _DictPropertySleep:
    @property  # type: ignore[misc]
    def __dict__(self) -> Any:
        _RAN.append("__dict__")
        time.sleep(10)
        return {}


def test_boot_never_runs_app_code_in_the_walk(tmp_path):
    """An overridden items(), __iter__ and a __dict__ property, each sleeping 10 s, reachable from
    the app: the walk ran all three (boot took 30 s, the 0.25 s bound never applied, and the pool it
    found after them was not warmed). Now none of them runs and the pool is opened at boot."""
    _RAN.clear()
    db = DatabasePool({"default": f"sqlite:///{tmp_path / 'walked.db'}"}, name="walked")
    hostile = {"a": _ItemsSleep(x=1), "b": _IterSleep([1, 2]), "c": _DictPropertySleep()}
    app = SimpleNamespace(**hostile, later=SimpleNamespace(db=db))  # the pool is met after the three
    start = time.monotonic()
    services = lifecycle.boot(stand_in_worker(app))
    elapsed = time.monotonic() - start
    figure("boot with three sleeping app hooks reachable from the app", elapsed)
    assert _RAN == [], f"the walk ran app code: {_RAN}"
    assert elapsed < 1.0, elapsed
    assert [s for _, s in services] == [db]
    assert db.stats()["default"]["pool_size"] == 1  # found, and opened at boot


# -- SIGHUP with an edited config (real gunicorn) -----------------------------------------------


@pytest.mark.mysql
def test_sighup_with_a_renamed_service_opens_only_the_new_one(mysql_server, gunicorn, tmp_path):
    from support import MySQLUser

    old, new = MySQLUser("gp_hup_old", "pw-old-1"), MySQLUser("gp_hup_new", "pw-new-2")
    try:
        server = gunicorn(pool_conf({"default": old.config()}, workers=2, service="alpha"))
        server.start(workers_ready=2)
        wait_until(lambda: old.count() == 2, 10, what="alpha's sessions")
        server.conf_path.write_text(pool_conf({"default": new.config()}, workers=2, service="beta"))
        start = time.monotonic()
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: new.count() == 2 and old.count() == 0, 20, what="beta open, alpha gone")
        figure("SIGHUP with a renamed service: only the new one open after", time.monotonic() - start)
        time.sleep(0.5)
        assert old.count() == 0, "a new worker opened the renamed-away service"
        status, body = server.get("/conn")  # the app asks for service "db": the new run registered only beta
        assert "no pool service named 'db' (known: beta)" in body["message"], body
    finally:
        old.drop()
        new.drop()


# -- --preload + gevent + a server that offers TLS ------------------------------------------------


@pytest.mark.mysql
def test_preload_gevent_worker_connects_over_tls_to_a_server_that_offers_it(mariadb_tls, gunicorn):
    """The app queries the pool at import in the master (--preload); gevent then patches ssl
    in each worker. The TLS context built in the master made every worker connect fail:
    "super(type, obj): obj must be an instance or subtype of type", 100 % 502."""
    login = mariadb_tls.create_user("gp_tls_preload", "pw-tls-9")
    conf = "worker_class = 'gunicorn_pool.GeventWorker'\nworkers = 2\npreload_app = True\n"
    server = gunicorn(conf, app="preload_app:app", env={"GP_PRELOAD_URL": login.url()})
    server.start(workers_ready=2)
    ciphers, errors = set(), []
    for _ in range(20):
        status, body = server.get("/tls")
        if status != 200:
            errors.append(body)
        else:
            ciphers.add(body["cipher"])
    assert not errors, errors[:3]
    assert ciphers and "" not in ciphers, ciphers  # every pooled session negotiated TLS
