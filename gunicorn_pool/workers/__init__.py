"""Worker classes, one module per concurrency model (as in gunicorn.workers).

Imported lazily: ``gunicorn_pool.GeventWorker`` loads gevent only when used.
"""

from __future__ import annotations

from typing import Any

_CLASSES = {
    "Worker": ".sync",
    "ThreadWorker": ".gthread",
    "GeventWorker": ".ggevent",
    "AsgiWorker": ".gasgi",
    "UvicornWorker": ".uvicorn",
}

__all__ = list(_CLASSES)


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
