"""gunicorn_pool.sqlalchemy in one process, against real MariaDB and PostgreSQL: SQLAlchemy's
transactions win (a rolled-back ORM session leaves no row, also when the engine's creator hands
out autocommit connections), its reset on return is not doubled, checkouts are the core's
(stats, FIFO timeout, checkout probe, leak reclaim), and the configs are checked.
"""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import threading
import time
from typing import Any, Iterator

import pytest
from sqlalchemy import Integer, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from support import MYSQL_DB, MYSQL_HOST, MYSQL_PORT, PG_DB, PG_HOST, PG_PORT, wait_until

from gunicorn_pool import ConfigError, ConnectError, request_scope
from gunicorn_pool.options import PoolOptions
from gunicorn_pool.sqlalchemy import EnginePool, GunicornPool, adopt
from gunicorn_pool.sqlalchemy.service import parse_engine_config


class Base(DeclarativeBase):
    pass


def model(table: str) -> Any:
    """An ORM model on a fresh table name (one per test)."""
    return type(f"Row_{table}", (Base,), {
        "__tablename__": table,
        "id": mapped_column(Integer, primary_key=True, autoincrement=True),
        "v": mapped_column(Integer),
        "__annotations__": {"id": Mapped[int], "v": Mapped[int]},
    })  # fmt: skip


class Server:
    """One backend under test: its login's URL, a session counter, and an admin row count."""

    def __init__(self, kind: str, user: Any) -> None:
        self.kind = kind
        self.user = user

    def url(self, **query: Any) -> str:
        return str(self.user.url(**query))

    def sessions(self) -> int:
        return int(self.user.count())

    def server_ids(self) -> list[int]:
        return list(self.user.connection_ids() if self.kind == "mysql" else self.user.backend_pids())

    def kill_all(self) -> None:
        self.user.kill_all() if self.kind == "mysql" else self.user.terminate_all()

    def raw_connect(self, *, autocommit: bool) -> Any:
        """A plain driver connection of the test login (for a creator=)."""
        if self.kind == "mysql":
            import pymysql

            return pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=self.user.name,
                                   password=self.user.password, database=MYSQL_DB, autocommit=autocommit)  # fmt: skip
        import psycopg

        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=self.user.name, password=self.user.password,
                               dbname=PG_DB, autocommit=autocommit)  # fmt: skip


@pytest.fixture(
    params=[pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def server(request: Any) -> Iterator[Server]:
    fixture = "mysql_user" if request.param == "mysql" else "pg_user"
    yield Server(request.param, request.getfixturevalue(fixture))


@pytest.fixture
def table(server: Server) -> Iterator[Any]:
    """A fresh table with its ORM model, created and dropped by a plain engine."""
    Row = model(f"gp_sa_{secrets.token_hex(4)}")
    admin = create_engine(driver_url(server.url()), poolclass=None)
    Row.__table__.create(admin)
    try:
        yield Row
    finally:
        Row.__table__.drop(admin)
        admin.dispose()


def driver_url(url: str) -> str:
    """A URL with the project's drivers, for a stock engine."""
    return str(parse_engine_config("admin", url).url.render_as_string(hide_password=False))


def rows(server: Server, Row: Any) -> int:
    engine = create_engine(driver_url(server.url()))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(Row.__table__.c.id)).all().__len__())
    finally:
        engine.dispose()


@pytest.fixture
def orm(server: Server) -> Iterator[EnginePool]:
    service = EnginePool({"default": {"url": server.url(), "max_size": 2, "min_size": 1}}, name="orm")
    service.init_pool()
    try:
        yield service
    finally:
        service.close_pool()


def test_rolled_back_session_leaves_no_row(server: Server, table: Any, orm: EnginePool) -> None:
    engine = orm.engine()
    assert isinstance(engine.pool, GunicornPool)
    with Session(engine) as session:
        session.add(table(v=1))
        session.flush()
        session.rollback()
    assert rows(server, table) == 0
    with Session(engine) as session:
        session.add(table(v=2))
        session.commit()
    assert rows(server, table) == 1


def test_autocommit_creator_adopted_still_rolls_back(server: Server, table: Any) -> None:
    """The issue's bug: connections handed out in autocommit mode commit what the ORM rolls back.
    A stock engine on such a creator keeps the row; the adopted one does not."""
    url = driver_url(server.url())
    stock = create_engine(url, creator=lambda: server.raw_connect(autocommit=True))
    with Session(stock) as session:
        session.add(table(v=1))
        session.flush()
        session.rollback()
    assert rows(server, table) == 1  # the bug, with SQLAlchemy's own pool
    stock.dispose()
    engine = create_engine(url, creator=lambda: server.raw_connect(autocommit=True))
    service = adopt(engine, name=f"adopted_{secrets.token_hex(3)}")
    service.init_pool()
    try:
        with Session(engine) as session:
            session.add(table(v=2))
            session.flush()
            session.rollback()
        assert rows(server, table) == 1
        assert set(service.stats()) == {"default"}
    finally:
        service.close_pool()


def test_isolation_level_autocommit_is_kept(server: Server, table: Any) -> None:
    service = EnginePool({"default": {"url": server.url(), "isolation_level": "AUTOCOMMIT"}}, name="orm")
    service.init_pool()
    try:
        with service.engine().connect() as conn:
            conn.execute(table.__table__.insert().values(v=1))
            conn.rollback()  # nothing to roll back: the insert committed itself
        assert rows(server, table) == 1
    finally:
        service.close_pool()


def test_view_that_raises_rolls_back(server: Server, table: Any, orm: EnginePool) -> None:
    with pytest.raises(RuntimeError):
        with Session(orm.engine()) as session, session.begin():
            session.add(table(v=1))
            session.flush()
            raise RuntimeError("view failed")
    assert rows(server, table) == 0


@pytest.mark.mysql
def test_reset_on_return_sends_no_rollback_when_no_transaction_is_open(mysql_user: Any) -> None:
    """SQLAlchemy rolls back at the end of every transaction; PyMySQL's exact status proves none is
    open after a statement that touched no table, so nothing is sent (the session's own
    Com_rollback counter stays put: it moved by one per lease before), and the pool adds nothing.
    A read of an InnoDB table opens one (autocommit off): exactly one ROLLBACK ends it."""
    Row = model(f"gp_sa_{secrets.token_hex(4)}")
    admin = create_engine(driver_url(mysql_user.url()), poolclass=None)
    Row.__table__.create(admin)
    service = EnginePool({"default": {"url": mysql_user.url(), "max_size": 1}}, name="orm")
    service.init_pool()
    stmt = text("SHOW SESSION STATUS LIKE 'Com_rollback'")
    try:
        engine = service.engine()
        counts = []
        for _ in range(3):
            with engine.connect() as conn:
                counts.append(int(conn.execute(stmt).one()[1]))
        assert counts[2] - counts[1] == counts[1] - counts[0] == 0
        with engine.connect() as conn:
            conn.execute(select(Row.__table__.c.id)).all()
        with engine.connect() as conn:
            assert int(conn.execute(stmt).one()[1]) - counts[2] == 1
        assert service.stats()["default"]["connections_num"] == 1
    finally:
        service.close_pool()
        Row.__table__.drop(admin)
        admin.dispose()


def test_stats_count_every_checkout(server: Server, orm: EnginePool) -> None:
    engine = orm.engine()
    before = orm.stats()["default"]["requests_num"]
    for _ in range(5):
        with Session(engine) as session:
            session.execute(select(1))
    stats = orm.stats()["default"]
    assert stats["requests_num"] - before == 5
    assert stats["pool_size"] == 1 and stats["connections_num"] == 1
    assert server.sessions() == 1


def test_pool_timeout_is_both_errors(server: Server) -> None:
    service = EnginePool({"default": {"url": server.url(), "max_size": 1, "timeout": 0.2}}, name="orm")
    service.init_pool()
    try:
        engine = service.engine()
        with engine.connect():
            with pytest.raises(SATimeoutError) as info:
                engine.connect()
        assert "max_size=1" in str(info.value)
        assert service.stats()["default"]["requests_timeouts"] == 1
    finally:
        service.close_pool()


def test_waiters_served_in_order_never_over_max(server: Server, orm: EnginePool) -> None:
    engine = orm.engine()
    peak, lock, active = [0], threading.Lock(), [0]

    def work() -> None:
        with engine.connect() as conn:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            conn.execute(text("SELECT 1"))
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak[0] <= 2
    assert server.sessions() <= 2
    assert orm.stats()["default"]["requests_num"] >= 12


def test_killed_connection_replaced_on_checkout(server: Server, orm: EnginePool) -> None:
    engine = orm.engine()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    first = server.server_ids()
    server.kill_all()
    wait_until(lambda: server.sessions() == 0, 10, what="killed sessions gone")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert server.server_ids() != first
    assert orm.stats()["default"]["connections_lost"] == 1


def test_leaked_session_reclaimed_at_request_end(server: Server, orm: EnginePool) -> None:
    engine = orm.engine()
    leaked = Session(engine)
    with request_scope("leak"):
        leaked.execute(select(1))  # the session holds its connection: never closed in the request
    stats = orm.stats()["default"]
    assert stats["connections_leaked"] == 1 and stats["pool_size"] == 0
    wait_until(lambda: server.sessions() == 0, 10, what="the leaked session closed")
    with Session(engine) as session:  # the capacity is back
        assert session.execute(select(1)).scalar() == 1
    with pytest.raises(DBAPIError):  # used past its request: the connection was closed under it
        leaked.close()
    leaked.close()  # its record's late return was ignored
    stats = orm.stats()["default"]
    assert stats["pool_size"] == 1 and stats["pool_available"] == 1


def test_configs_checked_without_secrets() -> None:
    with pytest.raises(ConfigError, match="max_sise|unknown"):
        adopt(create_engine("sqlite://"), max_sise=3)
    with pytest.raises(ConfigError, match="pool_size"):
        EnginePool({"default": {"url": "mysql://u:s3cr3t@h/db", "pool_size": 5}})
    with pytest.raises(ConfigError, match="max_size") as info:
        EnginePool("mysql://u:s3cr3t@h/db?max_size=0")
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        EnginePool("not a url s3cr3t")
    assert "s3cr3t" not in str(info.value)
    cfg = parse_engine_config("x", "postgresql://u:s3cr3t@h/db?max_size=3&application_name=a")
    assert cfg.max_size == 3 and cfg.url is not None and cfg.url.drivername == "postgresql+psycopg"
    assert "s3cr3t" not in cfg.dsn and "s3cr3t" not in repr(cfg) and "max_size" not in cfg.dsn


@pytest.mark.parametrize("url", ["mysql://app:s3cr3t@db/shop", "postgresql://app:s3cr3t@db/shop",
                                 "mariadb://app:s3cr3t@db/shop", "sqlite:////tmp/gp-typo.db"])  # fmt: skip
@pytest.mark.parametrize("typo", ["max_sise", "echo_pol", "isolation_levle"])
def test_engine_pool_key_typo_is_refused_when_the_config_is_built(url: str, typo: str) -> None:
    """A misspelled key (a pool option or a create_engine() argument) went to create_engine() in
    each worker: a TypeError logged per worker while gunicorn served. It is refused in the master."""
    with pytest.raises(ConfigError) as info:
        EnginePool({"default": {"url": url, typo: 4, "echo": False}}, name="orm")
    message = str(info.value)
    assert message.startswith(f"pool 'default': unknown option '{typo}' (known: "), message
    known = message.split("(known: ")[1].rstrip(")").split(", ")
    assert {"url", "max_size", "timeout", "echo", "echo_pool", "isolation_level", "pool_pre_ping",
            "connect_args", "execution_options", "password_file"} <= set(known)  # fmt: skip
    assert "s3cr3t" not in message and "pool_size" not in known


def test_engine_pool_key_that_looks_like_a_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match="unknown option .not shown") as info:
        EnginePool({"default": {"url": "sqlite:////tmp/gp.db", "sk-live/Zq9s3cr3t==": 1}})
    assert "Zq9s3cr3t" not in str(info.value)


def test_engine_pool_accepts_every_create_engine_argument_it_lists(tmp_path: Any) -> None:
    """Arguments SQLAlchemy takes (the dialect's, the pool's with their pool_ names, the Engine's)
    pass the check, and SQLAlchemy builds the engine from them in this process."""
    kwargs = {"echo": False, "echo_pool": False, "pool_pre_ping": True, "pool_reset_on_return": "rollback",
              "pool_logging_name": "p", "logging_name": "e", "hide_parameters": True, "query_cache_size": 10,
              "execution_options": {"stream_results": False}, "isolation_level": "SERIALIZABLE",
              "json_serializer": None, "label_length": 30, "native_datetime": False, "connect_args": {},
              "enable_from_linting": False, "future": True, "pool_timeout": 3, "pool_recycle": 60}  # fmt: skip
    service = EnginePool({"default": {"url": f"sqlite:///{tmp_path / 'ok.db'}", **kwargs}}, name="orm")
    try:
        with service.engine().connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        service.close_pool()


@pytest.mark.mysql
def test_engine_pool_typo_stops_gunicorn_at_start_up(mysql_user: Any, gunicorn: Any) -> None:
    """The README's promise, for EnginePool too: gunicorn exits non-zero, naming the pool and the key
    (before: it started, and every worker logged create_engine()'s TypeError)."""
    pools = {"default": {"url": mysql_user.url(), "max_sise": 4}}
    conf = f"import gunicorn_pool\nfrom gunicorn_pool.sqlalchemy import EnginePool\nPOOLS = {pools!r}\n" \
           "gunicorn_pool.register(EnginePool(POOLS), name='orm')\nworkers = 2\n"  # fmt: skip
    server = gunicorn(conf)
    server.start(wait=False)
    try:
        code = server.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn still running 20 s after start: the typo did not stop it\n{server.log()[-1500:]}")
    assert code != 0
    log = server.log()
    assert "ConfigError: pool 'default': unknown option 'max_sise' (known: " in log, log[-2000:]
    assert mysql_user.password not in log


def test_sqlite_engine_pool_rolls_back(tmp_path: Any) -> None:
    Row = model(f"gp_sa_{secrets.token_hex(4)}")
    service = EnginePool({"default": f"sqlite:///{tmp_path / 'app.db'}"}, name="orm")
    service.init_pool()
    try:
        engine = service.engine()
        Row.__table__.create(engine)
        with Session(engine) as session:
            session.add(Row(v=1))
            session.flush()
            session.rollback()
            assert session.scalar(select(func.count()).select_from(Row)) == 0
        assert service.stats()["default"]["connections_num"] == 1
    finally:
        service.close_pool()


@pytest.mark.mysql
def test_dispose_and_reopen_keep_the_engine_on_our_pool(mysql_user: Any) -> None:
    engine = create_engine(driver_url(mysql_user.url()))
    service = adopt(engine, name=f"adopted_{secrets.token_hex(3)}", max_size=2)
    service.init_pool()
    try:
        engine.dispose()  # SQLAlchemy's own: closes our pool, puts a fresh GunicornPool in its place
        assert isinstance(engine.pool, GunicornPool)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        service.close_pool()
        wait_until(lambda: mysql_user.count() == 0, 10, what="sessions closed with the service")
        service.init_pool()  # a worker opening its pools again (hooks, tests)
        assert service.engine() is engine and isinstance(engine.pool, GunicornPool)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert service.stats()["default"]["requests_num"] >= 1 and mysql_user.count() == 1
    finally:
        service.close_pool()


@pytest.mark.mysql
def test_refused_login_is_logged_and_raised_without_the_password(mysql_user: Any, caplog: Any) -> None:
    wrong = "Wr0ng-" + secrets.token_hex(6)
    url = mysql_user.url().replace(f":{mysql_user.password}@", f":{wrong}@")
    service = EnginePool({"default": {"url": url, "reconnect_backoff_max": 0.1}}, name="orm")
    service.init_pool()  # never raises: logged, the pool connects on demand
    try:
        with pytest.raises(ConnectError) as info:
            service.engine().connect()
        assert "Access denied" in str(info.value) and "127.0.0.1:" in str(info.value)
        assert wrong not in str(info.value) and wrong not in caplog.text
        assert "warm-up failed" in caplog.text and f"{mysql_user.name}:***@" in caplog.text
    finally:
        service.close_pool()


@pytest.mark.mysql
def test_flask_sqlalchemy_binds_adopted_before_init_app(mysql_user: Any, tmp_path: Any) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    service = adopt(db, name=f"flask_{secrets.token_hex(3)}")  # before init_app: engines found at boot
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = driver_url(mysql_user.url())
    app.config["SQLALCHEMY_BINDS"] = {"reports": f"sqlite:///{tmp_path / 'reports.db'}"}
    db.init_app(app)
    service.init_pool()
    try:
        assert set(service.stats()) == {"default", "reports"}
        assert mysql_user.count() == 1  # opened before any use
        with app.app_context():
            assert isinstance(db.engine.pool, GunicornPool) and isinstance(db.engines["reports"].pool, GunicornPool)
            assert db.session.execute(select(1)).scalar() == 1
            db.session.remove()
        assert service.stats()["default"]["requests_num"] >= 1
    finally:
        service.close_pool()
    wait_until(lambda: mysql_user.count() == 0, 10, what="closed at close_pool()")


def _session_id(engine: Any) -> int:
    sql = "SELECT CONNECTION_ID()" if engine.dialect.name == "mysql" else "SELECT pg_backend_pid()"
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar())


def test_fork_child_drops_the_parents_connections_without_a_word(server: Server, orm: EnginePool) -> None:
    """A pool opened before fork (--preload): the child opens its own session and leaves the
    parent's alone (no COM_QUIT, no Terminate on the shared socket)."""
    import os

    engine = orm.engine()
    parent = _session_id(engine)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its session, then leave without running any cleanup
        code = 1
        try:
            child = _session_id(engine)
            orm.close_pool()  # drops what it inherited, closes its own
            os.write(write, str(child).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        child = int(os.read(read, 64) or b"0")
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    assert status == 0 and child and child != parent
    wait_until(lambda: child not in server.server_ids(), 10, what="the child's own session closed")
    assert parent in server.server_ids()
    assert _session_id(engine) == parent  # the parent's connection still works
    assert orm.stats()["default"]["connections_num"] == 1


@pytest.mark.mysql
def test_poolclass_in_create_engine(mysql_user: Any) -> None:
    engine = create_engine(driver_url(mysql_user.url()), poolclass=GunicornPool)
    try:
        assert _session_id(engine) == _session_id(engine)
        assert engine.pool.stats()["requests_num"] == 2  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    wait_until(lambda: mysql_user.count() == 0, 10, what="closed by dispose()")


@pytest.mark.mysql
def test_lifetime_replaces_and_pool_recycle_is_max_lifetime(mysql_user: Any) -> None:
    service = EnginePool({"default": {"url": mysql_user.url(), "pool_recycle": 1}}, name="orm")
    assert service.configs["default"].max_lifetime == 1.0
    service.init_pool()
    try:
        engine = service.engine()
        first = _session_id(engine)
        wait_until(lambda: _session_id(engine) != first, 5, interval=0.2, what="the expired connection replaced")
        wait_until(lambda: first not in mysql_user.connection_ids(), 10, what="the expired session closed")
        assert service.stats()["default"]["connections_num"] >= 2 and mysql_user.count() == 1
    finally:
        service.close_pool()


@pytest.mark.mysql
def test_queries_bounded_by_gunicorns_timeout_in_gevent_workers(mysql_user: Any) -> None:
    from gunicorn_pool.base import WorkerProfile, current_profile, set_profile

    saved = current_profile()
    set_profile(WorkerProfile(kind="gevent", timeout=7.0))
    try:
        given = {"url": mysql_user.url(), "connect_args": {"read_timeout": 3}}
        services = [EnginePool({"default": mysql_user.url()}, name="orm"), EnginePool({"default": given}, name="o2")]
        for service in services:
            service.init_pool()
        bounds = []
        for service in services:
            with service.engine().connect() as conn:
                bounds.append(conn.connection.dbapi_connection._read_timeout)  # type: ignore[union-attr]
            service.close_pool()
        assert bounds == [7.0, 3]
    finally:
        set_profile(saved)


class _ForeignDriverConnection:
    """A real SQLite connection behind a DB-API driver module gunicorn_pool does not know (as
    mysqlclient or pg8000 would be): the pool can only ping it through SQLAlchemy or a cursor."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False)

    def cursor(self) -> Any:
        return self._conn.cursor()

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


def test_pool_without_an_engine_pings_a_foreign_driver_with_a_query(tmp_path: Any) -> None:
    """SQLAlchemy's pool API on its own (``GunicornPool(creator)``) has no dialect to ping with.
    Before, every checkout past check_interval raised AttributeError in the ping, so the pool
    called a live connection dead, dropped it and connected again."""
    path = str(tmp_path / "foreign.db")
    pool = GunicornPool(lambda: _ForeignDriverConnection(path), options=PoolOptions(check_interval=0, max_size=1))
    try:
        for _ in range(3):
            conn = pool.connect()
            cursor = conn.cursor()
            cursor.execute("SELECT 41 + 1")
            assert cursor.fetchall() == [(42,)]
            conn.close()
            time.sleep(0.01)  # idle past check_interval (0) and probe_after (0.1 ms): pinged on checkout
        stats = pool.core.stats()
        assert stats["connections_num"] == 1 and stats["connections_lost"] == 0, stats
        assert stats["requests_num"] == 3
    finally:
        pool.dispose()
