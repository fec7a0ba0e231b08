"""Settings of the bench's Django project, from the GPB_* variables set by bench/e2e.py.

GPB_DJ_ENGINE   ours (gunicorn_pool.django.mysql), stock (django.db.backends.mysql on PyMySQL) or
                stock_mysqlclient (django.db.backends.mysql on mysqlclient)
GPB_DJ_DRIVER   our backend's driver (OPTIONS["pool"]["driver"]): pymysql (default) or mysqlclient
GPB_DJ_MAX_AGE  CONN_MAX_AGE of the stock rows: 0 or "none"
GPB_DJ_TABLE    the model's table (created and filled by e2e.py)
GPB_SIZE        our pool's max_size in gevent workers (sync workers use the profile's 1)
"""

import os

from _settings import KW

KIND = os.environ.get("GPB_DJ_ENGINE", "ours")
if KIND == "stock":
    import pymysql

    pymysql.install_as_MySQLdb()  # the usual way to run Django's MySQL backend on PyMySQL

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "djbench.urls"
INSTALLED_APPS = ["djbench"]
MIDDLEWARE = []
LOGGING_CONFIG = None

_db = {"NAME": KW["database"], "USER": KW["user"], "PASSWORD": KW["password"], "HOST": KW["host"],
       "PORT": str(KW["port"])}  # fmt: skip
if KIND in ("stock", "stock_mysqlclient"):
    _age = os.environ.get("GPB_DJ_MAX_AGE", "0")
    # TLS off, as the other baselines of bench/apps (PyMySQL would build a TLS context per connect;
    # MariaDB's client library uses none unless asked)
    _db.update(ENGINE="django.db.backends.mysql", CONN_MAX_AGE=None if _age == "none" else int(_age),
               OPTIONS={"ssl_disabled": True} if KIND == "stock" else {})  # fmt: skip
else:
    _pool = {"max_size": int(os.environ["GPB_SIZE"])} if os.environ.get("GPB_SIZE") else {}
    if os.environ.get("GPB_DJ_DRIVER"):
        _pool["driver"] = os.environ["GPB_DJ_DRIVER"]
    _db.update(ENGINE="gunicorn_pool.django.mysql", OPTIONS={"pool": _pool or True})
DATABASES = {"default": _db}
