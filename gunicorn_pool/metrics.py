"""Periodic pool metrics (filled in by the operability work)."""

from __future__ import annotations

from typing import Any


def start_reporter(worker: Any, services: list, *, interval: float) -> Any:
    """Start reporting pool stats; None when no metrics backend is configured."""
    return None
