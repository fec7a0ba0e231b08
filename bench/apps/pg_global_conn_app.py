"""One module-global psycopg connection per worker, opened by the first request (sync workers only)."""

import psycopg
from _settings import BODY, HEADERS, PG_KW, select1

_conn = None


def app(environ, start_response):
    global _conn
    if _conn is None:
        _conn = psycopg.connect(autocommit=True, **PG_KW)
    select1(_conn)
    start_response("200 OK", HEADERS)
    return [BODY]
