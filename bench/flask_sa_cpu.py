"""Instructions per request of the Flask-SQLAlchemy bench app, in the serving process.

bench/e2e.py's ``flask-sa-*`` req/s move with whatever else the machine runs;
an instruction count does not. Each row runs bench/apps/flask_sa_app.py's WSGI
app (one ``session.execute(select(1))`` per request, pools of one) in a loop in
a fresh interpreter under valgrind's callgrind, N1 and N2 requests, and
reports the difference divided by N2 - N1 (as bench/django_cpu.py does for
Django). The gunicorn_pool rows open their services first and run inside
gunicorn_pool's request scope (RequestScopeMiddleware), as in its worker,
except the row that says otherwise.

    python bench/flask_sa_cpu.py [--instructions 100 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from _common import BENCH, ROOT, BenchUser, preamble, table
from django_cpu import instructions

ROWS = {
    "Flask-SQLAlchemy, stock engine (QueuePool)": {"GPB_SA": "stock"},
    "the same app with adopt(db)": {"GPB_SA": "adopt"},
    "the same app with adopt(db), no request scope": {"GPB_SA": "adopt", "GPB_SCOPE": "0"},
    "an EnginePool engine, a Session per request": {"GPB_SA": "enginepool"},
}

CHILD = r"""
import io, os, sys
sys.path.insert(0, os.environ["GPB_APPS"])
import flask_sa_app
from gunicorn_pool import registry
app = flask_sa_app.app
if flask_sa_app.MODE != "stock":
    for _, service in registry.discover():
        service.init_pool()
    if os.environ.get("GPB_SCOPE") != "0":
        from gunicorn_pool.wsgi import RequestScopeMiddleware
        app = RequestScopeMiddleware(app)
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
           "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "SERVER_PROTOCOL": "HTTP/1.1",
           "wsgi.errors": sys.stderr}
def once():
    status = []
    body = app(dict(environ), lambda s, headers, exc_info=None: status.append(s))
    for _ in body:
        pass
    getattr(body, "close", lambda: None)()
    assert status[0].startswith("200"), status
for _ in range(int(os.environ["GPB_REQUESTS"])):
    once()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instructions", nargs=2, type=int, metavar=("N1", "N2"), default=(100, 400))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    n1, n2 = args.instructions
    with BenchUser() as user:
        path = os.pathsep.join([str(ROOT), str(BENCH / "apps")])
        base = dict(os.environ, **user.env(), GPB_APPS=str(BENCH / "apps"), GPB_SIZE="1", PYTHONPATH=path)
        counts = {row: (instructions(dict(base, **env), n2, CHILD) - instructions(dict(base, **env), n1, CHILD))
                  / (n2 - n1) for row, env in ROWS.items()}  # fmt: skip
    ref = counts["Flask-SQLAlchemy, stock engine (QueuePool)"]
    print(preamble("Instructions per request in the serving process, one ORM query (Flask-SQLAlchemy, callgrind)",
                   f"{n2 - n1} requests per row, PYTHONHASHSEED=0"))  # fmt: skip
    print(table(["row", "instructions per request", "÷ stock engine"],
                [[row, f"{c:,.0f}", f"{c / ref:.3f}"] for row, c in counts.items()]))  # fmt: skip


if __name__ == "__main__":
    main()
