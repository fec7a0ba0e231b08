"""SQLAlchemy QueuePool on psycopg (engine per worker, connections opened on demand, rollback on
return as SQLAlchemy does by default), used at the pool level."""

import sqlalchemy
from _settings import BODY, HEADERS, PG_KW, SIZE, select1

engine = sqlalchemy.create_engine("postgresql+psycopg://", connect_args=PG_KW, pool_size=SIZE, max_overflow=0)


def app(environ, start_response):
    conn = engine.raw_connection()
    try:
        select1(conn)
    finally:
        conn.close()
    start_response("200 OK", HEADERS)
    return [BODY]
