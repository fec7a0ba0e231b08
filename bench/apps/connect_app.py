"""A new PyMySQL connection for every request (TLS off unless GPB_SSL=default: see _settings)."""

import pymysql
from _settings import BODY, HEADERS, KW, SSL, select1


def app(environ, start_response):
    conn = pymysql.connect(**SSL, **KW)
    try:
        select1(conn)
    finally:
        conn.close()
    start_response("200 OK", HEADERS)
    return [BODY]
