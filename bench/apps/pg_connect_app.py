"""A new psycopg connection for every request."""

import psycopg
from _settings import BODY, HEADERS, PG_KW, select1


def app(environ, start_response):
    conn = psycopg.connect(autocommit=True, **PG_KW)
    try:
        select1(conn)
    finally:
        conn.close()
    start_response("200 OK", HEADERS)
    return [BODY]
