"""Registry and discovery: register/get, entry points, and the bounded app walk."""

from __future__ import annotations

import sys
import textwrap

import pytest

import gunicorn_pool
from gunicorn_pool import PoolInterface, registry


class Service(PoolInterface):
    def __init__(self, name="svc"):
        self.name = name
        self.opened = 0

    def init_pool(self):
        self.opened += 1

    def close_pool(self):
        pass


@pytest.fixture(autouse=True)
def _clean_registry():
    saved, settings = dict(registry._services), registry.Settings(**vars(registry.settings))
    registry._services.clear()
    yield
    registry._services.clear()
    registry._services.update(saved)
    registry.settings.__dict__.update(vars(settings))


def test_register_returns_service_and_get_finds_it():
    svc = Service()
    assert gunicorn_pool.register(svc, name="db") is svc
    assert gunicorn_pool.get("db") is svc


def test_register_again_replaces_for_sighup():
    first, second = Service(), Service()
    gunicorn_pool.register(first, name="db")
    gunicorn_pool.register(second, name="db")
    assert gunicorn_pool.get("db") is second
    assert [s for _, s in registry.discover()] == [second]


def test_register_default_name_and_type_check():
    gunicorn_pool.register(Service("cache"))
    assert "cache" in gunicorn_pool.registered()
    with pytest.raises(TypeError, match="PoolInterface"):
        gunicorn_pool.register(object())


def test_get_unknown_lists_known_names():
    gunicorn_pool.register(Service(), name="db")
    gunicorn_pool.register(Service(), name="cache")
    with pytest.raises(KeyError, match=r"'dbx'.*known: cache, db"):
        gunicorn_pool.get("dbx")


_MODULE_SERVICE = Service("module")  # reachable only through this module's namespace


class Container:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Exploding:
    @property
    def service(self):
        raise AssertionError("the walk must never call properties")

    def __getattr__(self, name):
        raise AssertionError("the walk must never call __getattr__")


def test_walk_finds_services_in_attrs_dicts_and_lists():
    a, b, c = Service("a"), Service("b"), Service("c")
    app = Container(extensions={"db": a}, middleware=[Container(app=Container(pool=b))], sets=(c,))
    found = dict(registry.walk(app))
    assert set(map(id, found.values())) == {id(a), id(b), id(c)}
    assert "app.extensions['db']" in found


def test_walk_is_bounded_in_depth():
    deep = Service("deep")
    app = Container(l1=Container(l2=Container(l3=Container(l4=Container(l5=deep)))))
    assert list(registry.walk(app, max_depth=4)) == []
    assert [s for _, s in registry.walk(app, max_depth=5)] == [deep]


def test_walk_survives_cycles_and_never_triggers_properties():
    svc = Service()
    app = Container(svc=svc, weird=Exploding())
    app.me = app
    app.loop = [app, {"back": app}]
    assert [s for _, s in registry.walk(app)] == [svc]


def test_walk_skips_modules_and_classes():
    holder = type("Holder", (), {"svc": _MODULE_SERVICE})
    app = Container(mod=sys.modules[__name__], cls=holder)
    assert list(registry.walk(app)) == []  # _MODULE_SERVICE is not reached through a module or a class
    assert [s for _, s in registry.walk(Container(x=_MODULE_SERVICE))] == [_MODULE_SERVICE]


def test_discover_order_dedupe_and_switch_off():
    registered, walked = Service("r"), Service("w")
    gunicorn_pool.register(registered, name="r")
    app = Container(a=registered, b=walked)
    assert [s for _, s in registry.discover(app)] == [registered, walked]
    gunicorn_pool.configure(walk_app=False)
    assert [s for _, s in registry.discover(app)] == [registered]


def test_configure_rejects_unknown_setting():
    with pytest.raises(TypeError, match="walk_ap"):
        gunicorn_pool.configure(walk_ap=False)


def test_entry_points_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "gp_ep_demo.py").write_text(
        textwrap.dedent(
            """
            from gunicorn_pool import PoolInterface
            class Demo(PoolInterface):
                def init_pool(self): pass
                def close_pool(self): pass
            instance = Demo()
            """
        )
    )
    dist = tmp_path / "gp_ep_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gp-ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[gunicorn_pool.services]\ndemo = gp_ep_demo:instance\nmade = gp_ep_demo:Demo\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = dict(registry.discover())
    assert {"demo", "made"} <= set(found)
    assert found["demo"] is sys.modules["gp_ep_demo"].instance
    assert isinstance(found["made"], PoolInterface)
    gunicorn_pool.configure(entry_points=False)
    assert "demo" not in dict(registry.discover())
