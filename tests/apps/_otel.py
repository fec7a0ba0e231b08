"""The OpenTelemetry SDK set up at import, as an instrumented app would, and what its in-memory
reader collects (tests/apps/otel_app.py and fastapi_otel_app.py)."""

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

READER = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def collect():
    """Every metric collected now, as {name: [[attributes, value or histogram count]]}."""
    out = {}
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [[dict(p.attributes), getattr(p, "value", None) or getattr(p, "count", None)]
                                    for p in metric.data.data_points]
    return out
