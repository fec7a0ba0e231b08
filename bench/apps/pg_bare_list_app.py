"""Reference only, gevent, PostgreSQL: a bare list of psycopg connections per worker (see
bare_list_app.py): the ceiling any pool can reach in bench/e2e.py's pg-gevent mode."""

import psycopg
from _settings import BODY, HEADERS, PG_KW, select1

idle = []


def app(environ, start_response):
    conn = idle.pop() if idle else psycopg.connect(autocommit=True, **PG_KW)
    try:
        select1(conn)
    finally:
        idle.append(conn)
    start_response("200 OK", HEADERS)
    return [BODY]
