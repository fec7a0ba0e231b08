"""A new psycopg connection for every request."""

from _settings import pg_connect, serve_per_request

app = serve_per_request(pg_connect)
