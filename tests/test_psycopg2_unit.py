"""The psycopg2 driver without a server: how a config chooses it, what reaches libpq, and the
pieces of its session tracking that need no server (the statement scan that reads only the last
statement's tag, the cursor classes that carry the guard). Against the real server:
tests/test_psycopg2.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg2.extensions as ext
import psycopg2.extras
import pytest
from support import ROOT

from gunicorn_pool import ConfigError, DatabasePool, parse_config
from gunicorn_pool.connectors import connector_class, make_connector
from gunicorn_pool.connectors.pgcalls import CALLS, scan
from gunicorn_pool.connectors.postgresql import PostgreSQLConnector
from gunicorn_pool.connectors.psycopg2 import Psycopg2Connector, cursor_class

SECRET = "Pa55-wörd:/?#@ 'q'"


@pytest.mark.parametrize(
    "config",
    [
        {"adapter": "postgresql", "driver": "psycopg2", "host": "db", "password": SECRET},
        "postgresql://app:Pa55-w%C3%B6rd%3A%2F%3F%23%40%20%27q%27@db/shop?driver=psycopg2",
        "postgresql+psycopg2://app:Pa55-w%C3%B6rd%3A%2F%3F%23%40%20%27q%27@db/shop",
        "postgres+psycopg2://app:Pa55-w%C3%B6rd%3A%2F%3F%23%40%20%27q%27@db/shop",
    ],
)
def test_the_driver_key_its_url_option_and_scheme_build_a_psycopg2_connector(config):
    db = DatabasePool({"default": config}, name="pg2")
    cfg = db.configs["default"]
    assert cfg.driver == "psycopg2"
    connector = make_connector(cfg)
    assert isinstance(connector, Psycopg2Connector)
    assert ext.parse_dsn(connector._dsn)["password"] == SECRET  # quoted for libpq, as given
    for text in (repr(db), cfg.dsn, connector.dsn, connector.address, repr(db.pool()), repr(cfg)):
        assert SECRET not in text and "Pa55" not in text
    db.close_pool()


def test_psycopg_3_stays_the_driver_where_it_is_installed_and_named():
    assert parse_config("p", "postgresql://db/shop").driver == "psycopg"
    assert parse_config("p", "postgresql+psycopg://db/shop").driver == "psycopg"
    assert parse_config("p", {"adapter": "pgsql", "driver": "psycopg"}).driver == "psycopg"
    assert connector_class("postgresql", "psycopg") is PostgreSQLConnector
    assert connector_class("postgresql") is PostgreSQLConnector
    assert parse_config("p", "mysql://db/shop").driver == "pymysql"  # MySQL's own default


@pytest.mark.parametrize(
    "config, message",
    [
        ({"adapter": "postgresql", "driver": "psycopg3x"}, "driver"),
        ({"adapter": "mysql", "driver": "psycopg2"}, "driver 'psycopg2' is not one of mysql's"),
        ({"adapter": "postgresql", "driver": "psycopg2", "prepare_threshold": 3}, "psycopg2 never prepares"),
        ("postgresql+psycopg2://db/shop?driver=psycopg", "given twice"),
    ],
)
def test_a_wrong_driver_or_a_key_psycopg2_has_not_is_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_config("p", config)


HIDE_PSYCOPG = """
import json, sys
sys.modules["psycopg"] = None  # as if psycopg 3 were not installed
from gunicorn_pool import DatabasePool, parse_config
from gunicorn_pool.connectors import make_connector
cfg = parse_config("p", "postgresql://app@db/shop")
db = DatabasePool({"default": "postgresql://app@db/shop"}, name="only2")  # imports the connector now
connector = make_connector(cfg)
print(json.dumps({"driver": cfg.driver, "connector": type(connector).__name__,
                  "psycopg": sys.modules.get("psycopg") is not None}))
"""


def test_psycopg2_is_the_default_where_psycopg_3_is_not_installed():
    out = subprocess.run([sys.executable, "-c", HIDE_PSYCOPG], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == {"driver": "psycopg2", "connector": "Psycopg2Connector", "psycopg": False}


def test_libpq_gets_the_postgresql_keys_and_the_multi_host_lists():
    cfg = parse_config("p", {
        "adapter": "postgresql", "driver": "psycopg2", "host": "a.internal,b.internal:6433", "port": 6432,
        "user": "app", "password": "pw", "database": "shop", "sslmode": "verify-full", "sslrootcert": "/ca.pem",
        "application_name": "web", "options": "-c search_path=shop", "target_session_attrs": "read-write",
        "load_balance_hosts": "random", "connect_timeout": 0.5,
    })  # fmt: skip
    params = ext.parse_dsn(Psycopg2Connector(cfg)._dsn)
    assert params == {
        "host": "a.internal,b.internal", "port": "6432,6433", "user": "app", "password": "pw", "dbname": "shop",
        "sslmode": "verify-full", "sslrootcert": "/ca.pem", "application_name": "web",
        "options": "-c search_path=shop", "target_session_attrs": "read-write", "load_balance_hosts": "random",
    }  # fmt: skip


def test_pgbouncer_and_reset_session_off_track_no_statement():
    plain = Psycopg2Connector(parse_config("p", {"adapter": "postgresql", "driver": "psycopg2"}))
    assert plain._reset_server and plain._reset_client
    bouncer = Psycopg2Connector(parse_config("p", {"adapter": "postgresql", "driver": "psycopg2", "pgbouncer": True}))
    assert not bouncer._reset_server and bouncer._reset_client
    off = Psycopg2Connector(parse_config("p", {"adapter": "postgresql", "driver": "psycopg2", "reset_session": False}))
    assert not off._reset_server and not off._reset_client and off.check_in == off._check_in_transaction


HARMLESS = frozenset({"lower", "count"})


@pytest.mark.parametrize(
    "sql, verdict",
    [
        ("SET work_mem = '1MB'; SELECT 1", CALLS),  # psycopg2 sees SELECT's tag only
        ("LISTEN ch; SELECT 1", CALLS),
        ("  /* first */ -- note\n reset all ;\n SELECT 1", CALLS),
        ("SELECT 1; SET work_mem = '1MB'", 0),  # the last statement's tag is seen: SET
        ("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);", 0),  # execute_batch
        ("SELECT ';' AS a; SELECT 2", 0),
        ("SELECT 1 -- ; SET x = 1\n", 0),
        ("BEGIN; UPDATE t SET a = lower('x'); COMMIT", 0),
        ("SELECT 1;; SELECT 2", 0),
        ("WITH x AS (SELECT 1) SELECT * FROM x; SELECT 1", CALLS),  # not a tag's word: a reset, to be safe
    ],
)
def test_a_statement_followed_by_another_counts_by_its_first_word_when_only_the_last_tag_is_seen(sql, verdict):
    assert scan(sql, HARMLESS, all_tags=False) == verdict
    assert scan(sql, HARMLESS) == 0  # psycopg 3 sees every statement's tag


def test_any_cursor_factory_gets_the_guard_once_and_a_guarded_class_is_kept():
    plain = cursor_class(ext.cursor)
    assert cursor_class(ext.cursor) is plain and cursor_class(plain) is plain
    real_dict = cursor_class(psycopg2.extras.RealDictCursor)
    assert issubclass(real_dict, psycopg2.extras.RealDictCursor) and real_dict.execute is not ext.cursor.execute
    named = cursor_class(real_dict, True)
    assert issubclass(named, psycopg2.extras.RealDictCursor) and cursor_class(named, True) is named
    assert named.fetchone is not psycopg2.extras.RealDictCursor.fetchone


def test_the_django_extra_installs_no_postgresql_driver_and_psycopg2_has_its_own():
    """Django prefers psycopg 3 whenever it can import it: an extra that installed psycopg switched a
    psycopg2 project's driver behind its back (and its pool: psycopg_pool then loaded)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {name: value.split() for name, value in cfg["options.extras_require"].items()}
    assert extras["django"] == ["Django>=5.1"]
    assert extras["psycopg2"] == ["psycopg2-binary>=2.9"] and extras["postgresql"] == ["psycopg[binary]>=3.1.14"]
