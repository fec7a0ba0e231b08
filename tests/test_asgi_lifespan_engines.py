"""An engine the app creates in its own ASGI lifespan startup, after gunicorn_pool's boot walk: found
and opened right after the app's startup (gunicorn_pool.lifecycle.afind_late), before the first
request, whether the lifespan adopts it or only keeps it in ``app.state``; closed at exit.
Real gunicorn, MariaDB through aiomysql.
"""

from __future__ import annotations

import signal

import pytest
from support import wait_until
from test_asgi_async_pools import WORKERS

pytestmark = pytest.mark.mysql

CONF = """
import os
os.environ["SA_ASYNC_URL"] = {url!r}
os.environ["SA_LIFESPAN_ADOPT"] = {adopt!r}
worker_class = {worker!r}
workers = 2
graceful_timeout = 10
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("adopt", ["1", "0"], ids=["adopt-in-lifespan", "app-state-only"])
@pytest.mark.parametrize("worker", list(WORKERS))
def test_an_engine_created_in_the_apps_lifespan_is_pooled_before_the_first_request(mysql_user, gunicorn, worker,
                                                                                    adopt):  # fmt: skip
    url = str(mysql_user.url()).replace("mysql://", "mysql+aiomysql://", 1)
    server = gunicorn(CONF.format(url=url, adopt=adopt, worker=WORKERS[worker]), app="fastapi_lifespan_app:app")
    server.start()
    server.wait_log("found after the app's lifespan startup", count=2)
    wait_until(lambda: mysql_user.count() == 2, 10, what="one session per worker before any request")
    before = set(mysql_user.session_ids())
    for _ in range(10):
        status, body = server.get("/conn")
        assert status == 200, body
        assert body["pool"] == "AsyncGunicornPool", body  # before: SQLAlchemy's own pool, unseen by ours
        assert body["session"] in before, "a request opened a session the lifespan had not"
    assert server.stop(signal.SIGTERM) == 0
    wait_until(lambda: mysql_user.count() == 0, 10, what="0 sessions after SIGTERM")
    assert mysql_user.password not in server.log()
