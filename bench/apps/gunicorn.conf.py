"""gunicorn config shared by the benchmark apps: quiet logs, a readiness line per worker."""

import sys
import time

loglevel = "warning"
accesslog = None


def post_worker_init(worker):
    # Read by bench/e2e.py and bench/boot.py: the worker is about to serve.
    print(f"GPB-READY pid={worker.pid} t={time.monotonic():.6f}", file=sys.stderr, flush=True)
