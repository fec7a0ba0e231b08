"""A Flask + PyMySQL shop, ported to gunicorn_pool with the README's ``g.db`` recipe:
``request_connection("db")`` instead of ``pymysql.connect()`` per request.

An order inserts a row into ``GP_SHOP_ORDERS`` and takes its quantity off ``GP_SHOP_STOCK``; an
order the stock cannot cover fails after its INSERT (a raise: Flask answers 500, or a 503 answer),
and nothing it wrote may survive, whatever the pool's autocommit. ``GP_SHOP_CLOSE=1`` keeps the
habit of the code it was ported from: ``conn.close()`` in the teardown.
"""

import os

from flask import Flask, jsonify

import gunicorn_pool

ORDERS = os.environ["GP_SHOP_ORDERS"]
STOCK = os.environ["GP_SHOP_STOCK"]
app = Flask(__name__)


def get_db():
    return gunicorn_pool.request_connection("db")


@app.teardown_appcontext
def close_db(exc):
    if os.environ.get("GP_SHOP_CLOSE") == "1":
        get_db().close()  # the old code's teardown: pooling turns into a connect per request


def _order(qty):
    cur = get_db().cursor()
    cur.execute(f"INSERT INTO {ORDERS} (v) VALUES (%s)", (qty,))
    cur.execute(f"UPDATE {STOCK} SET v = v - %s WHERE v >= %s", (qty, qty))
    return cur.rowcount == 1


@app.route("/order/<int:qty>")
def order(qty):
    if not _order(qty):
        raise RuntimeError("out of stock")  # Flask answers 500
    return jsonify(ok=True, pid=os.getpid())


@app.route("/order-503/<int:qty>")
def order_503(qty):
    if not _order(qty):
        return jsonify(ok=False, pid=os.getpid()), 503
    return jsonify(ok=True, pid=os.getpid())


@app.route("/stats")
def stats():
    return jsonify(stats=gunicorn_pool.get("db").stats(), pid=os.getpid())
