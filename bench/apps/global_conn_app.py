"""One module-global PyMySQL connection per worker, opened by the first request (sync workers only)."""

import pymysql
from _settings import BODY, HEADERS, KW, SSL, select1

_conn = None


def app(environ, start_response):
    global _conn
    if _conn is None:
        _conn = pymysql.connect(**SSL, **KW)
    select1(_conn)
    start_response("200 OK", HEADERS)
    return [BODY]
