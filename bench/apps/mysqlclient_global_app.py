"""One module-global mysqlclient connection per worker, opened by the first request (sync workers only)."""

from _settings import mysqlclient_connect, serve_global

app = serve_global(mysqlclient_connect)
