"""Registry and discovery: register/get, entry points, and the bounded app walk."""

from __future__ import annotations

import subprocess
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
    # A discovery after the boot's (the ASGI app's lifespan: lifecycle.afind_late) reads no entry
    # point: the factory "made" would build a second service, and open a second pool set.
    assert {"demo", "made"}.isdisjoint(dict(registry.discover(entry_points=False)))
    gunicorn_pool.configure(entry_points=False)
    assert "demo" not in dict(registry.discover())


# -- the walk runs no app code ------------------------------------------------------------------------


class Tripwire(Exception):
    """Raised by app code the walk must never run (the walk swallows errors: the test checks ``ran``)."""


ran: list[str] = []
armed = [False]  # the traps fire only during the tests below (their classes outlive them)


def trip(what):
    if not armed[0]:
        return False
    ran.append(what)
    raise Tripwire(what)


class ItemsTrap(dict):
    def items(self):
        trip("dict.items override")
        return super().items()

    def __len__(self):
        trip("dict.__len__ override")
        return super().__len__()

    def __iter__(self):
        trip("dict.__iter__ override")
        return super().__iter__()


class SequenceTrap(list):
    def __iter__(self):
        trip("list.__iter__ override")
        return super().__iter__()

    def __len__(self):
        trip("list.__len__ override")
        return super().__len__()


class SetTrap(frozenset):
    def __iter__(self):
        trip("frozenset.__iter__ override")
        return super().__iter__()


class DictPropertyTrap:
    def __init__(self, **kw):
        for key, value in kw.items():
            setattr(self, key, value)  # plain attributes still land in the instance dict

    @property
    def __dict__(self):
        trip("__dict__ property")
        return {}


class MetaTrap(type(PoolInterface)):
    """A metaclass of the app's (on a PoolInterface subclass: ABCMeta's subclass checks reach it)."""

    @property
    def __mro__(cls):
        trip("metaclass __mro__")
        return type.__dict__["__mro__"].__get__(cls)

    def __subclasscheck__(cls, sub):
        trip("metaclass __subclasscheck__")
        return super().__subclasscheck__(sub)


class ServiceWithMetaTrap(Service, metaclass=MetaTrap):
    pass


class KeyTrap(str):
    def __repr__(self):
        trip("key __repr__")
        return "KeyTrap"

    def __format__(self, spec):
        trip("key __format__")
        return "KeyTrap"


@pytest.fixture
def no_app_code():
    ran.clear()
    armed[0] = True
    try:
        yield
    finally:
        armed[0] = False
    assert ran == [], f"the walk ran app code: {ran}"


def test_walk_reads_container_subclasses_from_their_storage_without_their_methods(no_app_code):
    """A dict subclass holding a pool is still found: its C-level storage is read, its overridden
    items() / __iter__ / __len__ never run (before: the walk called them)."""
    a, b, c = Service("a"), Service("b"), Service("c")
    app = Container(ext=ItemsTrap(db=a), seq=SequenceTrap([b]), frozen=SetTrap([c]))
    found = dict(registry.walk(app))
    assert set(map(id, found.values())) == {id(a), id(b), id(c)}
    assert "app.ext['db']" in found and "app.seq[0]" in found


def test_walk_never_resolves_a_dict_property_or_a_metaclass_attribute(no_app_code):
    hidden, meta = Service("hidden"), ServiceWithMetaTrap("meta")
    fresh = type("Fresh", (), {})()  # a type no subclass check saw yet: ABCMeta asks every subclass
    app = Container(trap=DictPropertyTrap(db=hidden), meta=meta, fresh=fresh)
    assert [s for _, s in registry.walk(app)] == [meta]  # the attributes behind a __dict__ property are not read


def test_walk_never_calls_a_key_repr_or_a_mapping_proxy_s_mapping(no_app_code):
    import types

    a, b = Service("a"), Service("b")
    attrs = Container()
    attrs.__dict__[KeyTrap("odd")] = a  # a str subclass as an attribute name
    app = Container(keys={KeyTrap("k"): attrs}, proxy=types.MappingProxyType(ItemsTrap(db=b)))
    found = dict(registry.walk(app))
    assert set(map(id, found.values())) == {id(a), id(b)}
    assert "app.keys[...].?" in found and "app.proxy['db']" in found


def test_discovery_parses_no_metadata_when_no_distribution_declares_the_group():
    """importlib.metadata parses every installed distribution and imports ~40 modules (~0.8 MiB
    per worker, bench/memory.py) to find no service: a substring search of entry_points.txt
    files tells first."""
    code = (
        "import sys; from gunicorn_pool import registry; registry.discover();"
        " print('importlib.metadata' in sys.modules, 'email.message' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"], out
