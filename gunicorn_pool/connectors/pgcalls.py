"""What a PostgreSQL statement's text says about the session: the half of the session tracking of
the PostgreSQL connectors (:mod:`.postgresql` on psycopg 3, :mod:`.psycopg2`) that command tags
cannot give, and the rules both connectors share (they import no driver from here).

A function can change the session from inside a plain ``SELECT`` (the
row-level-security tenant pattern ``SELECT set_tenant('acme')``, whose body
runs ``set_config('app.tenant', ..., false)``; ``SELECT take_lock(42)`` taking
a session-level advisory lock) and no command tag says so. So a statement
that calls any function other than a known-harmless builtin marks the session
for a reset (:data:`CALLS`). ``CREATE`` and ``SELECT`` tags change the
session only for a temporary object (``CREATE TEMP TABLE``, ``CREATE TABLE
... AS`` and ``SELECT ... INTO`` a temporary table): the text says whether it
names one (:data:`TEMP`). :func:`scan` answers both from the text alone.

The text is lexed just enough to be sure what is a call: string literals
(``'...'``, ``E'...'`` with backslash escapes), dollar quotes (``$$...$$``,
``$tag$...$tag$``), comments (``--``, nested ``/* */``) and quoted identifiers
are skipped; every ``name (`` (or ``"name" (``, ``schema.name (``) left is a
call, except where the grammar makes it something else:

- SQL keywords that take parentheses (``VALUES (``, ``IN (``, ``EXISTS (``,
  ``CAST (``, ``COALESCE (``, ``varchar(10)``, ``numeric(10,2)``, ``ON CONFLICT
  (``, ``FILTER (``, ``OVER (``...): :data:`KEYWORDS` (PostgreSQL's reserved,
  column-name and type/function-name keywords, from ``pg_get_keywords()``;
  the server's own list is added when the pool reads its builtins) and
  :data:`GRAMMAR_WORDS`;
- a name after a word that names a relation, a column list, a type or a
  routine rather than calling one (``INSERT INTO t (a, b)``, ``CREATE TABLE t
  (``, ``COPY t (a)``, ``REFERENCES t (id)``, ``AS g(n)``, ``WITH cte (a) AS``,
  ``DROP FUNCTION f(int)``, ``EXECUTE stmt(1)``...): :data:`NAMING_WORDS`;
- a name right after ``)`` (a column alias list ``(VALUES (1)) v(a)``) or
  after ``::`` (a type modifier ``x::varchar(10)``).

The words ``temp``, ``temporary`` and ``pg_temp...`` count only where they are
code, not in a literal or a comment. Anything the lexer cannot place (an
unterminated quote or comment) counts as a call: the answer errs towards a
reset, never towards a leak.

A driver that reads the command tag of the last statement only (psycopg2:
``PQexec`` keeps the last result of ``SELECT 1; SET x = 1``) asks
:func:`scan` with *all_tags* false: a statement followed by another one then
counts as a change unless its first word is a plain tag (:data:`PLAIN_TAGS`).

The rules both connectors share, besides :func:`scan`: the plain command tags
(:data:`PLAIN_TAGS`), a pool's cache of verdicts (:class:`Verdicts`,
:func:`remember`, :func:`note`), the query that reads the server's builtin
names (:data:`NAMES_SQL`) and its free connections (:data:`FREE_SQL`), the
libpq keywords of a config (:func:`conninfo_params`) and the drop of a
connection inherited through fork (:func:`drop_inherited_socket`).
"""

from __future__ import annotations

import os
import re
import socket
from typing import TYPE_CHECKING, AbstractSet, Any, Mapping, Optional, Union

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = [
    "CALLS", "CLIENT_BACKENDS_SQL", "CLOSES", "CLOSING_BUILTINS", "FREE_SQL", "GRAMMAR", "GRAMMAR_WORDS", "KEYWORDS",
    "NAMES_SQL", "NAMING_WORDS", "PLAIN_TAGS", "PLAIN_TAGS_WITH_TEMP", "TEMP", "UNSAFE_BUILTINS", "SessionRules",
    "Verdicts", "conninfo_params", "drop_inherited_socket", "extra_libpq", "note", "remember", "scan",
    "shutdown_socket",
]  # fmt: skip

#: Verdicts of :func:`scan`: the text calls a function not known harmless; it names a temporary
#: object; it calls a builtin whose effect no reset undoes.
CALLS, TEMP, CLOSES = 1, 2, 3

#: PostgreSQL 15's keywords that cannot name a user's function (``pg_get_keywords()`` with
#: ``catcode`` R, C or T): followed by "(" they are grammar, or builtins.
KEYWORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create
    current_catalog current_date current_role current_time current_timestamp current_user default deferrable desc
    distinct do else end except false fetch for foreign from grant group having in initially intersect into lateral
    leading limit localtime localtimestamp not null offset on only or order placing primary references returning
    select session_user some symmetric table then to trailing true union unique user using variadic when where
    window with
    between bigint bit boolean char character coalesce dec decimal exists extract float greatest grouping inout int
    integer interval least national nchar none normalize nullif numeric out overlay position precision real row
    setof smallint substring time timestamp treat trim values varchar xmlattributes xmlconcat xmlelement xmlexists
    xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable
    authorization binary collation concurrently cross current_schema freeze full ilike inner is isnull join left
    like natural notnull outer overlaps right similar tablesample verbose
    """.split()
)
#: Unreserved keywords that take parentheses in common statements (``ON CONFLICT (a)``, ``COPY
#: (SELECT ...) TO``, ``UPDATE t SET (a, b) =``, ``PRIMARY KEY (a)``, ``count(*) FILTER (``,
#: ``OVER (``, ``character varying(10)``, ``GROUP BY ROLLUP (``, ``EXPLAIN (ANALYZE)``...).
GRAMMAR_WORDS = frozenset(
    """
    filter over conflict copy set key include inherits options range list hash varying second rollup cube sets
    repeatable operator identity columns explain vacuum cluster reindex materialized
    """.split()
)
#: Words after which ``name (`` names a relation, a column list, a type or a routine: not a call.
NAMING_WORDS = frozenset(
    """
    into table copy references view exists as with recursive returns type function procedure aggregate routine
    execute prepare
    """.split()
)
#: Builtins that change the session, or run SQL handed to them as text: never harmless.
UNSAFE_BUILTINS = frozenset(
    """
    set_config pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared
    query_to_xml query_to_xmlschema query_to_xml_and_xmlschema ts_stat
    """.split()
)
#: Builtins whose effect ``DISCARD ALL`` does not undo: ``setseed()`` (the next user's ``random()``
#: would follow a sequence the last one chose). Only closing the session cures it.
CLOSING_BUILTINS = frozenset({"setseed"})
#: Keywords and grammar words: followed by "(" they are grammar (the server's keywords are added per pool).
GRAMMAR = KEYWORDS | GRAMMAR_WORDS

#: Command tags (their first word) of statements that leave nothing behind in the session. Any
#: other tag (SET, RESET, LISTEN, UNLISTEN, PREPARE, DEALLOCATE, DECLARE CURSOR, DISCARD, DO, CALL,
#: LOAD, ...) marks the session for a reset. CREATE and SELECT (CREATE TABLE AS, SELECT INTO) do only
#: when the statement's text names a temporary object (:data:`TEMP`): :data:`PLAIN_TAGS_WITH_TEMP`.
PLAIN_TAGS = (
    "SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK", "MERGE", "COPY", "FETCH", "MOVE", "START",
    "SAVEPOINT", "RELEASE", "SHOW", "EXPLAIN", "CLOSE", "TRUNCATE", "NOTIFY", "LOCK", "VACUUM", "ANALYZE",
    "CHECKPOINT", "REFRESH", "REINDEX", "CLUSTER", "COMMENT", "GRANT", "REVOKE", "DROP", "ALTER", "SECURITY",
    "IMPORT", "CREATE",
)  # fmt: skip
PLAIN_TAGS_WITH_TEMP = tuple(tag for tag in PLAIN_TAGS if tag not in ("SELECT", "CREATE"))
_PLAIN_HEADS = frozenset(PLAIN_TAGS)

# The next character the lexer must look at: a quote, a dollar, the start of a comment, "(" (one
# character class: the regex engine skips the rest of the text in C, 3 times as fast as with any
# alternative), or, in a text that has the letters at all, the start of a word naming a temporary object.
_NEXT = re.compile(r"[-'\"$(/]")
_NEXT_OR_TEMP = re.compile(r"[-'\"$(/]|[tT][eE][mM][pP]|[pP][gG]_[tT][eE][mM][pP]")
# The same, stopping at ";" too: for a driver that sees the last statement's command tag only.
_NEXT_SEMI = re.compile(r"[-'\"$(/;]")
_NEXT_OR_TEMP_SEMI = re.compile(r"[-'\"$(/;]|[tT][eE][mM][pP]|[pP][gG]_[tT][eE][mM][pP]")
_HEAD = re.compile(r"[A-Za-z_]+")
_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_STRING_END = re.compile(r"[^']*(?:''[^']*)*'")
_ESCAPE_STRING_END = re.compile(r"[^'\\]*(?:(?:''|\\.)[^'\\]*)*'", re.S)
_IDENT_END = re.compile(r'[^"]*(?:""[^"]*)*"')
_COMMENT_MARK = re.compile(r"/\*|\*/")
_PAREN = re.compile(r"\s*\(")


def scan(text: str, harmless: AbstractSet[str], grammar: AbstractSet[str] = KEYWORDS, all_tags: bool = True) -> int:
    """:data:`CLOSES` if *text* (one or more statements) calls one of :data:`CLOSING_BUILTINS`;
    else :data:`CALLS` if it calls a function whose name is not in *harmless* (lower-case names
    of builtins that leave nothing in the session), or may do so; else :data:`TEMP` if it names
    a temporary object; else 0. With *all_tags* false (the driver sees the command tag of the
    last statement only), a statement followed by another one whose first word is not one of
    :data:`PLAIN_TAGS` counts as :data:`CALLS` too (``SET x = 1; SELECT 1``)."""
    verdict = 0
    pos = 0
    temp = "temp" in text.lower()
    plain_head = True
    if all_tags or ";" not in text:
        search = (_NEXT_OR_TEMP if temp else _NEXT).search
    else:
        search = (_NEXT_OR_TEMP_SEMI if temp else _NEXT_SEMI).search
        plain_head = _plain_head(text, 0)
    while True:
        found = search(text, pos)
        if found is None:
            return verdict
        start, pos = found.span()
        char = text[start]
        if char == ";":
            following = _skip_blank(text, pos)
            if following < 0:
                return CALLS  # an unterminated comment
            if following < len(text):  # the statement that ended here was not the last one
                if not plain_head:
                    verdict = CALLS
                plain_head = _plain_head(text, following)
        elif char == "(":
            name_end = start - 1
            before = text[name_end] if start else ""
            if before in _SPACE:
                name_end = _back(text, name_end)
                before = text[name_end] if name_end >= 0 else ""
            if not (before in _WORD_CHARS or (before > "\x7f" and before.isalnum())):
                continue  # no name: "((", ", (", "%(name)s"... (a quoted one was judged at its quote)
            name_start, name = _word_before(text, name_end)
            if name in harmless or name in grammar:  # the common case, unless the name is qualified
                dot = _back(text, name_start - 1)
                if dot < 0 or text[dot] != ".":
                    continue
            if name[0] not in _DIGITS_DOLLAR and _unknown_call(text, name_start, name, False, harmless, grammar):
                if name in CLOSING_BUILTINS:
                    return CLOSES
                verdict = CALLS
        elif char == "'":
            escapes = start > 0 and text[start - 1] in "eE" and (start < 2 or not _word_char(text[start - 2]))
            closing = (_ESCAPE_STRING_END if escapes else _STRING_END).match(text, pos)
            if closing is None:
                return CALLS
            pos = closing.end()
        elif char == '"':
            closing = _IDENT_END.match(text, pos)
            if closing is None:
                return CALLS
            name_end = closing.end()
            if _PAREN.match(text, name_end):
                name = text[pos : name_end - 1].replace('""', '"')  # quoted: exact, not folded
                if _unknown_call(text, start, name, True, harmless, grammar):
                    if name in CLOSING_BUILTINS:
                        return CLOSES
                    verdict = CALLS
            pos = name_end
        elif char == "$":
            quote = None if start and _word_char(text[start - 1]) else _DOLLAR_QUOTE.match(text, start)
            if quote is not None:  # else a parameter ($1) or part of a name
                tag = quote.group()
                pos = text.find(tag, quote.end())
                if pos < 0:
                    return CALLS
                pos += len(tag)
        elif char == "-":
            if text.startswith("-", pos):
                pos = text.find("\n", pos)
                if pos < 0:
                    return verdict
        elif char == "/":
            if text.startswith("*", pos):
                pos = _comment_end(text, pos + 1)
                if pos < 0:
                    return CALLS
        elif not start or not _word_char(text[start - 1]):  # temp, temporary, pg_temp...
            word_end = _word_end(text, start)
            if verdict != CALLS and (char in "pP" or text[start:word_end].lower() in ("temp", "temporary")):
                verdict = TEMP
            pos = word_end


def _skip_blank(text: str, pos: int) -> int:
    """Where the code after *pos* starts (spaces and comments skipped): len(text) if none, -1 for an
    unterminated comment."""
    end = len(text)
    while pos < end:
        char = text[pos]
        if char in _SPACE:
            pos += 1
        elif text.startswith("--", pos):
            pos = text.find("\n", pos)
            if pos < 0:
                return end
        elif text.startswith("/*", pos):
            pos = _comment_end(text, pos + 2)
            if pos < 0:
                return -1
        else:
            break
    return pos


def _plain_head(text: str, pos: int) -> bool:
    """Does the statement starting at *pos* (after blanks) start with a plain tag's word? An empty
    statement (``;;``) does."""
    pos = _skip_blank(text, pos)
    if pos < 0:
        return False
    if pos >= len(text) or text[pos] == ";":
        return True
    head = _HEAD.match(text, pos)
    return head is not None and head.group().upper() in _PLAIN_HEADS


def _word_end(text: str, i: int) -> int:
    while i < len(text) and _word_char(text[i]):
        i += 1
    return i


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_DIGITS_DOLLAR = frozenset("0123456789$")
_SPACE = frozenset(" \t\n\r\f\v")


def _word_char(char: str) -> bool:
    return char in _WORD_CHARS or (char > "\x7f" and char.isalnum())


def _comment_end(text: str, pos: int) -> int:
    """Where the ``/*`` comment opened before *pos* ends (they nest), or -1."""
    depth = 1
    while depth:
        mark = _COMMENT_MARK.search(text, pos)
        if mark is None:
            return -1
        depth += 1 if mark.group() == "/*" else -1
        pos = mark.end()
    return pos


def _back(text: str, i: int) -> int:
    """The index of the last non-space character at or before *i* (-1 if none)."""
    while i >= 0 and text[i] in _SPACE:
        i -= 1
    return i


def _word_before(text: str, i: int) -> tuple[int, str]:
    """The identifier ending at index *i* (lower-cased unless quoted) and where it starts;
    ("", i + 1) when none ends there."""
    if i >= 0 and text[i] == '"':
        start = text.rfind('"', 0, i)
        if start < 0:
            return i + 1, ""
        return start, text[start + 1 : i]
    start = i
    while start >= 0 and (text[start] in _WORD_CHARS or (text[start] > "\x7f" and text[start].isalnum())):
        start -= 1
    return start + 1, text[start + 1 : i + 1].lower()


def _unknown_call(text: str, start: int, name: str, quoted: bool, harmless: AbstractSet[str],
                  grammar: AbstractSet[str]) -> bool:  # fmt: skip
    """Whether *name* at *start*, followed by "(", is a call of a function not in *harmless* (see
    the module docstring). A qualified name is a builtin's only in schema ``pg_catalog``."""
    head = start
    qualifier = None
    while True:  # walk back over "schema." and "db.schema." to the start of the dotted name
        dot = _back(text, head - 1)
        if dot < 0 or text[dot] != ".":
            break
        begin, word = _word_before(text, _back(text, dot - 1))
        if not word:
            break
        if qualifier is None:
            qualifier = word
        head = begin
    prev = _back(text, head - 1)
    if prev >= 0:
        char = text[prev]
        if char == ")" or (char == ":" and prev > 0 and text[prev - 1] == ":"):
            return False  # an alias's column list, FILTER/OVER after a call, a type modifier
        if _word_char(char) and _word_before(text, prev)[1] in NAMING_WORDS:
            return False
    if qualifier is not None:
        return qualifier != "pg_catalog" or name not in harmless
    if not quoted and name in grammar:
        return False
    return name not in harmless


# -- what the PostgreSQL connectors share besides the scan ---------------------------------------

#: What a pool reads once from its server (at its first connect), for the scan of statements: the
#: builtins' names, minus those a function of another schema shares (an overload or an extension's
#: function of that name may be what a call reaches), and the keywords (:meth:`Verdicts.learn`).
NAMES_SQL = """SELECT
 (SELECT pg_catalog.string_agg(DISTINCT p.proname::pg_catalog.text, ' ') FROM pg_catalog.pg_proc p
   WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
     AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc q
                      WHERE q.proname = p.proname AND q.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)),
 (SELECT pg_catalog.string_agg(word, ' ') FROM pg_catalog.pg_get_keywords() WHERE catcode <> 'U')"""

#: The client backends connected now, as any login can count them: pg_stat_activity shows a login
#: without pg_read_all_stats other roles' sessions with backend_type NULL (their datid stays set;
#: the server's own processes have none). Counting 'client backend' alone, an ordinary login saw
#: only its own sessions and read the server as nearly empty.
CLIENT_BACKENDS_SQL = (
    "(SELECT count(*) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' OR (backend_type IS NULL AND datid IS NOT NULL))"
)

#: Connections the server still accepts from an ordinary login (superusers may use the reserved ones).
FREE_SQL = f"""
SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(current_setting('reserved_connections', true), '0')::int
       - {CLIENT_BACKENDS_SQL}
"""

#: A pool's verdicts are kept per statement text (applications repeat theirs), at most
#: VERDICTS_MAX of them (emptied when full), as psycopg's own query cache; texts longer than
#: CACHED characters (ORM batches: INSERT ... VALUES (...), (...)) only while they add up to at
#: most LONG_BUDGET characters, each at most that long (emptied when over).
CACHED = 4096
VERDICTS_MAX = 1024
LONG_BUDGET = 1 << 20


class Verdicts(dict[Union[str, bytes], int]):
    """The verdicts of one pool's statement texts (see :func:`remember`), and what they are judged
    by: the builtins known harmless and the grammar words (read from the server, once per pool).
    One attribute of the connection: a psycopg connection has 28 already, and from 31 on CPython
    3.11 keeps them in a dict of its own, which costs ~3,000 instructions per lease in attribute
    reads (bench/instructions.py --part postgresql)."""

    __slots__ = ("grammar", "harmless", "long")

    def __init__(self) -> None:
        super().__init__()
        self.long = 0  #: characters of the texts longer than CACHED kept
        self.harmless: AbstractSet[str] = frozenset()  # none known: every call of a function counts
        self.grammar: AbstractSet[str] = GRAMMAR

    def learn(self, builtins: str, keywords: str) -> None:
        """Judge from now on by the server's builtin names and keywords (the two columns of
        :data:`NAMES_SQL`, space-separated): the builtins that change the session or close it
        are never harmless."""
        self.grammar = GRAMMAR | frozenset(keywords.split())
        self.harmless = frozenset(builtins.split()) - UNSAFE_BUILTINS - CLOSING_BUILTINS


def remember(verdicts: Verdicts, key: Union[str, bytes], verdict: int) -> int:
    """Keep *verdict* of the statement text *key* in *verdicts* within the bounds above; return it."""
    size = len(key)
    if size <= CACHED:
        if len(verdicts) >= VERDICTS_MAX:
            verdicts.clear()
            verdicts.long = 0
        verdicts[key] = verdict
    elif size <= LONG_BUDGET:
        if verdicts.long + size > LONG_BUDGET or len(verdicts) >= VERDICTS_MAX:
            verdicts.clear()
            verdicts.long = 0
        verdicts[key] = verdict
        verdicts.long += size
    return verdict


def note(conn: Any, verdict: int) -> None:
    """Mark on *conn* what a statement's *verdict* says: ``_gp_server`` (reset at return) for
    :data:`CALLS`, ``_gp_maybe`` (a CREATE or SELECT tag counts) for :data:`TEMP`, and
    ``_gp_close`` too (closed at return) for :data:`CLOSES`."""
    if verdict == CALLS:
        conn._gp_server = True
    elif verdict == TEMP:
        conn._gp_maybe = True
    elif verdict == CLOSES:
        conn._gp_server = conn._gp_close = True


def conninfo_params(cfg: DatabaseConfig) -> dict[str, Any]:
    """libpq keywords from the config; keys left unset fall to libpq's defaults (PG* variables,
    ~/.pgpass, the OS user). ``connect_timeout`` is not passed: the connectors enforce it."""
    host: Any = cfg.host
    port: Any = cfg.port
    if len(cfg.hosts) > 1:  # libpq's multi-host form: a port per host
        host, port = ",".join(h for h, _ in cfg.hosts), ",".join(str(p) for _, p in cfg.hosts)
    params = {
        "host": host, "port": port, "user": cfg.user, "password": cfg.password or None,
        "load_balance_hosts": cfg.load_balance_hosts,
        "dbname": cfg.database, "sslmode": cfg.sslmode, "sslrootcert": cfg.sslrootcert, "sslcert": cfg.sslcert,
        "sslkey": cfg.sslkey, "application_name": cfg.application_name, "options": cfg.options,
        "target_session_attrs": cfg.target_session_attrs,
    }  # fmt: skip
    return {key: value for key, value in params.items() if value is not None}


class SessionRules:
    """What both PostgreSQL connectors take from a config the same way: whether they reset the
    server-side session (not behind PgBouncer) and the connection object's settings, the pool's
    session statements, the bound of the pool's own statements, and the pool's verdicts."""

    def _take_rules(self, config: DatabaseConfig) -> None:
        self.config = config
        self._reset_server = config.reset_session and not config.pgbouncer
        self._reset_client = config.reset_session
        #: init_command, then session: run on every new connection and after each reset.
        self._setup_sql = ";\n".join(((config.init_command,) if config.init_command else ()) + config.session)
        #: Bound of the pool's own statements: ROLLBACK on return, the reset, the session setup.
        self._own_timeout = max(config.connect_timeout, config.check_timeout)
        # The scan of statements: names read from the server at the first connect (NAMES_SQL).
        self._verdicts = Verdicts()
        self._names_read = False

    def _learn_names(self, builtins: Optional[str], keywords: Optional[str]) -> None:
        """The two columns :data:`NAMES_SQL` read: the pool's verdicts judge by them from now on."""
        self._verdicts.learn(builtins or "", keywords or "")
        self._names_read = True


def shutdown_socket(fd: Optional[int]) -> None:
    """Shut the socket *fd* down both ways (the fd stays its owner's): a call blocked on it in
    another thread returns at once. Never raises."""
    if fd is None or fd < 0:
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def extra_libpq(cfg: DatabaseConfig, extra: Optional[Mapping[str, str]]) -> dict[str, str]:
    """More libpq keywords a framework gives a connector (Django's ``client_encoding``); one the
    config sets already, or ``connect_timeout`` (the connectors' own), is refused."""
    out = dict(extra or {})
    clash = sorted(set(out) & ({"connect_timeout", "password", "passfile"} | set(conninfo_params(cfg))))
    if clash:
        raise ValueError(f"pool {cfg.pool_name!r}: libpq keywords given twice: {', '.join(clash)}")
    return out


# Connections inherited through fork: kept referenced, never finished in this process.
_INHERITED: list[Any] = []


def drop_inherited_socket(raw: Any, fd: Optional[int]) -> None:
    """*raw*, a connection opened by another process (inherited through fork) over socket *fd*
    (None: it has none): kept referenced so it is never finished here, and this process's copy of
    its socket pointed at /dev/null (the fd number stays taken, so nothing can ever write the
    parent's protocol into a new socket; a driver that finishes it anyway, at exit, writes its
    goodbye to /dev/null)."""
    _INHERITED.append(raw)
    if fd is None or fd < 0:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)
