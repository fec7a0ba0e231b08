"""The worker-boot budget warning (gunicorn_pool.budget): a pool whose max_size the live server
has no room for is logged once per server per worker, in-process and in real gunicorn workers.

The machine's servers are never reconfigured: the pools ask for more than their
``max_connections`` (151 and 100 here) instead.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support import assert_no_secret, pg_admin_connect, pool_conf

from gunicorn_pool import DatabasePool, budget

WARNING = "this worker's pool may open"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(budget, "_WARNED", set())
    caplog.set_level(logging.DEBUG, logger="gunicorn_pool")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]


def boot(configs: dict[str, Any]) -> DatabasePool:
    db = DatabasePool(configs, name="budget")
    db.init_pool()
    return db


@pytest.mark.mysql
def test_mysql_pool_larger_than_the_free_connections_warns_once_per_server(mysql_user, caplog):
    big = mysql_user.config(min_size=1, max_size=5000)
    db = boot({"big": big, "other": big})
    (message,) = warnings(caplog)  # two pools, one server: one warning
    assert message.startswith("pool big, other (")
    assert "127.0.0.1:3306 accepts" in message and "may open 9998 more (max_size 5000 + 5000)" in message
    assert mysql_user.password not in caplog.text
    assert db.stats()["big"]["requests_num"] == 0  # the pool's own use, not a request
    db.close_pool()


@pytest.mark.mysql
def test_mysql_pool_that_fits_says_nothing(mysql_user, caplog):
    db = boot({"small": mysql_user.config(min_size=1, max_size=2)})
    assert warnings(caplog) == []
    with db.connection("small") as conn:  # the checked connection is clean and lendable
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    db.close_pool()


def pg_free(pg_user: Any) -> int:
    with pg_user.admin.cursor() as cur:
        cur.execute("SELECT current_setting('max_connections')::int"
                    " - current_setting('superuser_reserved_connections')::int"
                    " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')")
        return int(cur.fetchone()[0])


@pytest.mark.postgresql
def test_postgresql_counts_the_reserved_slots_and_client_backends(pg_user, caplog):
    db = boot({"big": pg_user.config(min_size=1, max_size=5000, autocommit=False)})
    (message,) = warnings(caplog)
    assert "server 127.0.0.1:5432 accepts" in message and "may open 4999 more" in message
    assert budget.check_servers(db.connection_pools(), db.configs) == {}  # already warned: not checked again
    budget._WARNED.clear()
    # Sessions of another role: an ordinary login sees them in pg_stat_activity with backend_type
    # NULL, and counting 'client backend' alone read the server as nearly empty.
    others = [pg_admin_connect() for _ in range(6)]
    before = pg_free(pg_user)
    free = budget.check_servers(db.connection_pools(), db.configs)["127.0.0.1:5432"]
    after = pg_free(pg_user)
    # The server is shared: other sessions may come and go between the three reads.
    for other in others:
        other.close()
    assert min(before, after) - 3 <= free <= max(before, after) + 3, (before, free, after)
    with db.connection("big") as conn:  # autocommit off: the check's transaction was rolled back
        assert conn.pgconn.transaction_status == 0
        assert conn.execute("SELECT 1").fetchone() == (1,)
    db.close_pool()


@pytest.mark.postgresql
def test_pgbouncer_pools_are_not_checked(pgbouncer, caplog):
    db = boot({"bounced": pgbouncer.config(pgbouncer=True, min_size=1, max_size=5000)})
    assert warnings(caplog) == []
    db.close_pool()


@pytest.mark.mysql
@pytest.mark.timeout(60)
def test_gunicorn_workers_each_warn_once(mysql_user, gunicorn):
    workers = 2
    big = mysql_user.config(min_size=1, max_size=5000)
    pools = {"default": big, "second": big}
    server = gunicorn(pool_conf(pools, workers=workers))
    server.start(workers_ready=workers)
    server.wait_log(WARNING, count=workers)
    assert server.log().count(WARNING) == workers
    assert_no_secret(server, mysql_user.password)
    assert server.stop() == 0
