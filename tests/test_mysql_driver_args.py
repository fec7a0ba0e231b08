"""MySQLConnector(driver_args=...): PyMySQL arguments a framework needs on every connection."""

from __future__ import annotations

import pymysql
import pytest

pytestmark = pytest.mark.mysql


def test_driver_args_reach_every_connection_and_own_keys_are_refused(mysql_user, scratch_table):
    """MySQLConnector(driver_args=...): Django needs CLIENT.FOUND_ROWS (an UPDATE that changes nothing
    must still count the row: Model.save() inserts otherwise) and its TIME converter."""
    import datetime

    from pymysql.constants import CLIENT

    from gunicorn_pool import ConnectionPool
    from gunicorn_pool.config import parse_config
    from gunicorn_pool.connectors.mysql import MySQLConnector

    cfg = parse_config("p", mysql_user.config(min_size=1, max_size=1))
    conv = {**pymysql.converters.conversions, pymysql.constants.FIELD_TYPE.TIME: lambda v: f"time:{v}"}
    pool = ConnectionPool(MySQLConnector(cfg, driver_args={"conv": conv, "client_flag": CLIENT.FOUND_ROWS}),
                          name="p", options=cfg)  # fmt: skip
    plain = ConnectionPool(MySQLConnector(cfg), name="plain", options=cfg)
    try:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {scratch_table} (v) VALUES (1)")
            assert cur.execute(f"UPDATE {scratch_table} SET v = 1") == 1  # matched, not changed
            cur.execute("SELECT CAST('01:02:03' AS TIME)")
            assert cur.fetchone()[0] == "time:01:02:03"
            cur.execute("SET @x = 1")  # a reset keeps the connection's flags
        with pool.connection() as conn, conn.cursor() as cur:
            assert cur.execute(f"UPDATE {scratch_table} SET v = 1") == 1
        with plain.connection() as conn, conn.cursor() as cur:
            assert cur.execute(f"UPDATE {scratch_table} SET v = 1") == 0  # without FOUND_ROWS: changed rows
            cur.execute("SELECT CAST('01:02:03' AS TIME)")
            assert cur.fetchone()[0] == datetime.timedelta(hours=1, minutes=2, seconds=3)
    finally:
        pool.close()
        plain.close()
    with pytest.raises(ValueError, match="host"):
        MySQLConnector(cfg, driver_args={"host": "elsewhere"})
