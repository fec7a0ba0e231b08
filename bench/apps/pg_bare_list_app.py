"""Reference only, gevent, PostgreSQL: a bare list of psycopg connections per worker (see
bare_list_app.py): the ceiling any pool can reach in bench/e2e.py's pg-gevent mode."""

from _settings import pg_connect, serve_bare_list

app = serve_bare_list(pg_connect)
