"""SQLAlchemy QueuePool (engine per worker, connections opened on demand), used at the pool level."""

import sqlalchemy
from _settings import BODY, HEADERS, KW, SIZE, SSL, select1

engine = sqlalchemy.create_engine(
    "mysql+pymysql://", connect_args=dict(KW, **SSL), pool_size=SIZE, max_overflow=0
)


def app(environ, start_response):
    conn = engine.raw_connection()
    try:
        select1(conn)
    finally:
        conn.close()
    start_response("200 OK", HEADERS)
    return [BODY]
