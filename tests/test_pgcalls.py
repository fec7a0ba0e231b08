"""The scan of PostgreSQL statement texts (gunicorn_pool.connectors.pgcalls), without a server: what
counts as a call of a function that is not a harmless builtin, and what is grammar, a literal or a
comment. The same verdicts against the real server are in tests/test_session_matrix_pg.py."""

from __future__ import annotations

import pytest

from gunicorn_pool.connectors.pgcalls import CALLS, CLOSES, GRAMMAR_WORDS, KEYWORDS, TEMP, scan

#: A few builtins, as a pool reads them from its server.
HARMLESS = frozenset("lower upper count now coalesce nextval sum row_number generate_series date_trunc left".split())
GRAMMAR = KEYWORDS | GRAMMAR_WORDS

CALLS_UNKNOWN = [
    "SELECT set_tenant('acme')",
    "SELECT take_lock(42)",
    "select SET_TENANT(%s)",
    'SELECT "set_tenant"(1)',
    'SELECT "LOWER"(1)',  # quoted: a function named LOWER, not lower()
    "SELECT public.set_tenant('x')",
    "SELECT public.lower('x')",  # not pg_catalog's lower()
    'SELECT "my schema".f(1)',
    "SELECT * FROM tenant_rows('x')",
    "SELECT 1 FROM t, LATERAL set_tenant(t.x)",
    "SELECT a FROM t JOIN u ON set_tenant(t.a) = u.b",
    "SELECT (SELECT set_tenant('acme'))",
    "SELECT 1; SELECT set_tenant('x')",
    "/* a /* nested */ comment */ SELECT set_tenant('x')",
    "-- a comment\nSELECT set_tenant('x')",
    "/* " + "x" * 10_000 + " */ SELECT set_tenant('x')",
    "SELECT '" + "x" * 10_000 + "', set_tenant('x')",
    "SELECT E'it\\'s', set_tenant('x')",  # the escaped quote does not end the literal
    "SELECT $tag$ body $tag$, set_tenant('x')",
    "EXPLAIN (ANALYZE) SELECT set_tenant('x')",
    "SELECT set_config('app.tenant', 'acme', false)",  # an unsafe builtin, whatever the server says
    "SELECT 'unterminated(",  # the lexer cannot place it: a call, to be safe
    "SELECT $$ unterminated (",
    "/* unterminated (",
]

NOT_CALLS = [
    "SELECT 1",
    "SELECT lower(name), count(*) FROM users WHERE id = %s",
    "SELECT pg_catalog.lower('x'), nextval('s')",
    "INSERT INTO users (name, email) VALUES (%s, now())",
    'INSERT INTO "app_user" ("name", "email") VALUES (%s, %s) RETURNING "app_user"."id"',
    'INSERT INTO "public"."app_user" ("name") VALUES (%(name)s)',
    "INSERT INTO shop.orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET (id) = (excluded.id)",
    "UPDATE t SET (a, b) = (1, 2) WHERE id IN (1, 2) AND b = ANY(ARRAY[1])",
    "SELECT 'set_tenant(1)', E'it\\'s set_tenant(', $$ set_tenant( $$, $x$ set_tenant( $x$",
    "-- set_tenant(\nSELECT 1 /* set_tenant( /* nested */ */",
    "SELECT x::varchar(10), y::numeric(10,2), CAST(z AS varchar(5)), w::timestamp(3)",
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT * FROM (VALUES (1)) v(a)",
    "SELECT count(*) FILTER (WHERE a > 1), row_number() OVER (PARTITION BY b) FROM t",
    "WITH RECURSIVE cte (a) AS (SELECT 1) SELECT * FROM cte",
    "CREATE TABLE IF NOT EXISTS t (id serial PRIMARY KEY, n numeric(10,2), FOREIGN KEY (id) REFERENCES u (id))",
    "COPY (SELECT 1) TO STDOUT",
    "COPY t (a, b) FROM STDIN",
    "SELECT EXISTS (SELECT 1), ROW(1, 2), COALESCE(a, 1), NULLIF(a, b), GREATEST(1, 2), EXTRACT(year FROM now())",
    "SELECT a FROM t LEFT JOIN (SELECT 1) s ON true JOIN u ON lower(t.a) = u.b",
    "DROP FUNCTION f(int)",
    "PREPARE s (int) AS SELECT 1",
]


@pytest.mark.parametrize("sql", CALLS_UNKNOWN)
def test_a_call_of_a_function_not_known_harmless_is_seen(sql):
    assert scan(sql, HARMLESS - {"set_config"}, GRAMMAR) == CALLS


@pytest.mark.parametrize("sql", NOT_CALLS)
def test_grammar_literals_comments_and_harmless_builtins_are_not_calls(sql):
    assert scan(sql, HARMLESS, GRAMMAR) == 0


@pytest.mark.parametrize(
    "sql, verdict",
    [
        ("CREATE TEMP TABLE t (a int)", TEMP),
        ("create temporary table t as select 1", TEMP),
        ("SELECT 1 INTO TEMP t", TEMP),
        ("SELECT * FROM pg_temp.t", TEMP),
        ("SELECT 'temporary', 1 -- temp", 0),  # a literal or a comment names nothing
        ("SELECT temperature, attempts FROM t", 0),
        ("CREATE TEMP TABLE t AS SELECT set_tenant('x')", CALLS),
        ("SELECT set_tenant('x') FROM pg_temp.t", CALLS),
        ("SELECT setseed(0.5)", CLOSES),  # DISCARD ALL keeps the seed of random(): only closing cures it
        ("SELECT set_tenant('x'), pg_catalog.setseed(0.5)", CLOSES),
    ],
)
def test_only_code_names_a_temporary_object_and_setseed_closes(sql, verdict):
    assert scan(sql, HARMLESS, GRAMMAR) == verdict


def test_with_no_builtin_known_every_call_counts():
    assert scan("SELECT lower('x')", frozenset()) == CALLS
    assert scan("SELECT 1 WHERE a IN (1, 2)", frozenset()) == 0
