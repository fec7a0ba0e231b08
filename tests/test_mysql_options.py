"""PyMySQL's own options as config keys of the mysql adapter: ``cursorclass``, ``conv``,
``client_flag``, ``local_infile``, ``ssl``; ``defer_connect`` refused with a reason; unknown keys
refused with the list of accepted ones. Dict configs and URLs (a dotted name is imported)."""

from __future__ import annotations

import pymysql
import pytest
from pymysql.constants import CLIENT, FIELD_TYPE
from support import database_pools

from gunicorn_pool.config import parse_config
from gunicorn_pool.errors import ConfigError

SECRET = "Zq9-s3cr3t-Xw"

#: A conversions dict for the tests (importable by its dotted name from a URL).
TIME_AS_TEXT = {**pymysql.converters.conversions, FIELD_TYPE.TIME: lambda v: f"time:{v}"}


def test_keys_from_a_dict_and_from_a_url():
    cfg = parse_config("p", {"cursorclass": pymysql.cursors.DictCursor, "conv": TIME_AS_TEXT,
                             "client_flag": CLIENT.FOUND_ROWS, "local_infile": True})  # fmt: skip
    assert cfg.cursorclass is pymysql.cursors.DictCursor and cfg.client_flag == CLIENT.FOUND_ROWS
    assert cfg.driver_kwargs() == {"cursorclass": pymysql.cursors.DictCursor, "conv": TIME_AS_TEXT,
                                   "local_infile": True}  # fmt: skip
    url = parse_config("p", "mysql://app:pw@db/shop?cursorclass=pymysql.cursors.SSDictCursor"
                            "&conv=test_mysql_options.TIME_AS_TEXT&client_flag=FOUND_ROWS|MULTI_STATEMENTS"
                            "&local_infile=true")  # fmt: skip
    assert url.cursorclass is pymysql.cursors.SSDictCursor and url.conv == TIME_AS_TEXT and url.local_infile
    assert url.client_flag == CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS
    assert parse_config("p", "mysql://db/x?client_flag=2&cursorclass=pymysql.cursors:DictCursor").client_flag == 2
    assert parse_config("p", {}).driver_kwargs() == {} and parse_config("p", {}).client_flag == 0


def test_pymysql_ssl_dict_becomes_the_pool_tls_keys():
    cfg = parse_config("p", {"ssl": {"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"}})
    assert (cfg.ssl_ca, cfg.ssl_cert, cfg.ssl_key, cfg.ssl_verify) == ("/ca.pem", "/c.pem", "/k.pem", "identity")
    assert parse_config("p", {"ssl": {"ca": "/ca.pem", "check_hostname": False}}).ssl_verify is True
    assert parse_config("p", {"ssl": {"ca": "/ca.pem", "verify_mode": "none"}}).ssl_verify is False
    assert parse_config("p", {"ssl": {}}).ssl_verify is False  # PyMySQL's: no CA, nothing verified


@pytest.mark.parametrize("raw, fragment", [
    ({"defer_connect": True}, "'defer_connect' is not supported: the pool opens every connection itself"),
    ({"sql_mode": "ANSI"}, "give it as a session statement"),
    ({"read_default_file": "/etc/my.cnf"}, "where the pool can check them and mask the password"),
    ({"cursor_class": "x"}, r"unknown option 'cursor_class' \(known: .*cursorclass.*local_infile.*ssl.*\)"),
    ({"cursorclass": "pymysql.cursors.NoSuchCursor"}, "cannot import cursorclass 'pymysql.cursors.NoSuchCursor'"),
    ({"cursorclass": "nosuchmodule.Cursor"}, "cannot import cursorclass 'nosuchmodule.Cursor'"),
    ({"cursorclass": "DictCursor"}, "cursorclass must be a dotted name"),
    ({"cursorclass": dict}, "cursorclass must be a PyMySQL cursor class"),
    ({"cursorclass": "pymysql.converters.conversions"}, "cursorclass must be a PyMySQL cursor class"),
    ({"conv": "pymysql.cursors.Cursor"}, "conv must be a dict"),
    ({"conv": {"TIME": str}}, "conv must be a dict of field type numbers and Python types"),
    ({"conv": {11: "str"}}, "conv must be a dict"),
    ({"client_flag": -1}, "client_flag must be >= 0"),
    ({"client_flag": "FOUND_ROWS|NO_SUCH_FLAG"}, "client_flag must be a number or pymysql.constants.CLIENT names"),
    ({"ssl": "/ca.pem"}, "ssl must be a dict"),
    ({"ssl": {"capath": "/etc/ssl"}}, "ssl key 'capath' is not supported"),
    ({"ssl": {"ca": "/ca.pem"}, "ssl_key": "/k.pem"}, "give ssl .* or the ssl_\\* keys, not both"),
    ({"adapter": "postgresql", "cursorclass": "pymysql.cursors.DictCursor"}, "does not apply to adapter 'postgresql'"),
])  # fmt: skip
def test_bad_values_name_the_pool_and_the_key(raw, fragment):
    with pytest.raises(ConfigError, match=fragment) as caught:
        parse_config("shop", raw)
    assert "pool 'shop'" in str(caught.value)


@pytest.mark.parametrize("key", ["cursorclass", "conv", "client_flag", "ssl"])
def test_a_secret_in_the_wrong_key_is_never_echoed(key):
    for config in ({key: SECRET}, f"mysql://app:{SECRET}@db/shop?{key}={SECRET}"):
        with pytest.raises(ConfigError) as caught:
            parse_config("shop", config)
        assert SECRET not in str(caught.value), caught.value


@pytest.fixture
def make_db(mysql_user):
    yield from database_pools(mysql_user.config, name="options")


@pytest.mark.mysql
def test_a_dict_cursor_app_works_through_db_connection(make_db, mysql_user, scratch_table):
    """``cursorclass`` as a class in a dict config and as a dotted name in a URL: every cursor of
    db.connection() is a DictCursor, also after a session reset."""
    from gunicorn_pool import DatabasePool

    by_url = DatabasePool({"default": mysql_user.url(cursorclass="pymysql.cursors.DictCursor", max_size=1)},
                          name="options-url")  # fmt: skip
    by_url.init_pool()
    try:
        for db in (make_db(cursorclass=pymysql.cursors.DictCursor), by_url):
            with db.connection() as conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {scratch_table} (v) VALUES (%s)", (5,))
                cur.execute(f"SELECT v, CONNECTION_ID() AS session FROM {scratch_table} LIMIT 1")
                row = cur.fetchone()
                cur.execute("SET @gp_dict = 1")  # costs a reset, which keeps the cursor class
            assert row["v"] == 5
            with db.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID() AS session, @gp_dict AS v")
                assert cur.fetchone() == {"session": row["session"], "v": None}
    finally:
        by_url.close_pool()


@pytest.mark.mysql
def test_conv_client_flag_and_local_infile_reach_every_connection(mysql_user, scratch_table, tmp_path):
    """The three from a URL (conv by its dotted name), on the first lease and after a reset."""
    from gunicorn_pool import DatabasePool

    data = tmp_path / "rows.tsv"
    data.write_text("1\n2\n")
    url = mysql_user.url(conv="test_mysql_options.TIME_AS_TEXT", client_flag="FOUND_ROWS", local_infile="true",
                         max_size=1)  # fmt: skip
    db = DatabasePool({"default": url}, name="options-url")
    db.init_pool()
    try:
        for _ in range(2):  # the second lease follows a reset (the SET below costs one)
            with db.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT CAST('01:02:03' AS TIME)")
                assert cur.fetchone()[0] == "time:01:02:03"
                cur.execute(f"DELETE FROM {scratch_table}")
                cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {scratch_table} (v)", (str(data),))
                assert cur.execute(f"UPDATE {scratch_table} SET v = v") == 2  # FOUND_ROWS: matched, not changed
                cur.execute("SET @gp_flags = 1")
        assert db.pool().stats()["connections_reset"] == 2
    finally:
        db.close_pool()
