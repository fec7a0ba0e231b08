"""gunicorn_pool: the worker's pool, opened at boot by gunicorn_pool.Worker / GeventWorker."""

import os

from _settings import KW, POOL_SIZES, serve_with

import gunicorn_pool

if os.environ.get("GPB_WARM_UP") == "0":  # bench/boot.py: the pool opened at boot, no worker warm-up
    gunicorn_pool.configure(warm_up=False)

# Sizes come from the worker profile: 1 connection for sync, 1 to 10 for gevent. GPB_DRIVER: the
# MySQL driver (bench/e2e.py's mysqlclient mode sets mysqlclient).
DRIVER = {"driver": os.environ["GPB_DRIVER"]} if os.environ.get("GPB_DRIVER") else {}
db = gunicorn_pool.register(gunicorn_pool.DatabasePool({"default": dict(KW, **POOL_SIZES, **DRIVER)}), name="db")
app = serve_with(db.connection)
