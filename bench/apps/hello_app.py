"""No database at all: the floor of gunicorn's own first-request cost (bench/boot.py)."""

from _settings import BODY, HEADERS


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
