"""Server-side sampling for concurrency tests: how many sessions a login holds.

:class:`PeakSampler` polls ``information_schema.PROCESSLIST`` from its own admin
connection in a background thread, so the figure comes from the server, not
from the pool's own bookkeeping. Bounded: it stops when the ``with`` block
ends or after *max_seconds*, whichever comes first.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from support import admin_connect


class PeakSampler:
    """``with PeakSampler("gp_x") as s: ...``; then ``s.peak``, ``s.samples``."""

    def __init__(self, user: str, interval: float = 0.01, max_seconds: float = 60.0) -> None:
        self.user = user
        self.interval = interval
        self.max_seconds = max_seconds
        self.peak = 0
        self.samples = 0
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{user}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            conn = admin_connect()
            try:
                with conn.cursor() as cur:
                    while not self._stop.is_set() and time.monotonic() < deadline:
                        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (self.user,))
                        (count,) = cur.fetchone()
                        self.peak = max(self.peak, int(count))
                        self.samples += 1
                        self._stop.wait(self.interval)
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise AssertionError(f"sampler failed: {self.error!r}")
        assert not self._thread.is_alive(), "sampler did not stop"

    def __exit__(self, *exc: Any) -> None:
        self.stop()
