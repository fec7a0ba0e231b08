"""DBUtils PooledDB with its defaults (ping on checkout, rollback on return), blocking when full."""

import pymysql
from _settings import BODY, HEADERS, KW, SIZE, SSL, select1
from dbutils.pooled_db import PooledDB

pool = PooledDB(pymysql, maxconnections=SIZE, blocking=True, **SSL, **KW)


def app(environ, start_response):
    conn = pool.connection()
    try:
        select1(conn)
    finally:
        conn.close()
    start_response("200 OK", HEADERS)
    return [BODY]
