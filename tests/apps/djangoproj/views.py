"""Views of the test project; each answers JSON with the worker's pid.

/conn/        an ORM count and CONNECTION_ID() (pg_backend_pid() on PostgreSQL)
/orm/         one ORM query (the bench's view)
/sleep/<s>/   SELECT SLEEP(s) (pg_sleep) then CONNECTION_ID()
/create/      create a row; /create-fail/ create a row, then raise
/atomic-fail/ create a row inside transaction.atomic(), then raise inside it
/setvar/      SET @gp_leak = 42 (gp.leak on PostgreSQL) on the request's session; /getvar/ read it
/begin/       BEGIN, then create a row, and return without committing (a transaction left open)
/autocommit/  Django's and the session's autocommit, and whether a transaction is open
/rows/        how many rows the table has
/stats/       the Django pool service's stats()
"""

import json
import os

from django.db import connection, transaction
from django.http import HttpResponse

from .shop.models import Item

ROUTES = ("conn", "orm", "create", "setvar", "getvar", "autocommit", "rows", "stats", "begin")


def _json(body, status=200):
    body["pid"] = os.getpid()
    return HttpResponse(json.dumps(body), status=status, content_type="application/json")


def _session_id():
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()" if connection.vendor == "mysql" else "SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def conn(request):
    rows = Item.objects.count()
    return _json({"conn_id": _session_id(), "rows": rows})


def orm(request):
    item = Item.objects.filter(pk=1).first()
    return HttpResponse(b"1" if item is not None else b"0", content_type="text/plain")


def sleep(request, seconds):
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(%s)" if connection.vendor == "mysql" else "SELECT pg_sleep(%s)", [float(seconds)])
    return _json({"conn_id": _session_id()})


def create(request):
    Item.objects.create(v=1)
    return _json({"conn_id": _session_id(), "rows": Item.objects.count()})


def create_fail(request):
    Item.objects.create(v=2)
    raise RuntimeError("the view failed after writing")


def atomic_fail(request):
    with transaction.atomic():
        Item.objects.create(v=3)
        raise RuntimeError("the view failed inside atomic()")


def begin(request):
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
    Item.objects.create(v=4)
    return _json({"conn_id": _session_id()})


def setvar(request):
    with connection.cursor() as cursor:
        cursor.execute("SET @gp_leak = 42" if connection.vendor == "mysql" else "SET gp.leak = '42'")
    return _json({"conn_id": _session_id()})


def getvar(request):
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute("SELECT @gp_leak, CONNECTION_ID()")
        else:  # a placeholder setting once set reads '' after DISCARD ALL
            cursor.execute("SELECT NULLIF(current_setting('gp.leak', true), ''), pg_backend_pid()")
        value, conn_id = cursor.fetchone()
    return _json({"value": value, "conn_id": conn_id})


def autocommit(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@autocommit")
        (session,) = cursor.fetchone()
    return _json({"django": connection.get_autocommit(), "session": session,
                  "in_atomic": connection.in_atomic_block})  # fmt: skip


def rows(request):
    return _json({"rows": Item.objects.count()})


def stats(request):
    from gunicorn_pool.django.service import configured_service

    return _json({"stats": configured_service().stats()})
