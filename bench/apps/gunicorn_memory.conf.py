"""gunicorn config of bench/memory.py: bench/apps/gunicorn.conf.py plus a post_request hook that writes
the worker's imported modules to ``$GPB_MODULES_FILE.<pid>`` once it has served ``$GPB_MODULES_AT``
requests (first line ``pid <pid>``, second ``gunicorn_pool <its __file__ or ->``, then one module a line),
and a ``GPB-FORK`` line to stderr in each new worker, which splits an ``-X importtime`` log into the
master's imports and the worker's."""

import os
import runpy
import sys
from pathlib import Path

globals().update({k: v for k, v in runpy.run_path(str(Path(__file__).with_name("gunicorn.conf.py"))).items()
                  if not k.startswith("__")})  # fmt: skip

_AT = int(os.environ.get("GPB_MODULES_AT", "0"))
_OUT = os.environ.get("GPB_MODULES_FILE", "")


def post_fork(server, worker):
    print(f"GPB-FORK pid={worker.pid}", file=sys.stderr, flush=True)


def post_request(worker, req, environ, resp):
    if worker.nr != _AT or not _OUT:
        return
    package = sys.modules.get("gunicorn_pool")
    lines = [f"pid {worker.pid}", f"gunicorn_pool {getattr(package, '__file__', '-')}", *list(sys.modules)]
    tmp = f"{_OUT}.{worker.pid}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, f"{_OUT}.{worker.pid}")
