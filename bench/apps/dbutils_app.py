"""DBUtils PooledDB with its defaults (ping on checkout, rollback on return), blocking when full."""

import pymysql
from _settings import KW, SIZE, SSL, serve
from dbutils.pooled_db import PooledDB

pool = PooledDB(pymysql, maxconnections=SIZE, blocking=True, **SSL, **KW)
app = serve(pool.connection, lambda conn: conn.close())
