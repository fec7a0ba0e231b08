"""The PostgreSQL connector without a server: what reaches libpq, and which statement texts the
session tracking reads as changing the session (the command tags are checked against the real
server in tests/test_postgresql.py)."""

from __future__ import annotations

import psycopg
import pytest

from gunicorn_pool import DatabasePool, parse_config
from gunicorn_pool.connectors import make_connector
from gunicorn_pool.connectors.postgresql import PooledPGCursor, PostgreSQLConnector, _classify

SECRET = "Pa55-wörd:/?#@"


@pytest.mark.parametrize(
    "config",
    [
        {"adapter": "pgsql", "host": "db", "password": SECRET},
        {"adapter": "postgres", "host": "db", "pass": SECRET},
        "postgresql+psycopg://app:Pa55-w%C3%B6rd%3A%2F%3F%23%40@db/shop",
        "pgsql://app:Pa55-w%C3%B6rd%3A%2F%3F%23%40@db/shop",
    ],
)
def test_every_spelling_builds_a_postgresql_connector_and_no_text_shows_the_password(config):
    db = DatabasePool({"default": config}, name="spell")
    connector = make_connector(db.configs["default"])
    assert isinstance(connector, PostgreSQLConnector)
    assert connector._params["password"] == SECRET  # as given: non-ASCII and URL-special characters
    for text in (repr(db), db.configs["default"].dsn, connector.dsn, connector.address, repr(db.pool())):
        assert SECRET not in text
    db.close_pool()


def test_libpq_gets_the_postgresql_keys_and_not_connect_timeout():
    cfg = parse_config("p", {
        "adapter": "postgresql", "host": "a.internal,b.internal", "port": 6432, "user": "app", "password": "pw",
        "database": "shop", "sslmode": "verify-full", "sslrootcert": "/ca.pem", "sslcert": "/c.pem",
        "sslkey": "/k.pem", "application_name": "web", "options": "-c search_path=shop",
        "target_session_attrs": "read-write", "connect_timeout": 0.5,
    })  # fmt: skip
    params = PostgreSQLConnector(cfg)._params
    assert params == {
        "host": "a.internal,b.internal", "port": "6432,6432", "user": "app", "password": "pw", "dbname": "shop",
        "sslmode": "verify-full", "sslrootcert": "/ca.pem", "sslcert": "/c.pem", "sslkey": "/k.pem",
        "application_name": "web", "options": "-c search_path=shop", "target_session_attrs": "read-write",
    }  # fmt: skip
    # No password, no user: libpq's own defaults (PGPASSWORD, ~/.pgpass, the OS user) apply.
    bare = PostgreSQLConnector(parse_config("p", "postgresql://db/shop"))._params
    assert "password" not in bare and "user" not in bare


def test_pgbouncer_never_prepares_and_does_not_track_statements():
    plain = PostgreSQLConnector(parse_config("p", {"adapter": "postgresql", "prepare_threshold": 3}))
    assert plain._prepare_threshold == 3 and plain._cursor is PooledPGCursor and plain._reset_server
    bouncer = PostgreSQLConnector(parse_config("p", {"adapter": "postgresql", "pgbouncer": True}))
    assert bouncer._prepare_threshold is None and bouncer._cursor is psycopg.Cursor
    assert not bouncer._reset_server and bouncer._reset_client
    off = PostgreSQLConnector(parse_config("p", {"adapter": "postgresql", "reset_session": False}))
    assert off._cursor is psycopg.Cursor and not off._reset_client


@pytest.mark.parametrize(
    "sql, verdict",
    [
        ("SELECT 1", 0),
        ("SELECT * FROM users WHERE id = %s", 0),
        ("SELECT 'temperature of the template', attempts FROM t", 0),
        ("SELECT pg_advisory_lock(1)", 1),
        ("select PG_TRY_ADVISORY_LOCK(1)", 1),
        ("SELECT set_config('search_path', 'x', false)", 1),
        ("CREATE TEMP TABLE t (a int)", 2),
        ("CREATE TEMPORARY TABLE t AS SELECT 1", 2),
        ("SELECT 1 INTO TEMP t", 2),
        ("SELECT 1 INTO pg_temp.t", 2),
        ("CREATE TABLE t (a int)", 0),
    ],
)
def test_statement_texts_the_tracking_reads_as_changing_the_session(sql, verdict):
    assert _classify(sql.lower()) == verdict


def test_the_verdict_cache_is_bounded_and_keeps_long_texts_within_a_budget():
    from gunicorn_pool.connectors import postgresql

    class Conn:
        _gp_server = _gp_maybe = _gp_close = False
        _gp_verdicts = postgresql._Verdicts()

    Conn._gp_verdicts.harmless = frozenset({"lower"})

    class Converted:
        query = b""

    conn = Conn()
    batch = "INSERT INTO t (a) VALUES " + ", ".join(["(%s)"] * 2000)  # an ORM batch: repeated, kept
    postgresql._scan(conn, batch, Converted())  # type: ignore[arg-type]
    assert conn._gp_verdicts[batch] == 0 and conn._gp_verdicts.long == len(batch)
    huge = "SELECT 1 AS a" + " " * postgresql._LONG_BUDGET
    postgresql._scan(conn, huge, Converted())  # type: ignore[arg-type]
    assert huge not in conn._gp_verdicts
    for i in range(postgresql._LONG_BUDGET // len(batch) + 1):  # over the budget: emptied, not grown
        postgresql._scan(conn, batch + f" -- {i}", Converted())  # type: ignore[arg-type]
    assert conn._gp_verdicts.long <= postgresql._LONG_BUDGET
    for i in range(postgresql._VERDICTS_MAX + 10):
        postgresql._scan(conn, f"SELECT lower('{i}')", Converted())  # type: ignore[arg-type]
    assert len(conn._gp_verdicts) <= postgresql._VERDICTS_MAX and not conn._gp_server
    postgresql._scan(conn, "SELECT pg_advisory_lock(1)", Converted())  # type: ignore[arg-type]
    assert conn._gp_server and not conn._gp_maybe
