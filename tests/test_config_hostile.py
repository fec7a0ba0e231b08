"""Configs that cannot crash, hang or leak a secret: ambiguous URLs refused without a trace of
their userinfo, every key checked for type and range when the config is built (a hypothesis
fuzz holds the whole surface to it), and non-ASCII passwords that log in."""

from __future__ import annotations

import math
import secrets
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import MYSQL_DB, MYSQL_HOST, MYSQL_PORT, MySQLUser

from gunicorn_pool import ConfigError, ConnectError, DatabasePool, parse_config
from gunicorn_pool.config import KEYS
from gunicorn_pool.options import PoolOptions

SECRET = "Zq9-s3cr3t-Xw"  # what no error text may contain, in part or whole


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://app:se/cr{SECRET}@db.internal:3306/shop",  # '/' in the password
        f"mysql://app:4321#{SECRET}@db.internal/shop",  # '#': was read as host 'app'
        f"mysql://app:p?{SECRET}@db.internal/shop",  # '?'
        f"mysql://app:[{SECRET}]@db.internal/shop",  # '[' ']': was a bare ValueError naming it
        f"mysql://app:p@{SECRET}@db.internal/shop",  # a second '@'
        f"postgresql://app:x/{SECRET}@db.internal/shop",
        f"mysql://ap/p{SECRET}:pw@db.internal/shop",  # '/' in the user name
    ],
)
def test_ambiguous_urls_are_refused_with_a_hint_and_no_part_of_the_userinfo(url):
    with pytest.raises(ConfigError) as info:
        parse_config("shop", url)
    text = str(info.value)
    assert "percent-encode" in text and "'shop'" in text, text
    userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
    pieces = {userinfo, SECRET, *userinfo.replace("/", ":").replace("@", ":").replace("#", ":").split(":")}
    for part in (p for p in pieces if len(p) >= 5):  # shorter ones ("se", "p") are in plain words too
        assert part not in text, (part, text)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://app@db/shop?{SECRET}=1",  # not a name: an unknown option is not echoed
        f"mysql://app@db/shop?adapter=my-{SECRET}",
        f"sqlite://app:{SECRET}@/x.db",  # a login in a sqlite URL
    ],
)
def test_names_that_are_not_names_are_not_echoed(url):
    with pytest.raises(ConfigError) as info:
        parse_config("shop", url)
    assert SECRET not in str(info.value) and "'shop'" in str(info.value), str(info.value)


def test_an_option_name_typo_is_named():
    with pytest.raises(ConfigError, match="unknown option 'max_sise'"):
        parse_config("shop", "mysql://app@db/shop?max_sise=3")


def test_a_password_that_also_appears_elsewhere_is_masked_there_too():
    cfg = parse_config("shop", {"user": "hunter22", "password": "hunter22", "host": "db", "database": "x_hunter22"})
    assert "hunter22" not in cfg.dsn and "hunter22" not in repr(cfg), cfg.dsn


@pytest.mark.parametrize(
    "encoded, password",
    [
        ("se%2Fcr%3Fet%23%5Bx%5D%40y", "se/cr?et#[x]@y"),
        ("p%C3%A4ssw%C3%B6rd", "pässwörd"),
        ("%CE%A9mega", "Ωmega"),
    ],
)
def test_percent_encoded_passwords_parse(encoded, password):
    cfg = parse_config("p", f"mysql://app:{encoded}@db.internal:3307/shop")
    assert (cfg.user, cfg.password, cfg.host, cfg.port, cfg.database) == ("app", password, "db.internal", 3307, "shop")
    assert password not in repr(cfg) and password not in cfg.dsn


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"port": float("inf")}, "port must be"),
        ({"port": 70000}, "port must be"),
        ({"timeout": float("inf")}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"max_waiting": -1}, "max_waiting must be"),
        ({"user": None}, None),  # None is "unset": the adapter's default user
        ({"user": 12}, "user must be"),
        ({"password_env": 12}, "password_env must be a string"),
        ({"max_size": True}, "max_size must be"),
        ({"max_size": 2.5}, "max_size must be"),
        ({"autocommit": "flase"}, "autocommit must be"),
        ({"session": [1, 2]}, "session must be"),
        ({"sslmode": "require"}, "does not apply to adapter 'mysql'"),
        ({"adapter": "postgresql", "charset": "utf8"}, "does not apply"),
        ({"adapter": "postgresql", "sslmode": "sometimes"}, "sslmode must be one of"),
        ({"connect_timeout": 0}, "connect_timeout must be > 0"),
    ],
)
def test_every_key_is_checked_for_type_and_range_when_the_config_is_built(bad, fragment):
    if fragment is None:
        assert parse_config("p", {"host": "h", **bad}).user == "root"
        return
    with pytest.raises(ConfigError, match=fragment):
        parse_config("p", {"host": "h", **bad})


# -- fuzz ------------------------------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["none", "true", "0", "-1", "1e309", "inf", "nan", "3306", "0.5", "", SECRET, f"x{SECRET}",
                     "utf8mb4", "disable", "mysql", "sqlite", "postgresql", "pgsql", "identity"]),
    st.lists(st.text(max_size=5), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.just(object()), st.binary(max_size=4),
)  # fmt: skip
_KEYS = st.sampled_from([*KEYS, "pass", "name", "db", "passwd", "dbname", "password_env", "password_file",
                         "max_sise", "host ", "", "PORT"])  # fmt: skip


#: Keys whose values the DSN, the address or an error names on purpose (the pool and the host,
#: the login, the database, which variable or file should hold the password).
_SHOWN_BY_DESIGN = ("host", "user", "database", "name", "db", "dbname", "password_env", "password_file")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.sampled_from(["mysql", "postgresql", "sqlite", None]))
@example({"init_command": "0"}, "sqlite")  # SQL that fails only when it runs: a ConnectError, not a crash
@example({"target_session_attrs": SECRET}, "mysql")  # a choice's wrong value was echoed
@example({"password_env": SECRET}, "mysql")  # the variable's name is no secret: the value it would hold is
@example({"name": "0"}, "sqlite")  # a file name under an alias: kept out of the working directory
def test_fuzz_dict_configs_build_a_working_pool_or_raise_config_error_without_the_secret(tmp_path_factory, raw,
                                                                                       adapter):  # fmt: skip
    config: dict[str, Any] = dict(raw)
    config.pop("creator", None)  # a creator is code: it runs when a connection opens
    for key in _SHOWN_BY_DESIGN:  # where the server is and who logs in are no secret: the DSN shows them
        if isinstance(config.get(key), str) and SECRET in config[key]:
            config[key] = config[key].replace(SECRET, "not-the-password")
    if adapter is not None:
        config.setdefault("adapter", adapter)
    if config.get("adapter") in ("sqlite", "sqlite3"):
        for alias in ("database", "name", "db", "dbname"):  # a file name: keep it out of the working directory
            if isinstance(config.get(alias), str):
                config[alias] = str(tmp_path_factory.mktemp("fz") / "f.db")
    config.setdefault("password", SECRET) if config.get("adapter") not in ("sqlite", "sqlite3") else None
    _build_or_refuse(config)


_URL_PARTS = st.text(alphabet=string.ascii_letters + string.digits + "/?#[]@:%.-_=&+ ", max_size=10)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["mysql", "postgresql", "mariadb", "postgres", "sqlite", "oracle", "MySQL"]), _URL_PARTS,
       _URL_PARTS, _URL_PARTS, _URL_PARTS)  # fmt: skip
@example("sqlite", "?", "", "", "")  # the secret became an option name, echoed by the error
@example("sqlite", "", "", "", "")  # a sqlite URL with a login kept it in its path and repr
@example("sqlite", "/", "", "", "")  # sqlite:///:<secret>@: a login after the slashes, kept as the file name
@example("sqlite", "/", "/", "", "")  # sqlite:///:<secret>/@: the same with a slash in the password
@example("mysql", "", "", "", "adapter=" + SECRET)  # echoed as the unknown adapter
def test_fuzz_urls_parse_or_raise_config_error_without_the_secret(scheme, user, host, path, query):
    url = f"{scheme}://{user}:{SECRET}{host}@{path}?{query}"
    _build_or_refuse(url, probe_sqlite=False)
    _build_or_refuse(f"{scheme}://{user}:x{host}/{path}?{query}&password={SECRET}", probe_sqlite=False)


def _build_or_refuse(config: Any, *, probe_sqlite: bool = True) -> None:
    try:
        db = DatabasePool({"fz": config}, name="fuzz")
    except ConfigError as exc:
        assert SECRET not in str(exc) and SECRET not in repr(exc), str(exc)
        return
    cfg = db.configs["fz"]
    for text in (repr(cfg), str(cfg), cfg.dsn, cfg.address, repr(db)):
        assert SECRET not in text, text
    assert isinstance(cfg, PoolOptions)
    for number in (cfg.timeout, cfg.connect_timeout, cfg.check_timeout):
        assert math.isfinite(number) and number > 0
    pool = db.pool("fz")  # the pool object builds (its connector too), no I/O yet
    assert SECRET not in repr(pool)
    if probe_sqlite and cfg.adapter == "sqlite":
        # A config that builds must work: open, lend, return, close. Only the SQL it carries
        # (init_command, session) can fail, and only when it runs: a ConnectError naming the pool.
        try:
            pool.open()
            with pool.connection(timeout=1) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        except ConnectError as exc:
            assert cfg.init_command or cfg.session, f"a config with no SQL of its own failed: {exc}"
            assert "'fz'" in str(exc) and SECRET not in str(exc), str(exc)
        else:
            assert pool.stats()["requests_num"] == 1
    db.close_pool()


# -- password_file: a regular file of bounded size, never a FIFO or a device -------------------------

#: Builds one pool with argv[1] as its password_file in a child process whose address space is capped
#: (a regression reading /dev/zero ends in MemoryError there, not in the test machine's swap); prints
#: the ConfigError text, or the password's length if the build succeeded.
_BUILD_WITH_PASSWORD_FILE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from gunicorn_pool import ConfigError, parse_config
try:
    config = parse_config("vault", {"host": "db.internal", "user": "app", "password_file": sys.argv[1]})
except ConfigError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"password_length": len(config.password)}))
"""


def _build_with_password_file(path: str) -> dict[str, Any]:
    """What building a pool with *path* as password_file gives, within 20 s (the test cannot hang)."""
    import json
    import os
    import subprocess
    import sys

    from support import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([sys.executable, "-c", _BUILD_WITH_PASSWORD_FILE, path], env=env, timeout=20,
                              capture_output=True, text=True, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"building a config with password_file={path} did not return within 20 s")
    assert done.returncode == 0, f"the config build crashed (exit {done.returncode}): {done.stderr[-800:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _hostile_password_file(kind: str, tmp_path: Any) -> str:
    import os

    if kind == "fifo":  # no writer: open() for reading waits for one forever
        os.mkfifo(tmp_path / "pw.fifo")
        return str(tmp_path / "pw.fifo")
    if kind == "oversized":
        (tmp_path / "pw.big").write_text(SECRET * (64 * 1024 // len(SECRET) + 1))
        return str(tmp_path / "pw.big")
    if kind == "directory":
        return str(tmp_path)
    return "/dev/zero"  # read until MemoryError


@pytest.mark.parametrize("kind, why", [
    ("fifo", "it is a FIFO, not a regular file"),
    ("dev_zero", "it is a character device, not a regular file"),
    ("directory", "it is a directory, not a regular file"),
    ("oversized", "it holds more than 64 KiB, the limit for a password file"),
])  # fmt: skip
def test_a_password_file_must_be_a_regular_file_of_bounded_size(tmp_path, kind, why):
    """A FIFO with no writer blocked the config build forever, /dev/zero was read until MemoryError,
    a 64 KiB+ file became the password. Each is refused at once, naming the pool and the path,
    never the content."""
    path = _hostile_password_file(kind, tmp_path)
    result = _build_with_password_file(path)
    assert "error" in result, f"password_file {kind} was accepted: {result}"
    assert result["error"] == f"pool 'vault': cannot read password_file {path!r}: {why}", result
    assert SECRET not in result["error"]


def test_a_password_file_of_the_largest_size_allowed_is_read(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"x" * (64 * 1024 - 1) + b"\n")
    assert _build_with_password_file(str(path)) == {"password_length": 64 * 1024 - 1}


# -- passwords that are not ASCII, against the real server -------------------------------------------


@pytest.mark.mysql
@pytest.mark.parametrize("password", ["pässwörd", "Ωmega-π", "日本語パス", "emoji-🔑"])
def test_non_ascii_passwords_log_in(mysql_server, password):
    """PyMySQL sends a str password as latin-1: 'pässwörd' got "Access denied" and 'Ωmega'
    raised a codec error that put the character in the log and the HTTP body."""
    user = MySQLUser(f"gp_{secrets.token_hex(4)}", password)
    try:
        for config in (user.config(max_size=1),
                       f"mysql://{user.name}:{_quote(password)}@{MYSQL_HOST}:{MYSQL_PORT}/{MYSQL_DB}"):  # fmt: skip
            db = DatabasePool({"default": config}, name="nonascii")
            with db.connection() as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT CURRENT_USER()")
                    assert cur.fetchone()[0].startswith(user.name)
            db.close_pool()
    finally:
        user.drop()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
