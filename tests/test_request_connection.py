"""request_connection(): a request is one transaction whatever the pool's autocommit, and a
teardown that closes the lent connection is told and counted.

A Flask + PyMySQL shop (tests/apps/flask_shop_app.py) ported with the README's ``g.db`` recipe,
on a pool with the default ``autocommit=true``, under a real gunicorn and MariaDB.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from support import admin_connect, pool_conf, wait_until

pytestmark = pytest.mark.mysql


@pytest.fixture
def shop(mysql_server: None) -> Any:
    orders, stock = f"gp_orders_{secrets.token_hex(3)}", f"gp_stock_{secrets.token_hex(3)}"
    admin = admin_connect(read_timeout=10)
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {orders} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"CREATE TABLE {stock} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {stock} VALUES (1, 5)")
    try:
        yield {"GP_SHOP_ORDERS": orders, "GP_SHOP_STOCK": stock}
    finally:
        with admin.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 10")
            cur.execute(f"DROP TABLE IF EXISTS {orders}, {stock}")
        admin.close()


def _count(table: str, sql: str = "COUNT(*)") -> Any:
    admin = admin_connect(read_timeout=10)
    try:
        with admin.cursor() as cur:
            cur.execute(f"SELECT {sql} FROM {table}")
            return cur.fetchone()[0]
    finally:
        admin.close()


@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_a_failed_order_leaves_no_row_on_an_autocommit_pool(mysql_user, gunicorn, shop, kind):
    """Before: the pool's default autocommit committed the order's INSERT at once, and the app's
    own rollback had nothing to undo: an order whose stock update failed stayed in the table."""
    conf = pool_conf({"default": mysql_user.config(timeout=5)}, kind=kind, workers=1)
    server = gunicorn(conf, app="flask_shop_app:app", env=shop)
    server.start(workers_ready=1)
    # A request commits when it ends, after its response was sent: wait for what it committed.
    assert server.get("/order/3")[0] == 200
    wait_until(lambda: _count(shop["GP_SHOP_ORDERS"]) == 1, 5, what="the first order committed")
    assert server.get("/order/10")[0] == 500  # the view raised after its INSERT
    assert server.get("/order-503/10")[0] == 503  # the view answered 503 after its INSERT
    assert server.get("/order/2")[0] == 200
    wait_until(lambda: _count(shop["GP_SHOP_STOCK"], "v") == 0, 5, what="the last order committed")
    assert _count(shop["GP_SHOP_ORDERS"]) == 2, "a failed request's INSERT was committed"
    stats = server.get("/stats")[1]["stats"]["default"]
    assert stats["connections_leaked"] == 0 and stats["connections_reset"] == 0, stats


def test_a_teardown_that_closes_the_connection_is_logged_once_and_counted(mysql_user, gunicorn, shop):
    """Before: conn.close() in the ported app's teardown turned pooling into a connect per request
    without a word. It closes nothing now (the request gives its connection back, committed), and
    is counted and logged once."""
    server = gunicorn(pool_conf({"default": mysql_user.config(timeout=5)}, kind="sync", workers=1),
                      app="flask_shop_app:app", env={**shop, "GP_SHOP_CLOSE": "1"})  # fmt: skip
    server.start(workers_ready=1)
    for _ in range(3):
        assert server.get("/order/1")[0] == 200
    wait_until(lambda: _count(shop["GP_SHOP_ORDERS"]) == 3, 5, what="3 orders committed")  # closing commits too
    stats = server.get("/stats")[1]["stats"]["default"]
    assert stats["connections_closed"] == 3 and stats["connections_num"] == 1, stats  # /stats counts before its own
    assert server.log().count("conn.close() on a lent connection") == 1, server.log()[-2000:]
