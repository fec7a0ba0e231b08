"""Leases: connections never given back are reclaimed at request end, stale references and stale
putconn() can never reach the next borrower, a closed connection or pool is never used again.

Real MariaDB (a login per test) and real gunicorn processes; the SQLite cases
need no server.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
import pytest
from support import APPS, figure, pool_conf, wait_until

import gunicorn_pool
from gunicorn_pool import DatabasePool, LeaseError, PoolClosed, PoolTimeout, request_scope

KINDS = ("sync", "gthread", "gevent")


def conn_id(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


@pytest.fixture
def mysql_pool(mysql_user):
    """A one-connection pool of the test login, open; closed after."""
    db = DatabasePool({"default": mysql_user.config(min_size=1, max_size=1, timeout=1)}, name="leases")
    db.init_pool()
    try:
        yield db.pool()
    finally:
        db.close_pool()


# -- leaks reclaimed at the end of a request (real gunicorn) ---------------------------------


@pytest.mark.mysql
@pytest.mark.parametrize("kind", KINDS)
def test_connection_a_request_never_gave_back_is_reclaimed_when_it_ends(mysql_user, gunicorn, kind):
    """/leak takes the only connection and never gives it back. Before, every later request
    waited ``timeout`` and got 503, forever, with nothing in the log."""
    server = gunicorn(pool_conf({"default": mysql_user.config(max_size=1, timeout=1)}, kind=kind, workers=1))
    server.start(workers_ready=1)
    status, leaked = server.get("/leak")
    assert status == 200, leaked
    start = time.monotonic()
    for _ in range(5):
        status, body = server.get("/conn")
        assert status == 200, body  # not 503: the capacity came back
        assert body["conn_id"] != leaked["conn_id"], "the leaked connection was lent again"
    figure(f"leak reclaimed ({kind}): 5 requests after the leak", time.monotonic() - start)
    assert time.monotonic() - start < 1.0, "a request waited for the leaked connection"
    # Logged once, naming the pool, the masked DSN and the line of the app that took it.
    line = next(n for n, text in enumerate((APPS / "webapp.py").read_text().splitlines(), 1)
                if "getconn()" in text and "conn =" in text)  # fmt: skip
    # The first leak is logged without its line (reading the taking frame of every lease costs);
    # from then on the pool records it, and the next leak names it.
    status, again = server.get("/leak")
    assert status == 200, again
    log = server.log()
    assert log.count("was not given back by the end of its request") == 2, log[-3000:]
    assert "taken at a place not recorded yet was not given back" in log and "the next leak of this pool" in log
    assert re.search(rf"pool default \(mysql://{mysql_user.name}:\*\*\*@[^)]*\): a connection taken at "
                     rf"\S*webapp\.py:{line} was not given back", log), log[-3000:]  # fmt: skip
    assert mysql_user.password not in log
    status, body = server.get("/stats")
    assert body["stats"]["default"]["connections_leaked"] == 2
    # The server-side session of the leaked connection ends: it was closed, not kept.
    wait_until(lambda: leaked["conn_id"] not in mysql_user.connection_ids(), 5, what="leaked session closed")


@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_a_kept_reference_used_in_a_later_request_fails_without_touching_the_connection(mysql_user, gunicorn, kind):
    """/keep keeps its connection object in a global after the with block; /use-kept, a later
    request, uses it while others borrow the same connection. Before, its packets interleaved
    with the next borrower's ("Packet sequence number wrong")."""
    server = gunicorn(pool_conf({"default": mysql_user.config(max_size=1, timeout=2)}, kind=kind, workers=1))
    server.start(workers_ready=1)
    status, kept = server.get("/keep")
    assert status == 200, kept
    errors: list[Any] = []
    stop = threading.Event()

    def borrow() -> None:
        while not stop.is_set():
            status, body = server.get("/sleep/0.01")
            if status != 200 or body["conn_id"] != kept["conn_id"]:
                errors.append((status, body))

    borrowers = [threading.Thread(target=borrow) for _ in range(3)]
    for thread in borrowers:
        thread.start()
    try:
        for _ in range(20):
            status, body = server.get("/use-kept")
            assert status == 500 and body["error"] == "LeaseError", body
            # Idle in the pool, or lent to one of the borrowers at that moment.
            assert re.search("used after it was returned to the pool|used by a thread or greenlet other than",
                             body["message"]), body  # fmt: skip
    finally:
        stop.set()
        for thread in borrowers:
            thread.join(10)
    assert not errors, errors[:3]  # every borrower got the one connection, intact


@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["sync", "gevent"])
def test_request_connection_is_one_connection_per_request_and_rolled_back_when_the_view_fails(
    mysql_user, gunicorn, scratch_table, kind
):
    server = gunicorn(
        pool_conf({"default": mysql_user.config(max_size=2, timeout=2)}, kind=kind, workers=1),
        env={"GP_POISON_TABLE": scratch_table},
    )
    server.start(workers_ready=1)
    status, body = server.get("/request-conn")
    assert status == 200 and body["same"] is True, body
    status, body = server.get("/request-conn-fail")
    assert status == 500 and body["error"] == "RuntimeError", body
    status, body = server.get("/rows")
    assert status == 200 and body["rows"] == 0, body  # the failed view's INSERT was rolled back
    status, body = server.get("/stats")
    stats = body["stats"]["default"]
    assert stats["connections_leaked"] == 0 and stats["pool_size"] == stats["pool_available"], stats


@pytest.mark.mysql
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["gthread", "gevent"])
def test_request_connection_is_never_shared_by_concurrent_requests(mysql_user, gunicorn, kind):
    """4 requests at once in one worker, each holding its request_connection() for 0.3 s: four
    sessions, each request on its own one from start to end."""
    server = gunicorn(pool_conf({"default": mysql_user.config(max_size=4, timeout=5)}, kind=kind, workers=1))
    server.start(workers_ready=1)
    for _ in range(2):
        with ThreadPoolExecutor(4) as executor:
            answers = list(executor.map(lambda _: server.get("/request-conn-hold"), range(4)))
        assert all(status == 200 for status, _ in answers), answers
        bodies = [body for _, body in answers]
        assert all(body["conn_id"] == body["again"] for body in bodies), bodies
        assert len({body["conn_id"] for body in bodies}) == 4, f"two concurrent requests shared one: {bodies}"
    status, body = server.get("/stats")
    assert body["stats"]["default"]["connections_leaked"] == 0, body


# -- the lease guard (pool level, real MariaDB) ----------------------------------------------------


@pytest.mark.mysql
def test_reference_kept_past_the_with_block_cannot_reach_the_next_borrower(mysql_pool):
    with mysql_pool.connection() as stale:
        first = conn_id(stale)
    got: dict[str, Any] = {}

    def next_borrower() -> None:
        with mysql_pool.connection() as conn:
            got["id"] = conn_id(conn)
            time.sleep(0.2)  # the stale user tries while this lease is on
            got["again"] = conn_id(conn)

    thread = threading.Thread(target=next_borrower)
    thread.start()
    wait_until(lambda: "id" in got, 5, what="the next borrower")
    with pytest.raises(LeaseError, match="used by a thread or greenlet other than the one that took it"):
        stale.cursor().execute("SELECT 1")
    thread.join(5)
    assert got["id"] == got["again"] == first  # the borrower's own protocol stream was untouched
    with pytest.raises(LeaseError, match="used after it was returned to the pool"):
        stale.cursor().execute("SELECT 1")
    with pytest.raises(LeaseError, match="returned"):
        stale.close()  # closing someone else's connection is refused too
    with mysql_pool.connection() as conn:
        assert conn_id(conn) == first  # still open and healthy


@pytest.mark.mysql
def test_stale_and_foreign_putconn_raise_and_never_lend_a_connection_twice(mysql_user, mysql_pool):
    conn = mysql_pool.getconn()
    mysql_pool.putconn(conn)
    with pytest.raises(LeaseError, match="has not lent out"):
        mysql_pool.putconn(conn)  # given back already
    holder: dict[str, Any] = {}
    taken, release = threading.Event(), threading.Event()

    def borrow() -> None:
        holder["conn"] = mysql_pool.getconn()
        taken.set()
        release.wait(10)
        mysql_pool.putconn(holder["conn"])

    thread = threading.Thread(target=borrow)
    thread.start()
    assert taken.wait(5)
    with pytest.raises(LeaseError, match="other than the one that took"):
        mysql_pool.putconn(conn)  # stale: the same object is now lent to the other thread
    with pytest.raises(PoolTimeout):
        mysql_pool.getconn(timeout=0.3)  # so it was not made available to a third caller
    other = DatabasePool({"x": mysql_user.config(max_size=1)}, name="other")
    foreign = other.pool("x").getconn()
    with pytest.raises(LeaseError, match="has not lent out"):
        mysql_pool.putconn(foreign)
    other.pool("x").putconn(foreign)
    other.close_pool()
    release.set()
    thread.join(5)
    assert mysql_pool.stats()["pool_available"] == 1


@pytest.mark.mysql
def test_connection_the_app_closed_while_lent_is_never_lent_again(mysql_user, mysql_pool):
    with mysql_pool.connection() as conn:
        closed_id = conn_id(conn)
        conn.close()
    with mysql_pool.connection() as conn:
        assert conn_id(conn) != closed_id  # a fresh one, not the closed object (InterfaceError(0, ''))
    conn2 = mysql_pool.getconn()
    conn2.close()
    mysql_pool.putconn(conn2)
    with mysql_pool.connection() as conn:
        assert conn_id(conn) > 0
    assert mysql_pool.stats()["pool_size"] == 1


@pytest.mark.mysql
def test_use_after_close_pool_raises_pool_closed_and_opens_nothing(mysql_user):
    db = DatabasePool({"default": mysql_user.config(max_size=1)}, name="closing")
    db.init_pool()
    assert mysql_user.count() == 1
    db.close_pool()
    wait_until(lambda: mysql_user.count() == 0, 5, what="the pool's session closed")
    for call in (lambda: db.connection(), lambda: db.pool("default"), lambda: db.pool().getconn()):
        with pytest.raises(PoolClosed):
            call()
    assert mysql_user.count() == 0  # before, connection() silently built a new pool and opened a session
    db.init_pool()  # init_pool() opens it again, on purpose
    with db.connection() as conn:
        assert conn_id(conn) > 0
    db.close_pool()


# -- leak_timeout: leases held too long outside requests ----------------------------------------


@pytest.mark.mysql
def test_leak_timeout_reports_a_lease_held_too_long_once_with_where_it_was_taken(mysql_user, caplog):
    db = DatabasePool({"default": mysql_user.config(max_size=2, leak_timeout=0.2)}, name="watched")
    db.init_pool()
    pool = db.pool()
    caplog.set_level("WARNING", logger="gunicorn_pool")
    held = pool.getconn()  # the leak report names this line
    line = _line_of("the leak report names this line")
    with pool.connection():
        pass  # a short lease is not reported
    wait_until(lambda: "has been out for" in caplog.text, 5, what="the leak report")
    time.sleep(0.5)  # several more watcher rounds: still one report per lease
    reports = [r.getMessage() for r in caplog.records if "has been out for" in r.getMessage()]
    assert len(reports) == 1, reports
    assert f"test_leases.py:{line}" in reports[0] and "leak_timeout=0.2s" in reports[0], reports
    assert mysql_user.password not in caplog.text
    pool.putconn(held)
    db.close_pool()


def _line_of(text: str) -> int:
    return next(n for n, line in enumerate(Path(__file__).read_text().splitlines(), 1) if text in line)


# -- the same rules without a server (SQLite) ----------------------------------------------------


def sqlite_db(tmp_path: Path, **options: Any) -> DatabasePool:
    db = DatabasePool({"default": {"adapter": "sqlite", "database": str(tmp_path / "l.db"), **options}}, name="l")
    db.init_pool()
    return db


def test_request_scope_reclaims_a_leak_and_gives_request_connections_back(tmp_path):
    db = sqlite_db(tmp_path, max_size=2, timeout=0.5)
    pool = db.pool()
    with request_scope("GET /x"):
        leaked = pool.getconn()
        once = gunicorn_pool.request_connection(db)
        assert gunicorn_pool.request_connection(db) is once
    stats = pool.stats()
    assert stats["connections_leaked"] == 1 and stats["pool_size"] == 1 and stats["pool_available"] == 1, stats
    with pytest.raises(LeaseError, match="closed it"):
        leaked.execute("SELECT 1")
    with pytest.raises(gunicorn_pool.PoolError, match="outside a request"):
        gunicorn_pool.request_connection(db)
    db.close_pool()


def test_a_lease_given_back_in_its_request_is_not_reclaimed(tmp_path):
    db = sqlite_db(tmp_path, max_size=1)
    pool = db.pool()
    with request_scope():
        conn = pool.getconn()
        pool.putconn(conn)
        with pool.connection() as again:
            assert again is conn
    assert pool.stats()["connections_leaked"] == 0
    with pool.connection() as conn:
        conn.execute("SELECT 1")  # still open: given back, not reclaimed
    db.close_pool()


def test_sqlite_guard_refuses_stale_cursor_and_foreign_thread(tmp_path):
    db = sqlite_db(tmp_path, max_size=1)
    pool = db.pool()
    with pool.connection() as conn:
        cursor = conn.cursor()
    with pytest.raises(LeaseError):
        cursor.execute("SELECT 1")  # a cursor made during the lease dies with it
    with pytest.raises(LeaseError):
        conn.execute("SELECT 1")
    held = pool.getconn()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(errors, lambda: held.execute("SELECT 1")))
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], LeaseError), errors
    pool.putconn(held)
    db.close_pool()


def _catch(errors: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
        errors.append(exc)


def test_sqlite_connection_closed_by_the_app_is_dropped_at_return(tmp_path):
    db = sqlite_db(tmp_path, max_size=1)
    pool = db.pool()
    with pool.connection() as conn:
        conn.close()
    with pool.connection() as fresh:
        assert fresh is not conn
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    db.close_pool()


def test_owner_check_off_lets_another_thread_give_a_connection_back(tmp_path):
    db = sqlite_db(tmp_path, max_size=1, owner_check=False)
    pool = db.pool()
    conn = pool.getconn()
    thread = threading.Thread(target=lambda: (conn.execute("SELECT 1"), pool.putconn(conn)))
    thread.start()
    thread.join(5)
    assert pool.stats()["pool_available"] == 1
    db.close_pool()


@pytest.mark.mysql
def test_a_large_result_does_not_stay_alive_in_an_idle_connection(mysql_pool):
    """A 1M-row result kept ~260 MB alive in conn._result until the connection's next use."""
    import gc
    import weakref

    with mysql_pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2")
        result = weakref.ref(conn._result)
        cur.close()
        del cur
    gc.collect()
    assert result() is None


@pytest.mark.mysql
def test_pymysql_errors_are_unchanged_for_the_holder(mysql_pool):
    with mysql_pool.connection() as conn:
        with pytest.raises(pymysql.err.ProgrammingError):
            conn.cursor().execute("SELECT * FROM gp_no_such_table")
        assert conn_id(conn) > 0


# -- leases taken by threads running in a copy of the request's context ------------------------


def test_a_lease_a_background_thread_still_uses_is_not_reclaimed_when_the_request_ends(tmp_path, caplog):
    """A thread started in a copy of the request's context (asyncio.to_thread, executors do the
    same) sees the request's scope. Before: its lease was reclaimed when the request ended, and
    the thread's next statement raised LeaseError while it still worked. Now a lease whose thread
    still runs application code is left to it (and to leak_timeout), said once in the log."""
    db = sqlite_db(tmp_path, max_size=2, timeout=1)
    pool = db.pool()
    taken, release, done = threading.Event(), threading.Event(), []

    def job() -> None:
        conn = pool.getconn()
        taken.set()
        release.wait(5)
        done.append(conn.execute("SELECT 1").fetchone()[0])  # no LeaseError: still its lease
        pool.putconn(conn)

    with caplog.at_level("WARNING", logger="gunicorn_pool"), request_scope("GET /start-job"):
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(job,))
        thread.start()
        assert taken.wait(5)
    release.set()
    thread.join(5)
    assert done == [1]
    stats = pool.stats()
    assert stats["connections_leaked"] == 0 and stats["pool_available"] == stats["pool_size"], stats
    assert "by another thread than its request's (GET /start-job) is still in use" in caplog.text
    db.close_pool()


def test_a_lease_an_executor_thread_left_out_is_reclaimed_when_the_request_ends(tmp_path):
    """The same copied context through an executor, awaited by the request: the thread is back
    idle in its executor when the request ends, so what it left out is the request's leak."""
    db = sqlite_db(tmp_path, max_size=2, timeout=1)
    pool = db.pool()
    with ThreadPoolExecutor(1) as executor:
        with request_scope("GET /offload"):
            ctx = contextvars.copy_context()
            leaked = executor.submit(ctx.run, pool.getconn).result(5)
        assert pool.stats()["connections_leaked"] == 1
    with pytest.raises(LeaseError, match="closed it"):
        leaked.execute("SELECT 1")
    db.close_pool()


def test_close_of_a_with_lease_connection_is_counted_and_it_is_replaced(tmp_path, caplog):
    db = sqlite_db(tmp_path, max_size=1, timeout=1)
    with caplog.at_level("WARNING", logger="gunicorn_pool"):
        for _ in range(2):
            with db.connection() as conn:
                conn.close()
    stats = db.pool().stats()
    assert stats["connections_closed"] == 2 and stats["connections_num"] == 2 and stats["pool_size"] == 0, stats
    assert caplog.text.count("conn.close() on a lent connection") == 1
    db.close_pool()
