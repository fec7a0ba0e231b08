"""Config parsing: URLs, dicts, the seed's aliases, typos, secrets and sizing."""

from __future__ import annotations

import pytest

import gunicorn_pool
from gunicorn_pool import ConfigError, DatabasePool, mask_dsn, parse_config
from gunicorn_pool.base import WorkerProfile, set_profile


@pytest.fixture(autouse=True)
def _sync_profile():
    set_profile(WorkerProfile())
    yield
    set_profile(WorkerProfile())


def test_mysql_url_with_query_options():
    cfg = parse_config("main", "mysql://app:s%40cret@db.internal:3307/shop?charset=latin1&max_size=4&timeout=2.5")
    assert (cfg.adapter, cfg.host, cfg.port, cfg.user, cfg.password, cfg.database) == (
        "mysql", "db.internal", 3307, "app", "s@cret", "shop",
    )  # fmt: skip
    assert cfg.charset == "latin1" and cfg.max_size == 4 and cfg.timeout == 2.5


def test_probe_after_default_value_and_none():
    assert parse_config("p", "mysql://u@h/d").probe_after == 0.0001
    assert parse_config("p", "mysql://u@h/d?probe_after=0.002").probe_after == 0.002
    assert parse_config("p", "mysql://u@h/d?probe_after=none").probe_after is None
    assert parse_config("p", {"host": "h", "probe_after": None}).probe_after is None


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb"])
def test_mysql_scheme_spellings(scheme):
    assert parse_config("p", f"{scheme}://u@h/d").adapter == "mysql"


def test_mysql_defaults():
    cfg = parse_config("p", {"host": "h"})
    assert (cfg.port, cfg.charset, cfg.connect_timeout, cfg.autocommit) == (3306, "utf8mb4", 5.0, True)
    assert cfg.min_size is None and cfg.max_size is None  # filled in by the worker profile


@pytest.mark.parametrize(
    "url, path",
    [
        ("sqlite:///app.db", "app.db"),
        ("sqlite:////var/lib/app.db", "/var/lib/app.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url, path):
    cfg = parse_config("local", url)
    assert cfg.adapter == "sqlite" and cfg.database == path


def test_seed_aliases_name_and_pass():
    cfg = parse_config(
        "p", {"adapter": "mysql", "name": "shop", "pass": "pw", "host": "h", "user": "u", "prefix": "t_"}
    )
    assert cfg.database == "shop" and cfg.password == "pw" and cfg.prefix == "t_"


def test_alias_given_twice_is_an_error():
    with pytest.raises(ConfigError, match="'database' given twice"):
        parse_config("p", {"name": "a", "database": "b"})


def test_typo_names_the_option_and_the_pool():
    with pytest.raises(ConfigError) as info:
        parse_config("reports", {"host": "h", "max_sise": 3})
    assert "'reports'" in str(info.value) and "'max_sise'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_typo_in_url_query_is_refused():
    with pytest.raises(ConfigError, match="unknown option 'timout'"):
        parse_config("p", "mysql://u@h/d?timout=3")


def test_typo_refused_when_databasepool_is_built():
    with pytest.raises(ConfigError, match="'conect_timeout'"):
        DatabasePool({"default": {"host": "h", "conect_timeout": 1}})


@pytest.mark.parametrize(
    "value, message",
    [
        ("oracle://u@h/d", "unsupported URL scheme"),
        ("mysql://u@h:notaport/d", "bad port"),
        ({"adapter": "oracle"}, "unknown adapter"),
        ({"adapter": "sqlite"}, "needs a database path"),
        ({"min_size": 5, "max_size": 2}, "larger than max_size"),
        ({"max_size": 0}, "max_size must be >= 1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"probe_after": -1}, "probe_after must be >= 0 or none"),
        ({"port": "abc"}, "port must be >= 1"),
        (42, "must be a dict or a URL"),
    ],
)
def test_bad_values_are_refused_with_the_pool_name(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config("bad", value)
    assert "'bad'" in str(info.value)


def test_password_never_in_repr_dsn_or_errors():
    cfg = parse_config("p", "mysql://app:TopSecret99@h:3306/d")
    assert "TopSecret99" not in repr(cfg) and "TopSecret99" not in str(cfg)
    assert cfg.dsn == "mysql://app:***@h:3306/d"
    pool = DatabasePool({"default": "mysql://app:TopSecret99@h:3306/d"})
    assert "TopSecret99" not in repr(pool) and "TopSecret99" not in repr(pool.pool())
    with pytest.raises(ConfigError) as info:
        parse_config("p", "mysql://app:TopSecret99@h:3306/d?nope=1")
    assert "TopSecret99" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config("p", "redis://app:TopSecret99@h:3306/d")
    assert "TopSecret99" not in str(info.value)


def test_mask_dsn():
    assert mask_dsn("mysql://app:s3cret@db:3306/x") == "mysql://app:***@db:3306/x"
    assert mask_dsn("mysql://app@db/x") == "mysql://app@db/x"
    assert mask_dsn("connect failed for s3cret", "s3cret") == "connect failed for ***"


def test_password_from_env(monkeypatch):
    monkeypatch.setenv("GP_TEST_DB_PW", "from-env")
    assert parse_config("p", {"host": "h", "password_env": "GP_TEST_DB_PW"}).password == "from-env"
    monkeypatch.delenv("GP_TEST_DB_PW")
    with pytest.raises(ConfigError, match="GP_TEST_DB_PW.*not set"):
        parse_config("p", {"host": "h", "password_env": "GP_TEST_DB_PW"})


def test_password_from_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert parse_config("p", {"host": "h", "password_file": str(secret)}).password == "from-file"
    with pytest.raises(ConfigError, match="cannot read password_file"):
        parse_config("p", {"host": "h", "password_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="password once"):
        parse_config("p", {"host": "h", "password": "x", "password_file": str(secret)})


def test_url_bools_and_session_list():
    cfg = parse_config("p", "mysql://u@h/d?strict=true&autocommit=0&session=SET+a%3D1&session=SET+b%3D2")
    assert cfg.strict is True and cfg.autocommit is False
    assert cfg.session == ("SET a=1", "SET b=2")


@pytest.mark.parametrize(
    "profile, explicit, expected",
    [
        (WorkerProfile("sync"), {}, (1, 1)),
        (WorkerProfile("thread", threads=6), {}, (1, 6)),
        (WorkerProfile("gevent"), {}, (1, 10)),
        (WorkerProfile("gevent"), {"max_size": 4}, (1, 4)),
        (WorkerProfile("gevent"), {"min_size": 0, "max_size": 4}, (0, 4)),
        (WorkerProfile("sync"), {"min_size": 3}, (3, 3)),
        (WorkerProfile("thread", threads=8), {"min_size": 2}, (2, 8)),
    ],
)
def test_sizing_defaults_per_worker_type_and_explicit_wins(profile, explicit, expected):
    set_profile(profile)
    pool = DatabasePool({"default": {"adapter": "sqlite", "database": ":memory:", **explicit}})
    p = pool.pool()
    assert (p.min_size, p.max_size) == expected


def test_single_config_shorthand():
    assert list(DatabasePool("sqlite:///:memory:").configs) == ["default"]
    assert list(DatabasePool({"host": "h", "user": "u"}).configs) == ["default"]
    assert sorted(DatabasePool({"a": "sqlite:///:memory:", "b": {"host": "h"}}).configs) == ["a", "b"]


def test_unknown_pool_name_lists_known():
    db = DatabasePool({"a": "sqlite:///:memory:"})
    with pytest.raises(KeyError, match="no database 'b'.*known: a"):
        db.connection("b")


def test_errors_form_a_hierarchy():
    for exc in ("PoolTimeout", "TooManyRequests", "PoolClosed", "ConnectError", "ConfigError", "PoolStartupError"):
        assert issubclass(getattr(gunicorn_pool, exc), gunicorn_pool.PoolError)
