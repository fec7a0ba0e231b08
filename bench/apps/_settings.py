"""Server settings of the benchmark apps, from the GPB_* variables set by the runner."""

import os

KW = dict(
    host=os.environ.get("GPB_HOST", "127.0.0.1"),
    port=int(os.environ.get("GPB_PORT", "3306")),
    user=os.environ.get("GPB_USER", "root"),
    password=os.environ.get("GPB_PASSWORD", ""),
    database=os.environ.get("GPB_DB", "test"),
    autocommit=True,
)
#: psycopg keyword arguments of the PostgreSQL apps (pg_*_app.py): the same GPB_* variables
PG_KW = dict(host=KW["host"], port=KW["port"], user=KW["user"], password=KW["password"], dbname=KW["database"])
#: the same server as a gunicorn_pool config
PG_CONFIG = dict(adapter="postgresql", host=KW["host"], port=KW["port"], user=KW["user"], password=KW["password"],
                 database=KW["database"])
#: PyMySQL TLS arguments of the baseline apps: off (the cheapest connect) unless GPB_SSL=default,
#: which keeps PyMySQL's "preferred" mode (a TLS context built on every connect)
SSL = {} if os.environ.get("GPB_SSL") == "default" else {"ssl_disabled": True}
#: explicit gunicorn_pool sizes (bench/boot.py warm-up): min_size = max_size = GPB_MIN
POOL_SIZES = {"min_size": int(os.environ["GPB_MIN"]), "max_size": int(os.environ["GPB_MIN"])} if os.environ.get(
    "GPB_MIN"
) else {}
#: pool size under gevent (one worker's share); sync workers use one connection at a time
SIZE = int(os.environ.get("GPB_SIZE", "10"))
BODY = b"1"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "1")]


def select1(conn):
    """The request's work: one SELECT 1 round trip."""
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.close()


def mysql_connect():
    """A new PyMySQL connection to the bench server (TLS as SSL says)."""
    import pymysql

    return pymysql.connect(**SSL, **KW)


def mysqlclient_connect():
    """A new mysqlclient (MySQLdb) connection to the bench server (its library's TLS default)."""
    import MySQLdb

    return MySQLdb.connect(**KW)


def pg_connect():
    """A new autocommit psycopg connection to the bench server."""
    import psycopg

    return psycopg.connect(autocommit=True, **PG_KW)


def serve(get, put):
    """The bench app of a pool with a get/put API: each request takes a connection with ``get()``,
    runs :func:`select1` on it and hands it back with ``put(conn)``, on error too."""

    def app(environ, start_response):
        conn = get()
        try:
            select1(conn)
        finally:
            put(conn)
        start_response("200 OK", HEADERS)
        return [BODY]

    return app


def serve_with(lease):
    """The bench app of a pool with a with-block API: ``with lease() as conn: select1(conn)``."""

    def app(environ, start_response):
        with lease() as conn:
            select1(conn)
        start_response("200 OK", HEADERS)
        return [BODY]

    return app


def serve_bare_list(connect):
    """The reference row, for gevent: a bare list of idle connections per worker (pop, or
    ``connect()``; append back). No limit, wait, check, transaction handling or stats: safe only
    because greenlets never switch between ``pop()`` and ``append()``."""
    idle = []
    return serve(lambda: idle.pop() if idle else connect(), idle.append)


def serve_global(connect):
    """One module-global connection per worker, opened by ``connect()`` at the first request
    (sync workers only: nothing stops two threads using it at once)."""
    conn = []

    def get():
        if not conn:
            conn.append(connect())
        return conn[0]

    return serve(get, lambda _: None)


def serve_per_request(connect):
    """A new connection for every request, closed after it."""
    return serve(connect, lambda conn: conn.close())
