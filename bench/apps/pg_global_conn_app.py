"""One module-global psycopg connection per worker, opened by the first request (sync workers only)."""

from _settings import pg_connect, serve_global

app = serve_global(pg_connect)
