"""statement_verdict(): what the text of a statement says about the session it runs in (no server).

A statement that may leave state behind costs a reset (1; 3 for XA); one that cannot costs
nothing (0). Whatever the scan does not understand counts as "may" (fail safe); what it clears
must be harmless. The tests against the server are in test_session_matrix_mysql.py.
"""

from __future__ import annotations

import pytest

from gunicorn_pool.connectors import mysql
from gunicorn_pool.connectors.mysql import statement_verdict

CLEAN = [
    "SELECT 1",
    "select count(*) from t",
    "SELECT a, b FROM t WHERE id = 5 LIMIT 21",
    "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')",
    "INSERT INTO `app_model` (`a`, `b`) VALUES (1, 'a@b.com')",
    "INSERT t (a) VALUES (1)",
    "REPLACE INTO db.t (a) VALUES (NOW())",
    "UPDATE `t` SET `a` = COALESCE(`a`, 0) + 1 WHERE `t`.`id` IN (1, 2, 3)",
    "DELETE FROM t WHERE created < DATE_SUB(NOW(), INTERVAL 1 DAY)",
    "SELECT `t`.`id`, COUNT(`t`.`x`) AS `__count` FROM `t` GROUP BY `t`.`id` ORDER BY NULL",
    "SELECT * FROM t WHERE email = 'bob@example.com' AND note = 'call me (maybe); lock it; next; temporary'",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "SELECT * FROM t FOR UPDATE SKIP LOCKED",
    "SELECT @@tx_isolation, @@session.sql_mode",
    "SELECT VERSION(), @@sql_mode, CONVERT_TZ('2001-01-01 01:00:00', 'UTC', 'UTC') IS NOT NULL",
    "SELECT 1;",
    "SELECT JSON_EXTRACT(`t`.`d`, '$.a') FROM t",
    "SELECT EXISTS(SELECT 1 FROM t)",
    "SELECT ROW_NUMBER() OVER (PARTITION BY a ORDER BY b) FROM t",
    "SELECT a / (b + c) FROM t",
    "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
    "SELECT IS_FREE_LOCK('x'), RELEASE_LOCK('x')",
    "SELECT * FROM t /* controller='index',framework='django' */",
    "WITH cte (a) AS (SELECT 1) SELECT * FROM cte",
    "SELECT CAST(a AS DECIMAL(10, 2)) FROM t",
    "SELECT * FROM next_run WHERE previous_id = 3",
    "SELECT `lock`, `call`, `set` FROM t",
    "SAVEPOINT `s1`",
    "ROLLBACK TO SAVEPOINT `s1`",
    "SELECT 'it''s (fine)', 'a\\' f(1) '",
    "SELECT @x, @y = 5",  # user variables read, not assigned
    "SELECT * FROM t WHERE a = @x",
    "UPDATE users SET email = 'new@example.com' WHERE email = 'old@example.com'",
    "SELECT * FROM t PARTITION (p0) WHERE id IN (SELECT id FROM u)",
    "CREATE TABLE t (a INT, b DECIMAL(10, 2), KEY k (a))",
]

RESET = [
    "SET @x = 1",
    "SELECT @y := 5",
    "SELECT 1 INTO @z",
    "SELECT 1, 2 INTO @a, @b",
    "SELECT 1 INTO /* c */ @x",
    "SELECT@x:=1",
    "UPDATE t SET a = (@x := a)",
    "LOAD DATA INFILE 'f' INTO TABLE t (@a) SET b = @a",
    "GET DIAGNOSTICS @n = NUMBER",
    "SET TRANSACTION READ ONLY",
    "  set transaction isolation level serializable",
    "SET STATEMENT max_statement_time=1 FOR SELECT 1",
    "SET ROLE r",
    "USE information_schema",
    "DO GET_LOCK('a', 0)",
    "SELECT GeT_LoCk('a', 0)",
    "SELECT " + "a, " * 500 + "GET_LOCK('x', 0)",
    "SELECT" + " " * 5000 + "GET_LOCK('x', 0)",
    "/* hello */ SELECT GET_LOCK('x', 0)",
    "/* it's */ SELECT GET_LOCK('x', 0) /* ' */",
    "SELECT get_lock ('x', 0)",
    "SELECT get_lock/**/('x', 0)",
    "SELECT 1 -- x\n, get_lock('x', 0)",
    "CALL p()",
    "call p",
    "SELECT myfunc(1)",
    "SELECT f (1)",
    "SELECT db.f(1)",
    "SELECT `f`(1)",
    "SELECT `db`.`f`(1)",
    'SELECT "f"(1)',
    "SELECT fünc(1)",
    "SELECT ñif(1)",
    "SELECT * FROM t JOIN u ON f(t.a)",
    "INSERT INTO t (a) VALUES (f(1))",
    "SELECT LAST_INSERT_ID(5)",
    "SELECT NEXTVAL(s)",
    "SELECT SETVAL(s, 5)",
    "SELECT NEXT VALUE FOR s",
    "SELECT PREVIOUS VALUE FOR s",
    "SELECT s.nextval",
    "HANDLER t OPEN",
    "LOCK TABLES t WRITE",
    "FLUSH TABLES WITH READ LOCK",
    "BACKUP LOCK t",
    "CREATE TEMPORARY TABLE t (a int)",
    "CREATE TEMPORARY SEQUENCE s",
    "PREPARE s FROM 'SELECT 1'",
    "EXECUTE s",
    "EXECUTE IMMEDIATE 'SET ROLE r'",
    "DEALLOCATE PREPARE s",
    "SELECT 1; SET @x = 1",
    "BEGIN NOT ATOMIC SELECT 1; END",
    "IF 1 THEN SET ROLE r; END IF",
    "/*!40101 SET NAMES utf8 */",
    "/*M!100000 SELECT GET_LOCK('x', 0) */",
    "-- comment\nSET @x=1",
    "#c\nSET @x=1",
    "SELECT 1 --\nINTO @x",
]


@pytest.mark.parametrize("sql", CLEAN)
def test_harmless_statements_cost_nothing(sql):
    assert statement_verdict(sql.encode()) == 0


@pytest.mark.parametrize("sql", RESET)
def test_statements_that_may_change_the_session_cost_a_reset(sql):
    assert statement_verdict(sql.encode()) & 1


def test_xa_statements_are_marked():
    assert statement_verdict(b"XA START 'x'") == 3 and statement_verdict(b" xa end 'x'") == 3


def test_no_backslash_escapes_reads_literals_as_the_server_does():
    """With sql_mode NO_BACKSLASH_ESCAPES, 'a\\' is a whole literal: what follows is code."""
    sql = b"SELECT 'a\\', f(1), '"
    assert statement_verdict(sql) == 0  # one literal: a\', f(1),
    assert statement_verdict(sql, True) == 1  # a literal, then a call of f


def test_verdicts_are_kept_per_text_in_a_bounded_dict():
    mysql._VERDICTS.clear()
    for i in range(mysql._VERDICTS_MAX + 10):
        statement_verdict(b"SELECT %d" % i)
    assert 0 < len(mysql._VERDICTS) <= mysql._VERDICTS_MAX
    statement_verdict(b"SELECT '" + b"x" * mysql._VERDICTS_TEXT + b"'")  # too long to keep
    statement_verdict(b"SELECT 1 INTO @x", True)  # read with another quoting rule: not kept
    assert all(len(sql) <= mysql._VERDICTS_TEXT for sql in mysql._VERDICTS)
    assert b"SELECT 1 INTO @x" not in mysql._VERDICTS
