"""One module-global PyMySQL connection per worker, opened by the first request (sync workers only)."""

from _settings import mysql_connect, serve_global

app = serve_global(mysql_connect)
