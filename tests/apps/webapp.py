"""WSGI app used by the integration tests (served by real gunicorn processes).

Routes (all answer JSON):
  /conn                 pid and the server-side CONNECTION_ID() of the connection used
  /sleep/<s>            SELECT SLEEP(s) on a pooled connection
  /hold/<s>             hold a connection s seconds without a query
  /stats                the pool service's stats()
  /gevent-timeout/<s>   run SELECT SLEEP(1) under gevent.Timeout(s) (gevent workers)
  /rows                 count rows of the poison table (stray-row check)
  /poison[/<s>]         insert a row inside a transaction, then get killed by gevent.Timeout(s)
                        (0.05 s by default); answers the CONNECTION_ID() it used
  /leak                 getconn() and never putconn(): the request leaks its connection
  /keep                 use a connection in a with block and keep the object in a global
  /use-kept             run a query on the connection /keep kept (after its lease ended)
  /request-conn         request_connection() twice: the same connection both times
  /request-conn-fail    request_connection(), insert a row into the poison table, then raise
  /request-conn-hold    request_connection(), its CONNECTION_ID(), SLEEP(0.3) on it, then the same again
  /lock-and-fail        LOCK TABLES the poison table WRITE, then raise (the lock is left behind)
  /insert               insert a row into the poison table; answers how long it took
  /tls                  the TLS cipher of the pooled session (empty: plain TCP)
  /ro[/<table>]         a read-only lease (a replica's, if any): @@server_id, and the rows of <table>
The poison table is gp_poison, or GP_POISON_TABLE if set; the test creates it.
Pool errors map to status codes as tests/apps/_wsgi.py says (ConnectError 502, ...).
"""

import os
import re
import time

from _wsgi import json_app

import gunicorn_pool

POOL = os.environ.get("GP_TEST_SERVICE", "db")
KEY = os.environ.get("GP_TEST_POOL", "default")
POISON = os.environ.get("GP_POISON_TABLE", "gp_poison")
assert re.fullmatch(r"\w+", POISON), "GP_POISON_TABLE must be a plain table name"
KEPT = []


def _query(sql, args=None):
    with gunicorn_pool.get(POOL).connection(KEY) as conn:
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        (conn_id,) = cur.fetchone()
        cur.execute(sql, args)
        rows = cur.fetchall()
    return conn_id, rows


def _route(path):
    parts = path.strip("/").split("/")
    if parts[0] == "conn":
        conn_id, _ = _query("SELECT 1")
        return {"conn_id": conn_id}
    if parts[0] == "sleep":
        conn_id, _ = _query("SELECT SLEEP(%s)", (float(parts[1]),))
        return {"conn_id": conn_id}
    if parts[0] == "hold":
        with gunicorn_pool.get(POOL).connection(KEY):
            time.sleep(float(parts[1]))
        return {}
    if parts[0] == "stats":
        return {"stats": gunicorn_pool.get(POOL).stats()}
    if parts[0] == "gevent-timeout":
        import gevent

        try:
            with gevent.Timeout(float(parts[1])):
                _query("SELECT SLEEP(1)")
        except gevent.Timeout:
            return {"timed_out": True}
        return {"timed_out": False}
    if parts[0] == "poison":
        import gevent

        used = {}
        try:
            with gevent.Timeout(float(parts[1]) if len(parts) > 1 else 0.05):
                with gunicorn_pool.get(POOL).connection(KEY) as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT CONNECTION_ID()")
                    (used["conn_id"],) = cur.fetchone()
                    conn.begin()
                    cur.execute(f"INSERT INTO {POISON} (v) VALUES (1)")
                    cur.execute("SELECT SLEEP(1)")
        except gevent.Timeout:
            return {"timed_out": True, **used}
        return {"timed_out": False, **used}
    if parts[0] == "leak":
        conn = gunicorn_pool.get(POOL).pool(KEY).getconn()
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": cur.fetchone()[0]}
    if parts[0] == "keep":
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            cur = conn.cursor()
            cur.execute("SELECT CONNECTION_ID()")
            KEPT.append(conn)
            return {"conn_id": cur.fetchone()[0]}
    if parts[0] == "use-kept":
        cur = KEPT[-1].cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": cur.fetchone()[0]}
    if parts[0] == "request-conn":
        first = gunicorn_pool.request_connection(POOL, KEY)
        second = gunicorn_pool.request_connection(POOL, KEY)
        cur = second.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": cur.fetchone()[0], "same": first is second}
    if parts[0] == "request-conn-hold":
        cur = gunicorn_pool.request_connection(POOL, KEY).cursor()
        cur.execute("SELECT CONNECTION_ID(), SLEEP(0.3)")
        first = cur.fetchone()[0]
        cur = gunicorn_pool.request_connection(POOL, KEY).cursor()
        cur.execute("SELECT CONNECTION_ID()")
        return {"conn_id": first, "again": cur.fetchone()[0]}
    if parts[0] == "request-conn-fail":
        conn = gunicorn_pool.request_connection(POOL, KEY)
        conn.begin()
        conn.cursor().execute(f"INSERT INTO {POISON} (v) VALUES (1)")
        raise RuntimeError("the view failed after writing")
    if parts[0] == "lock-and-fail":
        with gunicorn_pool.get(POOL).connection(KEY) as conn:
            conn.cursor().execute(f"LOCK TABLES {POISON} WRITE")
            raise RuntimeError("the view failed while holding a table lock")
    if parts[0] == "insert":
        start = time.monotonic()
        conn_id, _ = _query(f"INSERT INTO {POISON} (v) VALUES (1)")
        return {"conn_id": conn_id, "took": time.monotonic() - start}
    if parts[0] == "ro":
        with gunicorn_pool.get(POOL).connection(KEY, readonly=True) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@server_id")
            body = {"server_id": cur.fetchone()[0]}
            if len(parts) > 1 and re.fullmatch(r"\w+", parts[1]):
                cur.execute(f"SELECT COUNT(*) FROM {parts[1]}")
                body["rows"] = cur.fetchone()[0]
            return body
    if parts[0] == "tls":
        conn_id, rows = _query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return {"conn_id": conn_id, "cipher": rows[0][1] if rows else ""}
    if parts[0] == "rows":
        conn_id, rows = _query(f"SELECT COUNT(*) FROM {POISON}")
        return {"conn_id": conn_id, "rows": rows[0][0]}
    raise LookupError(path)


app = json_app(_route)
