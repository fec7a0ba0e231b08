"""The test webapp with the OpenTelemetry SDK set up at import, as an instrumented app would.

Route added to :mod:`webapp`'s:
  /otel     every metric the worker's in-memory reader collects now, as
            {name: [[attributes, value or histogram count]]}
"""

import webapp
from _wsgi import respond
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def _collect():
    out = {}
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [[dict(p.attributes), getattr(p, "value", None) or getattr(p, "count", None)]
                                    for p in metric.data.data_points]
    return out


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/otel":
        return webapp.app(environ, start_response)
    return respond(start_response, "200 OK", _collect())
