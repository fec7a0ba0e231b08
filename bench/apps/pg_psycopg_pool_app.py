"""psycopg_pool ConnectionPool per worker, as its docs show it: built at import (in the worker:
no --preload), autocommit connections, max_size = GPB_SIZE (min_size 1)."""

from _settings import PG_KW, SIZE, serve_with
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

pool = ConnectionPool(make_conninfo(**PG_KW), min_size=1, max_size=SIZE, kwargs={"autocommit": True}, open=True)
app = serve_with(pool.connection)
