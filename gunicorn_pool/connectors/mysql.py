"""MySQL and MariaDB through PyMySQL.

- The handshake is bounded by ``connect_timeout``: PyMySQL's own
  ``connect_timeout`` covers only the TCP connect, and without a read timeout a
  server that accepts and never answers would hang the worker for good.
- The TLS context is built once per pool (PyMySQL >= 1.2 builds one on every
  connect, ~30 ms).
- The checkout ping is bounded by ``check_timeout``; the checkout probe is a
  zero-timeout ``poll()`` of the socket, no round trip.
- A connection inherited through ``fork()`` is dropped without COM_QUIT
  (which would end the parent's session).
- Each physical connection is opened by a DBUtils ``SteadyDBConnection``,
  which runs the ``session`` statements on every new connection (closing it
  again if they fail). Callers get ``steady.dbapi_connection``, the driver's
  own object, so queries pay no proxy cost; the steady wrapper is kept until
  the connection closes, because its finaliser closes the connection.
- Transactions are read off the server's status word as each OK or EOF
  packet brings it (:class:`StatusExactConnection`), so returning a
  connection that opened none costs no round trip; after a command whose
  answer was an error (or was not read to its end) the status is *unsure*
  and an open transaction is assumed.
- A session the user changed is reset on return, and only then (see
  :class:`PooledMySQLConnection`, :func:`statement_verdict` and
  :meth:`MySQLConnector.finish`): one round trip (:func:`reset_session`).
- ``read_timeout`` left unset is gunicorn's ``timeout`` in gthread and gevent
  workers (:meth:`MySQLConnector.read_timeout`).
- Several hosts (failover): each connect tries them in order (or shuffled,
  ``load_balance_hosts=random``), each bounded by ``connect_timeout``; with
  ``target_session_attrs`` ``read-write`` (or ``read-only``) a server whose
  ``@@read_only``/``@@innodb_read_only`` says otherwise is skipped. A host
  that failed is tried last until its own back-off (1 s doubling to 30 s)
  ends, so a dead first host costs one ``connect_timeout``, not one per
  connect (:class:`HostOrder`).

For connections the pool did not open (SQLAlchemy's adopted engines create
plain ``pymysql.Connection`` objects), :func:`status_exact` turns one into a
:class:`StatusExactConnection` after the fact; :func:`transaction_open` and
:func:`session_changed` then read it exactly, and :func:`reset_session`
resets it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import ssl
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

import pymysql
from dbutils.steady_db import SteadyDBConnection
from pymysql.charset import charset_by_name
from pymysql.connections import MAX_PACKET_LEN, MySQLResult
from pymysql.constants import CLIENT
from pymysql.protocol import EOFPacketWrapper

from .base import CLOSED, DROP, IDLE, RESET, REUSE, Connector, ConnectorBase, LeaseGuard, lease_error, socket_probe

if TYPE_CHECKING:
    from ..config import DatabaseConfig

__all__ = [
    "READ_ONLY_SQL", "HostOrder", "MySQLConnector", "MySQLRules", "PooledMySQLConnection", "StatusExactConnection",
    "eof_status", "first_host", "merged_driver_args", "note_command", "note_result", "ping", "pipeline_bytes",
    "reset_commands", "reset_done", "reset_session", "session_changed", "setup_commands", "setup_done",
    "statement_verdict", "status_exact", "transaction_open", "wrong_role",
]  # fmt: skip

logger = logging.getLogger("gunicorn_pool")

_IN_TRANS = 0x0001  # SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = 0x0002  # SERVER_STATUS_AUTOCOMMIT
_NO_BACKSLASH_ESCAPES = 0x0200  # SERVER_STATUS_NO_BACKSLASH_ESCAPES: '\' is no escape in string literals
_STATE_CHANGED = 0x4000  # SERVER_SESSION_STATE_CHANGED (needs CLIENT.SESSION_TRACK)
_COM_QUIT = 0x01
_COM_INIT_DB = 0x02
_COM_QUERY = 0x03
_COM_PING = 0x0E
_COM_RESET_CONNECTION = 0x1F
#: Commands that leave the session as it was (any other but COM_QUERY marks it for a reset).
_QUIET = frozenset({_COM_QUIT, _COM_PING})
_TRACK = b"SET SESSION session_track_state_change = ON"
_Connection = pymysql.connections.Connection

# -- what a statement does to the session ------------------------------------------------------
#
# The server raises SERVER_SESSION_STATE_CHANGED for most changes (SET, USE, temporary tables,
# prepared statements, sequences created), but not for these, measured on MariaDB 10.11: user
# variables assigned inside a statement (SELECT @y := 5, SELECT ... INTO @z), one-shot
# SET TRANSACTION (READ ONLY, ISOLATION LEVEL), XA START, HANDLER ... OPEN, named locks
# (GET_LOCK), LOCK TABLES, FLUSH TABLES WITH READ LOCK, BACKUP LOCK, LAST_INSERT_ID(expr),
# NEXTVAL(). Nor can it say what a stored procedure or function did. So the text of every
# statement is read too (statement_verdict): whatever it cannot prove harmless costs a reset.

_RESET = 1  #: verdict bit: the statement may leave state behind in the session
_XA = 2  #: verdict bit: an XA statement (its transaction is not the pool's to commit: the reset ends it)

#: Verdicts of statements seen before, by their text: texts of at most _VERDICTS_TEXT bytes, at
#: most _VERDICTS_MAX of them (emptied when full). Shared by every connection of the process.
_VERDICTS: dict[bytes, int] = {}
_VERDICTS_MAX = 1024
_VERDICTS_TEXT = 4096

#: First words (lowered) of statements that change the session, or may (a compound statement runs
#: anything), and leading comments: the precise pass reads past a comment.
_LEAD = ("set", "handler", "xa", "call", "execute", "prepare", "deallocate", "lock", "flush", "backup", "use", "begin",
         "if", "case", "loop", "repeat", "while", "for", "/*", "#", "--")  # fmt: skip

# Built-in functions (MariaDB 10.11 and MySQL 8) that leave nothing in the session, and the words
# that stand before a parenthesis without calling anything. Any other name before "(" (a stored
# function, a UDF, LAST_INSERT_ID(), NEXTVAL(), GET_LOCK(), a quoted or qualified name) costs a
# reset.
_HARMLESS_NAMES = """
abs acos add_months adddate addtime aes_decrypt aes_encrypt against all and any any_value as ascii asin atan atan2
avg benchmark between bigint bin bin_to_uuid binary bit bit_and bit_count bit_length bit_or bit_xor blob by case
cast ceil ceiling char char_length character character_length charset check chr coalesce coercibility collation
column_add column_check column_create column_delete column_exists column_get column_json column_list columns
compress concat concat_ws connection_id conv convert convert_tz cos cot count crc32 crc32c cume_dist curdate
current_date current_role current_time current_timestamp current_user curtime database date date_add date_format
date_sub datediff datetime day dayname dayofmonth dayofweek dayofyear dec decimal decode decode_histogram default
degrees dense_rank des_decrypt des_encrypt distinct div do double else elt encode encrypt enum except exists exp
export_set extract extractvalue field find_in_set first_value fixed float floor format format_bytes format_pico_time
found_rows from from_base64 from_days from_unixtime fulltext geometrycollection get_format greatest group
group_concat grouping hash having hex hour if ifnull in index inet6_aton inet6_ntoa inet_aton inet_ntoa insert instr
int int1 int2 int3 int4 int8 integer intersect interval is is_free_lock is_ipv4 is_ipv4_compat is_ipv4_mapped
is_ipv6 is_used_lock is_uuid isnull join json_array json_array_append json_array_insert json_array_intersect
json_arrayagg json_compact json_contains json_contains_path json_depth json_detailed json_equals json_exists
json_extract json_insert json_key_value json_keys json_length json_loose json_merge json_merge_patch
json_merge_preserve json_normalize json_object json_object_filter_keys json_object_to_array json_objectagg
json_overlaps json_pretty json_query json_quote json_remove json_replace json_schema_valid json_search json_set
json_table json_type json_unquote json_valid json_value kdf key lag last_day last_value lcase lead least left length
lengthb like limit linear linestring list ln load_file localtime localtimestamp locate log log10 log2 longblob
longtext lower lpad ltrim make_set makedate maketime master_gtid_wait master_pos_wait match max mbrcontains
mbrcoveredby mbrdisjoint mbrequal mbrintersects mbroverlaps mbrtouches mbrwithin md5 median mediumblob mediumint
mediumtext microsecond mid min minute mod month monthname multilinestring multipoint multipolygon name_const
natural_sort_key nchar not now nth_value ntile nullif numeric nvl nvl2 oct octet_length of old_password on or ord
over partition password percent_rank percentile_cont percentile_disc period_add period_diff pi point polygon
position pow power precision quarter quote radians rand random_bytes range rank real regexp regexp_instr regexp_like
regexp_replace regexp_substr release_all_locks release_lock repeat replace returning reverse right rlike round row
row_count row_number rownum rpad rtrim schema sec_to_time second select session_user set sformat sha sha1 sha2 sign
signed sin sleep smallint some soundex space spatial sqrt st_area st_asbinary st_asgeojson st_astext st_aswkb
st_aswkt st_boundary st_buffer st_centroid st_contains st_convexhull st_crosses st_difference st_dimension
st_disjoint st_distance st_distance_sphere st_endpoint st_envelope st_equals st_exteriorring st_geometryn
st_geometrytype st_geomfromgeojson st_geomfromtext st_geomfromwkb st_interiorringn st_intersection st_intersects
st_isclosed st_isempty st_issimple st_isvalid st_length st_numgeometries st_numinteriorrings st_numpoints
st_overlaps st_pointfromtext st_pointn st_polyfromtext st_relate st_srid st_startpoint st_symdifference st_touches
st_union st_within st_x st_y std stddev stddev_pop stddev_samp str_to_date straight_join strcmp subdate subpartition
substr substring substring_index subtime sum sys_guid sysdate system_user tan text than then time time_format
time_to_sec timediff timestamp timestampadd timestampdiff tinyblob tinyint tinytext to_base64 to_char to_days
to_seconds trim trim_oracle truncate ucase uncompress uncompressed_length unhex union unique unix_timestamp unsigned
updatexml upper user using utc_date utc_time utc_timestamp uuid uuid_short uuid_to_bin value values var_pop var_samp
varbinary varchar variance version week weekday weekofyear weight_string when where within xor year yearweek
""".split()
_HARMLESS = frozenset([name[::-1] for name in _HARMLESS_NAMES] + [""])
#: The precise pass also takes "/" before "(" (a division: comments are gone by then).
_HARMLESS_PRECISE = _HARMLESS | {"/"}

# Every "(" of the (lowered) statement, read backwards (the text reversed: the regex then starts
# on a literal character, which the engine finds at C speed): the name before it, or the character
# before it unless that is an operator, a comma or a parenthesis (those capture ""). A name after
# INSERT [INTO], REPLACE, CREATE TABLE, REFERENCES, WITH [RECURSIVE], KEY or INDEX (a table, a CTE
# or an index, then its column list) is no call: "" too.
_NAME = r"(?:`(?:[^`]|``)*`|[\w$\x80-\xff]+)"
_QNAME = r"(?>" + _NAME + r"(?:\s*\.\s*" + _NAME + r")*)"
_CALLS = re.compile(
    r"\(\s*(?:[(),=<>+\-*%|&^~!:]|\Z"
    r"|" + _QNAME + r"\s+(?:otni|tresni|ecalper|elbat|secnerefer|htiw|evisrucer|yek|xedni)(?![\w$\x80-\xff])"
    r"|(" + _QNAME + r"|[^\s\w$`\x80-\xff]))",
    re.ASCII,
)
# The precise pass: string literals, quoted names and comments become " q " (a name no built-in
# has), and so does the opener of an executable comment (/*!50100 ... */, /*M! ... */: its text
# runs). A literal or comment left open stays as code: read, never skipped.
_STRIP = re.compile(  # loops unrolled: the engine runs [^'\\]* as one step, not one step a character
    r"(?s)'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'|\"[^\"\\]*(?:(?:\\.|\"\")[^\"\\]*)*\"|`[^`]*(?:``[^`]*)*`"
    r"|/\*(?!!|m!)[^*]*\*+(?:[^/*][^*]*\*+)*/|/\*m?!\d*|#[^\n]*|--[ \t\r\f\v\x01-\x09\x0b-\x1f][^\n]*",
    re.ASCII,
)
_STRIP_NO_BACKSLASH = re.compile(  # sql_mode NO_BACKSLASH_ESCAPES: '\' ends nothing
    r"(?s)'[^']*(?:''[^']*)*'|\"[^\"]*(?:\"\"[^\"]*)*\"|`[^`]*(?:``[^`]*)*`"
    r"|/\*(?!!|m!)[^*]*\*+(?:[^/*][^*]*\*+)*/|/\*m?!\d*|#[^\n]*|--[ \t\r\f\v\x01-\x09\x0b-\x1f][^\n]*",
    re.ASCII,
)
_LEADING = re.compile(
    r"(?:\s+|q(?![\w$\x80-\xff]))*(set|handler|xa|call|execute|prepare|deallocate|lock|flush|backup|use"
    r"|begin\s+not|if|case|loop|repeat|while|for)(?![\w$\x80-\xff])",
    re.ASCII,
)
#: What assigns a user variable besides SET and ":=": SELECT ... INTO @v, LOAD DATA (@v), GET DIAGNOSTICS @v.
_INTO = re.compile(r"(?<![\w$\x80-\xff])into(?![\w$\x80-\xff])", re.ASCII)
_LOAD_GET = re.compile(r"(?:\s+|q(?![\w$\x80-\xff]))*(?:load|get)(?![\w$\x80-\xff])", re.ASCII)
_WORDS = re.compile(
    r"(?<![\w$\x80-\xff])(?:get_lock|lock(?!\s+in\s+share\s+mode)|temporary|nextval|setval"
    r"|(?:next|previous)\s+value\s+for)(?![\w$\x80-\xff])",
    re.ASCII,
)


def statement_verdict(sql: bytes, no_backslash_escapes: bool = False) -> int:
    """What statement *sql* (the bytes sent) may leave in the session: 0 (nothing), or a mask of
    ``1`` (reset the session before the next user) and ``2`` (an XA statement).

    A first pass reads the whole statement, lowered (as Latin-1 text: ``str`` searches cost a
    fraction of ``bytes`` ones), with a few substring searches and one regex over its
    parentheses: a plain SELECT/INSERT/UPDATE/DELETE calling built-ins only ends there. What it
    cannot clear (a ``@`` with ``:=`` or ``INTO``, a ``;``, ``lock``, ``temporary``,
    ``next``/``previous``, a name before ``(`` that is no harmless built-in, a leading ``SET``,
    ``CALL``, ``XA``, ``HANDLER``, comment, compound statement...) goes to a precise pass that
    first blanks out string literals, quoted names and comments, so an e-mail address or a
    parenthesis in a parameter costs CPU, not a reset. A wrong "may" costs one reset; neither
    pass clears what it does not understand.
    Verdicts of texts up to 4 KiB are kept (:data:`_VERDICTS`).
    """
    low = sql.decode("latin-1").lower()
    head = low.lstrip()
    if (
        head.startswith(_LEAD)
        # a user variable assigned (read, it changes nothing; an e-mail address in a WHERE costs no pass)
        or ("@" in low and (":=" in low or "into" in low or head.startswith(("load", "get"))))
        or ";" in low  # several statements, or a compound one
        or "lock" in low
        or "temporary" in low
        or "next" in low  # NEXT VALUE FOR, NEXTVAL
        or "previous" in low  # PREVIOUS VALUE FOR
        or ("(" in low and not _HARMLESS.issuperset(_CALLS.findall(low[::-1])))
    ):
        verdict = _precise_verdict(low, no_backslash_escapes)
    else:
        verdict = 0
    if len(sql) <= _VERDICTS_TEXT and not no_backslash_escapes:
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        _VERDICTS[sql] = verdict
    return verdict


def _assigns(text: str) -> bool:
    return ":=" in text or ("into" in text and _INTO.search(text) is not None) or _LOAD_GET.match(text) is not None


def _precise_verdict(low: str, no_backslash_escapes: bool) -> int:
    text = (_STRIP_NO_BACKSLASH if no_backslash_escapes else _STRIP).sub(" q ", low).replace("*/", " ")
    lead = _LEADING.match(text)
    if lead is not None:
        return _RESET | _XA if lead.group(1) == "xa" else _RESET
    if (
        ("@" in text.replace("@@", "") and _assigns(text))  # a user variable assigned
        or ";" in text.rstrip(" \t\r\n\f\v;")  # several statements, or a compound one
        # _WORDS only where a substring search saw one of its words (the regex tries every position)
        or (("lock" in text or "temporary" in text or "val" in text) and _WORDS.search(text) is not None)
        or not _HARMLESS_PRECISE.issuperset(_CALLS.findall(text[::-1]))
    ):
        return _RESET
    return 0


class _PooledResult(MySQLResult):  # type: ignore[misc]
    """PyMySQL's result, keeping the server status of the EOF packet that ends a result set.

    PyMySQL reads it and drops it, so after a ``SELECT`` the connection's
    ``server_status`` was the previous statement's: a transaction a ``SELECT``
    opened (autocommit off) did not show, and a state-changed flag raised
    earlier seemed raised still.
    """

    _check_packet_is_eof: Callable[[Any, Any], bool]  # eof_status() itself, below: no frame in between


def eof_status(result: Any, packet: Any) -> bool:
    """A result's ``_check_packet_is_eof`` that keeps the EOF packet's server status (PyMySQL's
    result and aiomysql's, which reads PyMySQL's packets, alike)."""
    if not packet.is_eof_packet():
        return False
    wp = EOFPacketWrapper(packet)
    result.warning_count = wp.warning_count
    result.has_next = wp.has_next
    result.server_status = wp.server_status
    conn = result.connection
    if result.unbuffered_active and conn is not None:  # an unbuffered result just ended
        conn.server_status = wp.server_status
        conn._gp_seen |= wp.server_status
        conn._gp_unsure = bool(wp.has_next)
    return True


_PooledResult._check_packet_is_eof = eof_status


class StatusExactConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """A ``pymysql.Connection`` whose transaction and session state are read exactly.

    - ``server_status`` is the status word of the last OK or EOF packet the
      server sent, the EOF that ends a result set included (PyMySQL keeps only
      OK packets' on a plain connection).
    - ``_gp_unsure`` is set when a command is sent and cleared when its OK or
      EOF packet (the last one, with several result sets) is read: after an
      error packet (which carries no status: a failed statement may have opened
      a transaction with autocommit off), or a read cut short, the status is
      unknown until the next command ends well.
    - ``_gp_seen`` ORs the status words read (the session-state-changed flag
      rides on the packet of the statement that changed the session, not on
      later ones); ``_gp_dirty`` ORs :func:`statement_verdict` of every
      statement sent, and marks any command but COM_QUERY, COM_PING and
      COM_QUIT (COM_INIT_DB, COM_CHANGE_USER...).

    No ``__slots__``: a plain ``pymysql.Connection`` can become one by
    assigning ``__class__`` (:func:`status_exact`); the attributes then live
    in its ``__dict__``, with the class defaults below until first set.
    """

    _gp_seen = 0
    _gp_dirty = 0
    _gp_unsure = True
    _gp_role: Optional[bytes] = None  #: the statement that gives the session back its first role

    def _execute_command(self, command: int, sql: Any) -> Any:
        note_command(self, command, sql)
        return _Connection._execute_command(self, command, sql)

    def _read_ok_packet(self) -> Any:
        ok = _Connection._read_ok_packet(self)
        self._gp_seen |= self.server_status
        self._gp_unsure = False
        return ok

    def _send_autocommit_mode(self) -> None:
        # conn.autocommit(x): the state-changed flag this raises is autocommit's own, and
        # check_in() compares autocommit with the pool's anyway. Frameworks switch it off and
        # on around every transaction (Django's atomic()): that alone must not cost a reset.
        seen = self._gp_seen
        _Connection._send_autocommit_mode(self)
        self._gp_seen = seen | (self.server_status & ~_STATE_CHANGED)

    def _read_query_result(self, unbuffered: bool = False) -> Any:
        # PyMySQL's own, with a result class that keeps the status of the EOF packet.
        self._result = None
        result = _PooledResult(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        note_result(self, result)
        return result.affected_rows


def note_command(conn: Any, command: int, sql: Any) -> None:
    """A command is about to be sent on *conn* (PyMySQL's or aiomysql's): the status is unsure
    until its answer ends well; what the statement may leave in the session is noted
    (:func:`statement_verdict`), as any command but COM_QUERY, COM_PING and COM_QUIT."""
    conn._gp_unsure = True
    if command == _COM_QUERY:
        if type(sql) is bytes:  # str: the driver's own (BEGIN, COMMIT, SET AUTOCOMMIT, SET NAMES)
            verdict = _VERDICTS.get(sql)
            if verdict is None:
                verdict = statement_verdict(sql, bool(conn.server_status & _NO_BACKSLASH_ESCAPES))
            if verdict:
                conn._gp_dirty |= verdict
    elif command not in _QUIET:
        conn._gp_dirty |= _RESET


def note_result(conn: Any, result: Any) -> None:
    """A command's answer was read into *result*: its status word is the connection's now."""
    status = result.server_status
    if status is not None:
        conn.server_status = status
        conn._gp_seen |= status
        conn._gp_unsure = bool(result.has_next)  # more result sets: their status is still to come


class PooledMySQLConnection(LeaseGuard, StatusExactConnection):
    """A :class:`StatusExactConnection` that knows its lease: every command passes
    :meth:`_execute_command`, where the lease guard refuses a use by anyone but the holder
    (see :mod:`.base`) before the command is read and sent."""

    # Slots: read and written on every lease, at fixed offsets instead of in the instance dict.
    __slots__ = ("_gp_holder", "_gp_taken_at", "_gp_pool", "_gp_closed_by_user", "_gp_seen", "_gp_dirty",
                 "_gp_unsure", "_gp_role")  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gp_holder: Optional[int] = None
        self._gp_taken_at = ""
        self._gp_pool = ""
        self._gp_closed_by_user = False
        self._gp_seen = 0
        self._gp_dirty = 0
        self._gp_unsure = True
        self._gp_role = None
        _Connection.__init__(self, *args, **kwargs)

    def _execute_command(self, command: int, sql: Any) -> Any:
        holder = self._gp_holder
        if holder is not None and holder != threading.get_ident():
            raise lease_error(self._gp_pool, holder, self._gp_taken_at)
        # note_command, its common case written out (two calls less on every statement): a query
        # whose text has a verdict cached already.
        if command == _COM_QUERY and type(sql) is bytes and (verdict := _VERDICTS.get(sql)) is not None:
            self._gp_unsure = True
            if verdict:
                self._gp_dirty |= verdict
        else:
            note_command(self, command, sql)
        return _Connection._execute_command(self, command, sql)

    def close(self) -> None:
        if self._gp_user_close():
            _Connection.close(self)


def status_exact(conn: Any, *, track_session: bool = True) -> bool:
    """Make *conn*, an open ``pymysql.Connection`` made elsewhere (a SQLAlchemy creator's), a
    :class:`StatusExactConnection` (its ``__class__`` assigned) so that :func:`transaction_open`
    and :func:`session_changed` read it exactly from now on.

    With *track_session*, turn on the server's session-state tracking (one round trip, with
    reading the role :func:`reset_session` restores): it needs ``CLIENT.SESSION_TRACK`` in the
    handshake's ``client_flag`` (for SQLAlchemy: add it in a ``do_connect`` event). Returns True
    if the server now reports session changes. Until the next command ends, the status counts as
    unsure (as after an error). A subclass of ``pymysql.Connection`` other than these raises
    TypeError: its own attributes would not survive the class change.
    """
    if type(conn) is _Connection:
        conn.__class__ = StatusExactConnection
    elif not isinstance(conn, StatusExactConnection):
        raise TypeError(f"status_exact() takes a pymysql.Connection, not a {type(conn).__name__}")
    conn._gp_unsure = True
    tracked = bool(track_session and conn.client_flag & conn.server_capabilities & CLIENT.SESSION_TRACK)
    if tracked:
        _setup_session(conn, track=True)  # its answers make the status exact
    conn._gp_seen = conn._gp_dirty = 0
    return tracked


def transaction_open(conn: Any) -> bool:
    """True if *conn* may have a transaction open: the server's last status word says so, or
    the status is unsure (the last command failed or was not read to its end). False only on a
    :class:`StatusExactConnection` whose last answer said no transaction is open: returning it
    then needs no ROLLBACK."""
    if not isinstance(conn, StatusExactConnection):
        return True  # a plain connection's status may be stale
    return bool(conn._gp_unsure or conn.server_status & _IN_TRANS)


def session_changed(conn: Any) -> bool:
    """True if the session of *conn* (a :class:`StatusExactConnection`) may differ from a fresh
    one: the server reported a change, or a statement or command sent may have made one (see
    :func:`statement_verdict`). Cleared by :func:`reset_session`."""
    return bool(conn._gp_seen & _STATE_CHANGED or conn._gp_dirty)


def _pipeline(conn: Any, commands: Sequence[tuple[int, bytes]]) -> list[Any]:
    """Send *commands* (``(command, argument)``) in one write and read their answers in order:
    one round trip for all. The server reads each command after the previous one is done (as
    with any client), so the answers come in order. The first error is raised, the answers
    after it unread: the caller then drops the connection."""
    _drain(conn)
    conn._write_bytes(pipeline_bytes(commands))
    results = []
    for _ in commands:
        conn._next_seq_id = 1  # each answer numbers its packets from 1
        conn._read_query_result()
        results.append(conn._result)
    return results


def pipeline_bytes(commands: Sequence[tuple[int, bytes]]) -> bytes:
    """*commands* packed for one write (each its own packet, numbered 0)."""
    packets = []
    for command, argument in commands:
        size = len(argument) + 1
        if size >= MAX_PACKET_LEN:
            raise ValueError("a statement of 16 MiB or more cannot be pipelined")
        packets.append(struct.pack("<iB", size, command) + argument)
    return b"".join(packets)


def _drain(conn: Any) -> None:
    """Read what is left of the last command's answer (rows of an unbuffered result, more
    result sets), as PyMySQL does before its next command."""
    result = conn._result
    if result is not None:
        if result.unbuffered_active:
            result._finish_unbuffered_query()
        while conn._result.has_next:
            conn.next_result()
        conn._result = None


def _setup_session(conn: Any, *, track: bool, read_only: bool = False) -> Optional[bool]:
    """The statements the pool runs on each new connection, in one round trip: turn on session
    tracking (*track*), learn the role :func:`reset_session` gives the session back (with
    *track*: a reset follows only then), and with *read_only* read whether the server is
    read-only (returned; else None)."""
    commands, role_at, read_only_at = setup_commands(conn, track=track, read_only=read_only)
    if not commands:
        return None
    return setup_done(conn, _pipeline(conn, commands), role_at, read_only_at)


def setup_commands(conn: Any, *, track: bool, read_only: bool) -> tuple[list[tuple[int, bytes]], int, int]:
    """What :func:`_setup_session` sends (commands, where the role's answer is, where the
    read-only answer is; -1: not asked)."""
    commands: list[tuple[int, bytes]] = []
    role_at = read_only_at = -1
    if track:
        commands.append((_COM_QUERY, _TRACK))
        version = conn.server_version or ""
        if "MariaDB" in version:  # roles since 10.0.5; SET ROLE survives COM_RESET_CONNECTION
            role_at = len(commands)
            commands.append((_COM_QUERY, b"SELECT CURRENT_ROLE()"))
        elif _major(version) >= 8:
            conn._gp_role = b"SET ROLE DEFAULT"  # MySQL 8: the account's default roles
    if read_only:
        read_only_at = len(commands)
        commands.append((_COM_QUERY, READ_ONLY_SQL))
    return commands, role_at, read_only_at


def setup_done(conn: Any, results: list[Any], role_at: int, read_only_at: int) -> Optional[bool]:
    """What :func:`_setup_session`'s answers say: the role to restore, whether read-only."""
    if role_at >= 0:
        role = results[role_at].rows[0][0]  # str, or bytes with a `conv` that decodes no text
        if role is None:
            conn._gp_role = b"SET ROLE NONE"
        else:
            name = role if isinstance(role, bytes) else str(role).encode("utf-8")
            conn._gp_role = b"SET ROLE `" + name.replace(b"`", b"``") + b"`"
    conn._result = None
    if read_only_at < 0:
        return None
    return any(str(v).upper() not in ("0", "OFF") for v in results[read_only_at].rows[0])


def _major(version: str) -> int:
    found = re.match(r"\d+", version)
    return int(found.group()) if found else 0


def reset_session(conn: Any, *, charset: str, autocommit: bool, database: Optional[str] = None,
                  statements: Sequence[str] = ()) -> bool:  # fmt: skip
    """Give *conn* (a :class:`StatusExactConnection`) a fresh session with these settings, in one
    round trip: COM_RESET_CONNECTION (user variables, temporary tables and sequences, prepared
    statements, HANDLERs, named and table locks, an open or XA transaction, one-shot SET
    TRANSACTION, session variables, LAST_INSERT_ID), the role the session started with (MariaDB
    keeps ``SET ROLE`` through the reset), the character set, autocommit and session tracking,
    the database (``USE``), then *statements* (``init_command``, ``session``).

    False if the session cannot be made fresh this way: a server without COM_RESET_CONNECTION
    (before MySQL 5.7, MariaDB 10.2), or, without *database*, another database selected (none
    can be un-selected): close the connection then. Raises the driver's error if a command fails
    (close it then too). Clears :func:`session_changed`.
    """
    plan = reset_commands(conn, charset=charset, autocommit=autocommit, database=database, statements=statements)
    if plan is None:
        return False
    return reset_done(conn, _pipeline(conn, plan[0]), plan, charset=charset, autocommit=autocommit,
                      database=database)  # fmt: skip


def reset_commands(conn: Any, *, charset: str, autocommit: bool, database: Optional[str],
                   statements: Sequence[str]) -> Optional[tuple[list[tuple[int, bytes]], int, str]]:  # fmt: skip
    """What :func:`reset_session` sends: (commands, where the database's answer is, the
    charset's encoding); None on a server that cannot reset a session."""
    if not conn.server_capabilities & CLIENT.SESSION_TRACK:
        return None  # an old server: a new connection is the reset
    encoding = charset_by_name(charset).encoding
    commands = [(_COM_RESET_CONNECTION, b"")]
    if conn._gp_role is not None:
        commands.append((_COM_QUERY, conn._gp_role))
    settings = f"SET NAMES {charset}, autocommit = {1 if autocommit else 0}"
    if conn.client_flag & CLIENT.SESSION_TRACK:
        settings += ", session_track_state_change = ON"
    commands.append((_COM_QUERY, settings.encode("ascii")))
    database_at = len(commands)
    commands.append((_COM_INIT_DB, database.encode(encoding)) if database else (_COM_QUERY, b"SELECT DATABASE()"))
    commands += [(_COM_QUERY, statement.encode(encoding)) for statement in statements]
    return commands, database_at, encoding


def reset_done(conn: Any, results: list[Any], plan: tuple[list[tuple[int, bytes]], int, str], *, charset: str,
               autocommit: bool, database: Optional[str]) -> bool:  # fmt: skip
    """What :func:`reset_session`'s answers leave: the connection object's charset and autocommit
    are the pool's; False if another database stayed selected (none can be un-selected)."""
    _, database_at, encoding = plan
    if isinstance(conn, _Connection):
        conn.charset, conn.encoding, conn.collation = charset, encoding, None
    else:  # aiomysql keeps them behind read-only properties
        conn._charset, conn._encoding = charset, encoding
    conn.autocommit_mode = autocommit
    conn._result = None
    if not database and results[database_at].rows[0][0] is not None:
        return False
    conn._gp_seen = conn._gp_dirty = 0
    return True


#: What the connect of a pool with ``target_session_attrs`` reads: is the server read-only?
READ_ONLY_SQL = b"SELECT @@global.read_only, @@global.innodb_read_only"


def wrong_role(read_only: Optional[bool], want_writable: Optional[bool], cfg: DatabaseConfig) -> str:
    """Why a server whose read-only flags say *read_only* (None: not read) is not the one
    ``target_session_attrs`` asks for (*want_writable*); empty if it is."""
    if read_only is None or read_only != want_writable:
        return ""
    return f"the server is {'read-only' if read_only else 'writable'} (target_session_attrs={cfg.target_session_attrs})"


def merged_driver_args(config: DatabaseConfig, driver_args: Optional[Mapping[str, Any]],
                       own_args: frozenset[str]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """``(client_flag, keyword arguments)`` of every connection of a MySQL connector: the config's
    driver keys (:meth:`~gunicorn_pool.config.DatabaseConfig.driver_kwargs`) and a framework's
    *driver_args*, whose ``client_flag`` is OR-ed with the config's. A key of *own_args* (set by
    the connector) or of the config in *driver_args* raises ValueError."""
    own = config.driver_kwargs()
    extra = dict(driver_args or {})
    clash = sorted(set(extra) & (own_args | set(own)))
    if clash:
        raise ValueError(f"pool {config.pool_name!r}: driver_args may not set {', '.join(clash)} (config keys)")
    return int(extra.pop("client_flag", 0)) | config.client_flag, {**own, **extra}


def first_host(hosts: HostOrder, create_on: Callable[[str, int], Any], errors: tuple[type[BaseException], ...],
               describe: Callable[[BaseException], str], fail: Callable[[str], BaseException]) -> Any:  # fmt: skip
    """One connection to the first of *hosts* (in their order) that accepts it: ``create_on(host,
    port)`` opens one, raising one of *errors* for a host that refuses (or has the wrong role). A
    single host's error is raised as it is; with several, ``fail(text)`` naming every host tried
    (each error through *describe*, the password masked). Shared by the MySQL connectors."""
    failures: list[tuple[str, BaseException]] = []
    order = hosts.order()
    for host, port in order:
        try:
            conn = create_on(host, port)
        except errors as exc:
            hosts.failed((host, port))
            if len(order) == 1:
                raise
            failures.append((f"{host}:{port}", exc))
            continue
        hosts.worked((host, port))
        return conn
    tried = "; ".join(f"{where}: {describe(exc)}" for where, exc in failures)
    raise fail(f"no host accepted the connection ({len(failures)} tried: {tried})")


class HostOrder:
    """The order in which one pool's connects try its hosts, with a back-off per failed host.

    Hosts that have not failed (or whose back-off ended) come first, in the
    configured order or shuffled (*shuffle*); hosts still backing off follow,
    the one whose back-off ends first first: they are the last resort, never
    skipped. A host's back-off starts at :attr:`FIRST` seconds and doubles on
    each failure up to :attr:`LAST`; one success clears it. Shared by the
    threads of a worker (a dict per pool; updates are single assignments).
    """

    FIRST = 1.0
    LAST = 30.0

    def __init__(self, hosts: tuple[tuple[str, int], ...], *, shuffle: bool = False) -> None:
        self.hosts = hosts
        self.shuffle = shuffle
        self._down: dict[tuple[str, int], tuple[float, float]] = {}  # host -> (retry at, back-off)

    def order(self) -> list[tuple[str, int]]:
        """The hosts to try now, in order."""
        hosts = list(self.hosts)
        if self.shuffle:
            random.shuffle(hosts)
        if not self._down:
            return hosts
        now = time.monotonic()
        retry_at = {h: entry[0] for h in hosts if (entry := self._down.get(h)) is not None and entry[0] > now}
        return [h for h in hosts if h not in retry_at] + sorted(retry_at, key=retry_at.__getitem__)

    def failed(self, host: tuple[str, int]) -> None:
        backoff = min(self.LAST, max(self.FIRST, self._down.get(host, (0.0, 0.0))[1] * 2))
        self._down[host] = (time.monotonic() + backoff, backoff)

    def worked(self, host: tuple[str, int]) -> None:
        if host in self._down:
            del self._down[host]


class MySQLRules(ConnectorBase):
    """MySQL's rules, written once for the PyMySQL connector and the aiomysql one
    (:mod:`.mysql_async`, whose connections read the same packets through the same functions):
    the hosts and their order, the statement bound, what a return finds without a round trip
    (``check_in``: the exact status, the session flags, a result left unread), when a returned
    connection is dropped, and when its session is reset. A connection of either driver offers
    ``_sock`` (None once closed), ``server_status``, ``_result`` and the ``_gp_*`` notes of
    :class:`StatusExactConnection`."""

    adapter = "mysql"
    guarded = True

    def __init__(self, config: DatabaseConfig) -> None:
        super().__init__(pool_name=config.pool_name, address=config.address, dsn=config.dsn,
                         password=config.password)  # fmt: skip
        self.config = config
        self._reset = config.reset_session
        # IN_TRANS and AUTOCOMMIT of a clean session: no transaction, the pool's autocommit.
        self._clean = _AUTOCOMMIT if config.autocommit else 0
        self._untracked_warned = False
        self.hosts = HostOrder(config.hosts or ((str(config.host), int(config.port or 3306)),),
                               shuffle=config.load_balance_hosts == "random")  # fmt: skip
        self._want_writable = {"read-write": True, "read-only": False}.get(config.target_session_attrs or "any")

    def read_timeout(self) -> Optional[float]:
        """The configured ``read_timeout``; unset, :attr:`query_bound` (gunicorn's ``timeout`` in a
        gthread or gevent worker: gunicorn kills a hung sync worker at ``timeout`` itself, but not
        those, and a query that hangs mid-flight would otherwise hang its request until
        ``graceful_timeout``)."""
        if self.config.read_timeout is not None:
            return self.config.read_timeout
        return self.query_bound

    def _warn_untracked(self) -> None:
        if not self._untracked_warned:
            self._untracked_warned = True
            logger.warning(
                "pool %s (%s): the server does not report session state changes nor reset a session"
                " (COM_RESET_CONNECTION): a connection whose session a user may have changed is closed"
                " and replaced at return instead",
                self.pool_name, self.dsn,
            )  # fmt: skip

    def _wrong_role(self, read_only: Optional[bool]) -> Optional[BaseException]:
        """The error for a server whose writability is not what ``target_session_attrs`` asks."""
        wrong = wrong_role(read_only, self._want_writable, self.config)
        return _WrongRole(wrong) if wrong else None

    def is_clean(self, raw: Any) -> bool:
        """True if the lease of *raw* left nothing for :meth:`finish` to do: :meth:`check_in`'s
        test, without ending the lease (a framework that keeps a connection across its requests
        asks it between them). No round trip."""
        if (
            raw._gp_unsure
            or (raw.server_status & (_IN_TRANS | _AUTOCOMMIT)) != self._clean
            or raw._sock is None
            or (self._reset and (raw._gp_seen & _STATE_CHANGED or raw._gp_dirty))
        ):
            return False
        result = raw._result
        return result is None or not (result.unbuffered_active or result.has_next)

    def check_in(self, raw: Any) -> bool:
        # is_clean() written out: one call on the hot path of every return
        if (
            raw._gp_unsure
            or (raw.server_status & (_IN_TRANS | _AUTOCOMMIT)) != self._clean
            or raw._sock is None
            or (self._reset and (raw._gp_seen & _STATE_CHANGED or raw._gp_dirty))
        ):
            raw._gp_holder = None  # finish() runs the pool's own statements
            return False
        result = raw._result
        if result is not None:
            if result.unbuffered_active or result.has_next:
                raw._gp_holder = None
                return False
            raw._result = None  # a large result would stay alive until the next use
        raw._gp_holder = IDLE
        return True

    @staticmethod
    def _unusable(raw: Any) -> bool:
        """finish()'s first test: closed (by its user, or by a cancelled read), or mid-result."""
        result = raw._result
        return bool(raw._sock is None or raw._gp_closed_by_user or (result is not None and result.unbuffered_active))

    def _needs_reset(self, raw: Any, failed: bool) -> bool:
        """*failed*, a change the server reported, or a statement :func:`statement_verdict` could
        not clear: the session is reset (one round trip)."""
        return bool(self._reset and (failed or raw._gp_seen & _STATE_CHANGED or raw._gp_dirty))

    def _commit_before_reset(self, raw: Any, commit: bool) -> bool:
        """Commit what is open before the reset (which would roll it back)? Not an XA transaction."""
        return bool(raw.server_status & _IN_TRANS and commit and not raw._gp_dirty & _XA)

    def _autocommit_changed(self, raw: Any) -> bool:
        """The user switched autocommit (with ``reset_session`` off): set it back."""
        return bool((raw.server_status & _AUTOCOMMIT) != (self._clean & _AUTOCOMMIT))

    def _reset_plan(self, raw: Any) -> Optional[tuple[list[tuple[int, bytes]], int, str]]:
        """:func:`reset_commands` with the pool's settings (None: drop *raw*)."""
        cfg = self.config
        statements = ((cfg.init_command,) if cfg.init_command else ()) + cfg.session
        return reset_commands(raw, charset=cfg.charset, autocommit=cfg.autocommit, database=cfg.database,
                              statements=statements)  # fmt: skip

    def _reset_applied(self, raw: Any, results: list[Any], plan: tuple[list[tuple[int, bytes]], int, str]) -> bool:
        cfg = self.config
        return reset_done(raw, results, plan, charset=cfg.charset, autocommit=cfg.autocommit, database=cfg.database)


class MySQLConnector(MySQLRules, Connector):
    """Opens PyMySQL connections for one pool (see :class:`MySQLRules`)."""

    #: Keyword arguments of every connection that the connector sets itself: *driver_args* may not.
    OWN_ARGS = frozenset({
        "host", "port", "user", "password", "passwd", "database", "db", "charset", "init_command", "autocommit",
        "connect_timeout", "read_timeout", "write_timeout", "ssl", "ssl_disabled", "ssl_ca", "ssl_cert", "ssl_key",
        "ssl_verify_cert", "ssl_verify_identity", "defer_connect",
    })  # fmt: skip

    def __init__(self, config: DatabaseConfig, *, driver_args: Optional[Mapping[str, Any]] = None) -> None:
        """*driver_args*: more PyMySQL keyword arguments for every connection, for a framework
        that needs them (Django's backend: ``conv``, ``client_flag=CLIENT.FOUND_ROWS``).
        ``client_flag`` is OR-ed with the config's and the connector's own; a key of
        :attr:`OWN_ARGS`, or one the config sets (``cursorclass``, ``conv``, ``local_infile``),
        is refused."""
        super().__init__(config)
        self._client_flag, self._driver_args = merged_driver_args(config, driver_args, self.OWN_ARGS)
        self._tls: Optional[tuple[bool, ssl.SSLContext]] = None
        self._tls_for: Any = None  # (pid, ssl.SSLContext class) the context was built for
        self._owners: dict[int, SteadyDBConnection] = {}

    def _tls_context(self) -> Optional[tuple[bool, ssl.SSLContext]]:
        """The pool's one TLS context, built in this process after any gevent patching.

        A context built in the master (``--preload``) before gevent patched
        ``ssl`` cannot wrap a worker's gevent socket, so it is built again
        wherever the process or the ``ssl.SSLContext`` class changed.
        """
        current = (os.getpid(), ssl.SSLContext)
        if self._tls_for != current:
            self._tls, self._tls_for = _tls_context(self.config), current
        return self._tls

    def _create(self) -> Any:
        """One connection to the first host (in :class:`HostOrder`'s order) that accepts it and
        has the role ``target_session_attrs`` asks for; an error naming every host tried."""
        return first_host(self.hosts, self._create_on, (pymysql.err.MySQLError, OSError), self.describe_error,
                          lambda text: pymysql.err.OperationalError(2003, text))  # fmt: skip

    def _create_on(self, host: str, port: int) -> Any:
        cfg = self.config
        limit = cfg.connect_timeout
        conn = PooledMySQLConnection(
            host=host,
            port=port,
            user=cfg.user,
            # Bytes: PyMySQL sends a str password as latin-1, so a password such as
            # "pässwörd" (stored by the server as UTF-8) was refused and one such as
            # "Ωmega" raised a codec error naming the character.
            password=cfg.password.encode("utf-8"),
            database=cfg.database,
            charset=cfg.charset,
            init_command=cfg.init_command,
            autocommit=cfg.autocommit,
            connect_timeout=limit,
            # The handshake reads with read_timeout: bound it by connect_timeout,
            # then switch to the configured query timeouts below.
            read_timeout=limit,
            write_timeout=limit,
            client_flag=(CLIENT.SESSION_TRACK if self._reset else 0) | self._client_flag,
            ssl_disabled=True,
            defer_connect=True,
            **self._driver_args,
        )
        conn._gp_pool = cfg.pool_name
        tls = self._tls_context()
        if tls is not None:
            # One context per pool, reused: PyMySQL's "preferred" mode would
            # otherwise build a fresh one (~30 ms) for every connection.
            required, conn.ctx = tls
            conn.ssl, conn._ssl_required = True, required
        conn.connect()
        track = self._reset and bool(conn.server_capabilities & CLIENT.SESSION_TRACK)
        if self._reset and not track:
            self._warn_untracked()
        try:
            # Session tracking on, the role the reset restores, the server's writability: one round trip.
            read_only = _setup_session(conn, track=track, read_only=self._want_writable is not None)
        except BaseException:
            conn._force_close()
            raise
        wrong = self._wrong_role(read_only)
        if wrong is not None:
            conn.close()
            raise wrong
        conn._read_timeout = self.read_timeout()
        conn._write_timeout = cfg.write_timeout
        return conn

    def connect(self) -> Any:
        steady = SteadyDBConnection(
            self._create, maxusage=None, setsession=list(self.config.session) or None,
            failures=pymysql.err.MySQLError, ping=0, closeable=True,
        )  # fmt: skip
        raw = steady.dbapi_connection
        raw._gp_seen = raw._gp_dirty = 0  # what the pool's own statements (tracking, session) raised
        raw._gp_unsure = False  # they all ended well
        self._owners[id(raw)] = steady
        return raw

    def close(self, raw: Any) -> None:
        steady = self._owners.pop(id(raw), None)
        raw._gp_holder = None  # the pool's own use
        try:
            if steady is not None:
                steady.close()
            else:
                raw.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may fail
            raw._force_close()
        raw._gp_holder = CLOSED

    def discard(self, raw: Any) -> None:
        raw._gp_holder = CLOSED
        raw._force_close()  # closes the socket, sends no COM_QUIT
        self._owners.pop(id(raw), None)  # its finaliser now finds the socket closed: nothing sent

    def ping(self, raw: Any, timeout: float) -> None:
        raw._gp_holder = None  # the pool's own use
        ping(raw, timeout)

    def probe(self, raw: Any) -> Optional[Callable[[], Any]]:
        return socket_probe(raw._sock)

    def finish(self, raw: Any, *, commit: bool, failed: bool = False) -> str:
        """See :meth:`Connector.finish`. A transaction left open is committed (*commit*) or rolled
        back; with an unsure status (the last command failed or was cut short) it is rolled back,
        as the server may have one open that no status showed. A session that needs a reset
        (*failed*, a change the server reported, a statement :func:`statement_verdict` could not
        clear) is reset in one round trip, whose COM_RESET_CONNECTION also rolls back what is
        open (an XA transaction too, which COMMIT and ROLLBACK refuse with 1399)."""
        raw._gp_holder = None
        if self._unusable(raw):
            return DROP  # closed by the user, or mid-result
        _drain(raw)  # result sets a CALL left unread
        if self._needs_reset(raw, failed):
            if self._commit_before_reset(raw, commit):
                raw.commit()
            plan = self._reset_plan(raw)
            if plan is None or not self._reset_applied(raw, _pipeline(raw, plan[0]), plan):
                return DROP  # rolled back by the server when the connection closes
            outcome = RESET
        else:
            if raw.server_status & _IN_TRANS:
                raw.commit() if commit else raw.rollback()
            elif raw._gp_unsure:
                raw.rollback()  # an error packet carries no status: a failed statement may have opened one
            outcome = REUSE
            if self._autocommit_changed(raw):
                raw.autocommit(self.config.autocommit)  # switched by the user (reset_session off)
                outcome = RESET
            raw._gp_seen = raw._gp_dirty = 0
        raw._gp_holder = IDLE
        return outcome

    def warm(self, raw: Any, timeout: float) -> None:
        super().warm(raw, timeout)
        raw._gp_holder = IDLE

    def free_connections(self, raw: Any, timeout: float) -> Optional[int]:
        """``@@max_connections`` minus ``Threads_connected``, two statements bounded by *timeout*."""
        raw._gp_holder = None  # the pool's own use
        try:
            with bounded(raw, timeout), raw.cursor() as cur:
                cur.execute("SELECT @@max_connections")
                (limit,) = cur.fetchone()
                cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                row = cur.fetchone()
        finally:
            raw._result = None
            raw._gp_holder = IDLE
        return None if row is None else int(limit) - int(row[1])

    def begin(self, raw: Any) -> None:
        """``BEGIN`` unless a transaction is open already (autocommit stays as it is: the
        transaction ends at COMMIT or ROLLBACK either way)."""
        if not raw.server_status & _IN_TRANS:
            raw.begin()


class _WrongRole(pymysql.err.OperationalError):  # type: ignore[misc]
    """A server that accepted the connection but is not writable (or read-only) as asked."""


def _tls_context(cfg: DatabaseConfig) -> Optional[tuple[bool, ssl.SSLContext]]:
    """Build the pool's one TLS context: (required, context), or None for off."""
    if cfg.ssl_disabled:
        return None
    explicit = bool(cfg.ssl_ca or cfg.ssl_cert or cfg.ssl_key or cfg.ssl_verify)
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca) if cfg.ssl_ca else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    verify = cfg.ssl_verify if cfg.ssl_verify is not None else bool(cfg.ssl_ca)
    ctx.check_hostname = verify == "identity"
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if cfg.ssl_cert:
        ctx.load_cert_chain(cfg.ssl_cert, keyfile=cfg.ssl_key)
    return explicit, ctx


@contextlib.contextmanager
def bounded(raw: Any, timeout: float) -> Iterator[None]:
    """Bound a PyMySQL connection's reads and writes by *timeout* inside the block."""
    old = raw._read_timeout, raw._write_timeout
    raw._read_timeout = raw._write_timeout = timeout
    try:
        yield
    finally:
        raw._read_timeout, raw._write_timeout = old


def ping(raw: Any, timeout: float) -> None:
    """A COM_PING on any PyMySQL connection, never reconnecting, its reads and writes bounded by
    *timeout* (also used by gunicorn_pool.sqlalchemy)."""
    with bounded(raw, timeout):
        raw.ping(False)
