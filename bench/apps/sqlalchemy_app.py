"""SQLAlchemy QueuePool (engine per worker, connections opened on demand), used at the pool level."""

import sqlalchemy
from _settings import KW, SIZE, SSL, serve

engine = sqlalchemy.create_engine("mysql+pymysql://", connect_args=dict(KW, **SSL), pool_size=SIZE, max_overflow=0)
app = serve(engine.raw_connection, lambda conn: conn.close())
