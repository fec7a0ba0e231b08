"""A new PyMySQL connection for every request (TLS off unless GPB_SSL=default: see _settings)."""

from _settings import mysql_connect, serve_per_request

app = serve_per_request(mysql_connect)
