"""tests/apps/fastapi_async_app.py with the OpenTelemetry SDK set up at import, as an instrumented
app would, and one more route:

    /otel     every metric the worker's in-memory reader collects now, as
              {name: [[attributes, value or histogram count]]}
"""

from _otel import collect
from fastapi_async_app import app


@app.get("/otel")
async def otel():
    return collect()
