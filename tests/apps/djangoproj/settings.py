"""Settings of the test Django project, from GP_DJ_* variables set by the test.

GP_DJ_ENGINE     ours (gunicorn_pool.django.mysql, default), stock (django.db.backends.mysql
                 on PyMySQL), postgresql (django.db.backends.postgresql: Django's own psycopg pool
                 with GP_DJ_POOL) or pg-ours (gunicorn_pool.django.postgresql)
GP_DJ_HIDE_PSYCOPG  "1": psycopg 3 and psycopg_pool are made unimportable before Django loads its
                 backends, as in a project that has only psycopg2 installed
GP_DJ_NAME, _USER, _PASSWORD, _HOST, _PORT   the database and login
GP_DJ_POOL       JSON of OPTIONS["pool"] (ours and postgresql); unset: no "pool" key
GP_DJ_CONN_MAX_AGE   "none" or seconds (default 0)
GP_DJ_ATOMIC     "1": ATOMIC_REQUESTS = True
GP_DJ_TABLE      the model's table (created by the test)
"""

import json
import os
import sys

ENGINES = {"ours": "gunicorn_pool.django.mysql", "stock": "django.db.backends.mysql",
           "postgresql": "django.db.backends.postgresql", "pg-ours": "gunicorn_pool.django.postgresql"}  # fmt: skip
KIND = os.environ.get("GP_DJ_ENGINE", "ours")
if os.environ.get("GP_DJ_HIDE_PSYCOPG") == "1":
    sys.modules["psycopg"] = sys.modules["psycopg_pool"] = None  # Django falls back to psycopg2
if KIND == "stock":
    import pymysql

    pymysql.install_as_MySQLdb()  # what a stock Django project on PyMySQL does

SECRET_KEY = "gunicorn-pool-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "djangoproj.urls"
INSTALLED_APPS = ["djangoproj.shop"]
MIDDLEWARE = ["gunicorn_pool.django.middleware.PoolErrorMiddleware"]
WSGI_APPLICATION = "djangoproj.wsgi.application"
LOGGING_CONFIG = None

_max_age = os.environ.get("GP_DJ_CONN_MAX_AGE", "0")
DATABASES = {
    "default": {
        "ENGINE": ENGINES[KIND],
        "NAME": os.environ.get("GP_DJ_NAME", "test"),
        "USER": os.environ.get("GP_DJ_USER", ""),
        "PASSWORD": os.environ.get("GP_DJ_PASSWORD", ""),
        "HOST": os.environ.get("GP_DJ_HOST", "127.0.0.1"),
        "PORT": os.environ.get("GP_DJ_PORT", ""),
        "CONN_MAX_AGE": None if _max_age == "none" else int(_max_age),
        "ATOMIC_REQUESTS": os.environ.get("GP_DJ_ATOMIC") == "1",
        "OPTIONS": {},
    }
}
if "GP_DJ_POOL" in os.environ:
    DATABASES["default"]["OPTIONS"]["pool"] = json.loads(os.environ["GP_DJ_POOL"])
if KIND == "stock":
    # PyMySQL's cheapest connect (no TLS context built per connect), as bench/apps' baselines
    DATABASES["default"]["OPTIONS"]["ssl_disabled"] = True
