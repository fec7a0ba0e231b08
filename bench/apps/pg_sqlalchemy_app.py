"""SQLAlchemy QueuePool on psycopg (engine per worker, connections opened on demand, rollback on
return as SQLAlchemy does by default), used at the pool level."""

import sqlalchemy
from _settings import PG_KW, SIZE, serve

engine = sqlalchemy.create_engine("postgresql+psycopg://", connect_args=PG_KW, pool_size=SIZE, max_overflow=0)
app = serve(engine.raw_connection, lambda conn: conn.close())
