"""The test webapp with the OpenTelemetry SDK set up at import, as an instrumented app would.

Route added to :mod:`webapp`'s:
  /otel     every metric the worker's in-memory reader collects now, as
            {name: [[attributes, value or histogram count]]}
"""

import webapp
from _otel import collect
from _wsgi import respond


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/otel":
        return webapp.app(environ, start_response)
    return respond(start_response, "200 OK", collect())
