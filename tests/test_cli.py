"""``gunicorn-pool check`` against the real MariaDB, run as a real command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, admin_connect

pytestmark = pytest.mark.mysql

CONF = """
import gunicorn_pool
gunicorn_pool.register(gunicorn_pool.DatabasePool({pools!r}), name="db")
worker_class = {worker!r}
workers = {workers}
{extra}
"""


def _write(tmp_path: Path, pools: Any, worker: str = "gunicorn_pool.Worker", workers: int = 2, extra: str = "") -> Path:
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(CONF.format(pools=pools, worker=worker, workers=workers, extra=textwrap.dedent(extra)))
    return path


def _run(*args: str, cwd: Path, module: bool = True, env: Any = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gunicorn_pool"] if module else [str(Path(sys.executable).parent / "gunicorn-pool")]
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd), **(env or {})}
    return subprocess.run([*cmd, "check", *args], cwd=str(cwd), env=environ, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def _json(*args: str, cwd: Path, env: Any = None) -> tuple[int, dict[str, Any]]:
    proc = _run(*args, "--json", cwd=cwd, env=env)
    return proc.returncode, json.loads(proc.stdout)


def _server_max_connections() -> int:
    conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@max_connections")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_fitting_config_exits_0_with_budget_table(tmp_path, mysql_user):
    conf = _write(tmp_path, {"default": mysql_user.url(), "local": f"sqlite:///{tmp_path}/app.db"})
    proc = _run("-c", str(conf), cwd=tmp_path, module=False)  # the console script
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"mysql://{mysql_user.name}:***@127.0.0.1:3306/test" in out
    assert mysql_user.password not in out + proc.stderr
    assert "sqlite: no server budget" in out
    assert "fits" in out and out.rstrip().endswith("OK: every server fits the peak")
    assert "2 x gunicorn_pool.workers.sync.Worker (sync)" in out
    # The probe's connection is closed again.
    assert mysql_user.count() == 0

    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert code == 0 and report["ok"] is True and report["exit_code"] == 0
    pools = {p["pool"]: p for p in report["pools"]}
    mysql = pools["default"]
    assert (mysql["min_size"], mysql["max_size"], mysql["per_host"], mysql["sighup_peak"]) == (1, 1, 2, 4)
    assert mysql["connect"]["ok"] and mysql["connect"]["version"]
    assert mysql["connect"]["processlist_visible"] == 1  # no PROCESS privilege: it sees itself only
    assert "per_host" not in pools["local"] and "connect" not in pools["local"]
    (server,) = report["servers"]
    assert server["address"] == "127.0.0.1:3306"
    assert server["max_connections"] == _server_max_connections()
    assert (server["steady"], server["needed"]) == (2, 4)
    assert server["spare"] == server["max_connections"] - 4 and server["fits"] is True
    assert server["connections_now"] >= 1


def test_sizes_follow_worker_profile_and_explicit_max(tmp_path, mysql_user):
    pools = {"default": mysql_user.url(), "small": mysql_user.url(max_size=3)}
    conf = _write(tmp_path, pools, worker="gunicorn_pool.Worker", workers=3, extra="threads = 6")
    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert code == 0, report
    assert report["plan"]["kind"] == "thread"  # gunicorn_pool.Worker runs ThreadWorker with threads > 1
    sizes = {p["pool"]: (p["max_size"], p["per_host"]) for p in report["pools"]}
    assert sizes == {"default": (6, 18), "small": (3, 9)}
    assert report["servers"][0]["needed"] == 2 * (18 + 9)

    conf = _write(tmp_path, {"default": mysql_user.url()}, worker="gunicorn_pool.GeventWorker", workers=2)
    code, report = _json("-c", str(conf), "-w", "5", cwd=tmp_path)  # command-line override, as gunicorn -w
    assert code == 0, report
    assert report["plan"]["kind"] == "gevent" and report["plan"]["workers"] == 5
    assert report["pools"][0]["max_size"] == 10 and report["servers"][0]["needed"] == 100


def test_over_budget_exits_1(tmp_path, mysql_user):
    conf = _write(tmp_path, {"default": mysql_user.url()}, worker="gunicorn_pool.ThreadWorker", extra="threads = 4")
    proc = _run("-c", str(conf), "--hosts", "100", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "OVER BUDGET" in proc.stdout
    needed = 2 * 4 * 2 * 100
    assert f"peak {needed} connections > max_connections {_server_max_connections()}" in proc.stdout
    code, report = _json("-c", str(conf), "--hosts", "100", cwd=tmp_path)
    assert code == 1 and report["servers"][0]["fits"] is False and report["servers"][0]["needed"] == needed
    # The same config on one host fits: the verdict follows the arithmetic, not the flag.
    assert _run("-c", str(conf), "--hosts", "1", cwd=tmp_path).returncode == 0


def test_bad_password_exits_1_without_leaking_it(tmp_path, mysql_user):
    wrong = "wrong-" + mysql_user.password
    conf = _write(tmp_path, {"default": mysql_user.url().replace(mysql_user.password, wrong)})
    proc = _run("-c", str(conf), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "cannot connect: (1045) Access denied" in proc.stdout
    assert f"mysql://{mysql_user.name}:***@" in proc.stdout
    assert wrong not in proc.stdout + proc.stderr
    code, report = _json("-c", str(conf), cwd=tmp_path)
    assert code == 1 and report["pools"][0]["connect"]["ok"] is False and report["servers"][0]["fits"] is None


def test_unreachable_server_is_bounded_by_connect_timeout(tmp_path, mysql_user):
    # 192.0.2.1 (TEST-NET-1) never answers: the probe must give up after connect_timeout.
    conf = _write(tmp_path, {"default": "mysql://u:secret-x@192.0.2.1:3306/test?connect_timeout=1"})
    proc = _run("-c", str(conf), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "pool db/default (mysql://u:***@192.0.2.1:3306/test): cannot connect" in proc.stdout
    assert "secret-x" not in proc.stdout + proc.stderr


def test_config_errors_exit_2(tmp_path, mysql_user):
    typo = _write(tmp_path, {"default": mysql_user.url(max_szie=4)})
    proc = _run("-c", str(typo), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "line 3: ConfigError: pool 'default': unknown option 'max_szie'" in proc.stdout
    assert mysql_user.password not in proc.stdout + proc.stderr
    code, report = _json("-c", str(typo), cwd=tmp_path)
    assert code == 2 and report["ok"] is False and "max_szie" in report["errors"][0]

    broken = tmp_path / "broken.conf.py"
    broken.write_text(f"DB = {mysql_user.url()!r}\nworkers = (\n")
    proc = _run("-c", str(broken), cwd=tmp_path)
    assert proc.returncode == 2 and "SyntaxError" in proc.stdout
    assert mysql_user.password not in proc.stdout + proc.stderr  # no source line echoed

    bad_value = _write(tmp_path, {"default": mysql_user.url()}, workers="'many'")  # type: ignore[arg-type]
    proc = _run("-c", str(bad_value), cwd=tmp_path)
    assert proc.returncode == 2 and "invalid value for gunicorn setting 'workers'" in proc.stdout

    proc = _run("-c", str(tmp_path / "missing.conf.py"), cwd=tmp_path)
    assert proc.returncode == 2 and "doesn't exist" in proc.stdout

    empty = tmp_path / "empty.conf.py"
    empty.write_text("workers = 2\n")
    proc = _run("-c", str(empty), cwd=tmp_path)
    assert proc.returncode == 2 and "no pool service found" in proc.stdout

    proc = _run("-c", str(empty), "--hosts", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--hosts" in proc.stderr


def test_default_config_file_and_warnings(tmp_path, mysql_user):
    # The config imports a module from the working directory, as gunicorn allows.
    (tmp_path / "dbsettings.py").write_text(f"URL = {mysql_user.url()!r}\n")
    extra = "import dbsettings\ngunicorn_pool.register(gunicorn_pool.DatabasePool(dbsettings.URL), name='db2')\n"
    _write(tmp_path, {"default": mysql_user.url()}, worker="sync", extra=extra + "wokers = 8")
    proc = _run(cwd=tmp_path, module=False)  # ./gunicorn.conf.py, as gunicorn
    assert proc.returncode == 0, proc.stdout
    assert "'wokers' is not a gunicorn setting and is ignored; did you mean 'workers'?" in proc.stdout
    assert "gunicorn will not open these pools" in proc.stdout
    assert "2 x gunicorn.workers.sync.SyncWorker (sync)" in proc.stdout
    assert "db2      default" in proc.stdout


def test_pools_registered_by_the_app(tmp_path, mysql_user):
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(f"""
        import gunicorn_pool

        class App:
            def __init__(self):
                self.db = gunicorn_pool.DatabasePool({{"main": {mysql_user.url()!r}}}, name="appdb")

            def __call__(self, environ, start_response):
                return []

        app = App()
        """)
    )
    conf = tmp_path / "plain.conf.py"
    conf.write_text("worker_class = 'gunicorn_pool.Worker'\nworkers = 3\n")
    code, report = _json("-c", str(conf), "--app", "myapp:app", cwd=tmp_path)
    assert code == 0, report
    (pool,) = report["pools"]
    assert (pool["service"], pool["pool"], pool["per_host"]) == ("app.db", "main", 3)
    code, report = _json("-c", str(conf), "--app", "nomodule:app", cwd=tmp_path)
    assert code == 2 and "cannot import app 'nomodule:app'" in report["errors"][0]


def test_sqlalchemy_engines_are_budgeted_like_database_pools(tmp_path, mysql_user):
    """EnginePool's engines and a Flask-SQLAlchemy app's adopted engines count against their
    servers (they were 'not a DatabasePool: not checked')."""
    (tmp_path / "saapp.py").write_text(
        textwrap.dedent(f"""
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        import gunicorn_pool.sqlalchemy

        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = {mysql_user.url().replace("mysql://", "mysql+pymysql://")!r}
        app.config["SQLALCHEMY_BINDS"] = {{"local": "sqlite:///{tmp_path}/binds.db"}}
        db = SQLAlchemy(app)
        gunicorn_pool.sqlalchemy.adopt(db, max_size=3)
        """)
    )
    conf = tmp_path / "sa.conf.py"
    conf.write_text(
        "import gunicorn_pool.sqlalchemy\n"
        f"gunicorn_pool.register(gunicorn_pool.sqlalchemy.EnginePool({{'orm': {mysql_user.url()!r}}}), name='orm')\n"
        "worker_class = 'gunicorn_pool.Worker'\nworkers = 3\n"
    )
    code, report = _json("-c", str(conf), "--app", "saapp:app", cwd=tmp_path)
    assert code == 0, report
    rows = {(p["service"], p["pool"]): p for p in report["pools"]}
    assert rows[("orm", "orm")]["per_host"] == 3, rows  # 3 sync workers x 1
    assert rows[("sqlalchemy", "default")]["per_host"] == 9, rows  # adopt(max_size=3)
    assert rows[("sqlalchemy", "local")]["adapter"] == "sqlite", rows
    assert not [w for w in report.get("warnings", []) if "not checked" in w], report
    assert mysql_user.password not in json.dumps(report)


# -- an app without a gunicorn.conf.py: gunicorn's own flags ------------------------------------------

APP_WITH_POOLS = """
import gunicorn_pool

gunicorn_pool.register(gunicorn_pool.DatabasePool({{"default": {url!r}}}), name="db")  # app code registers one


class App:
    def __init__(self):
        self.reports = gunicorn_pool.DatabasePool({{"reports": {small!r}}}, name="held")

    def __call__(self, environ, start_response):
        return []


app = App()  # holds another: the app walk finds it
"""


def test_an_app_without_a_config_file_is_checked_with_gunicorns_flags(tmp_path, mysql_user):
    """`gunicorn-pool check --app mod:app -w 4 -k ...` with no gunicorn.conf.py (most apps have none)
    ended in "no gunicorn config file: pass -c gunicorn.conf.py", exit 2. The app is imported as a
    worker imports it, its services found as a worker finds them, sized by the flags."""
    app_dir = tmp_path / "src"
    app_dir.mkdir()
    (app_dir / "myapp.py").write_text(APP_WITH_POOLS.format(url=mysql_user.url(), small=mysql_user.url(max_size=2)))
    flags = ["--app", "myapp:app", "-w", "4", "-k", "gunicorn_pool.ThreadWorker", "--threads", "3"]
    proc = _run(*flags, "--chdir", str(app_dir), cwd=tmp_path, module=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("gunicorn-pool check: no config file (gunicorn's defaults and the flags given);"
                          " app: myapp:app")  # fmt: skip
    assert "workers: 4 x gunicorn_pool.workers.gthread.ThreadWorker (thread, 3 threads)" in out
    assert mysql_user.password not in out + proc.stderr and out.rstrip().endswith("OK: every server fits the peak")
    code, report = _json(*flags, cwd=app_dir)  # the working directory is importable, as for gunicorn
    assert code == 0, report
    assert report["config"] is None and report["app"] == "myapp:app"
    assert (report["plan"]["workers"], report["plan"]["kind"], report["plan"]["threads"]) == (4, "thread", 3)
    rows = {(p["service"], p["pool"]): (p["max_size"], p["per_host"]) for p in report["pools"]}
    assert rows == {("db", "default"): (3, 12), ("app.reports", "reports"): (2, 8)}, rows
    assert report["servers"][0]["needed"] == 2 * (12 + 8) and mysql_user.count() == 0

    proc = _run(cwd=tmp_path)  # neither a config file nor an app: said so
    assert proc.returncode == 2
    assert "error: no gunicorn config file and no app: pass -c gunicorn.conf.py, or --app module:app" in proc.stdout
    code, report = _json("--app", "myapp:app", "--chdir", str(tmp_path / "nowhere"), cwd=app_dir)
    assert code == 2 and "invalid value for gunicorn setting 'chdir'" in report["errors"][0], report


def test_a_flask_sqlalchemy_app_without_a_config_file_is_found_by_the_walk(tmp_path, mysql_user):
    (tmp_path / "plainsa.py").write_text(
        textwrap.dedent(f"""
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy

        app = Flask(__name__)  # no line of gunicorn_pool's
        app.config["SQLALCHEMY_DATABASE_URI"] = {mysql_user.url().replace("mysql://", "mysql+pymysql://")!r}
        db = SQLAlchemy(app)
        """)
    )
    code, report = _json("--app", "plainsa:app", "-w", "3", "-k", "gunicorn_pool.GeventWorker", cwd=tmp_path)
    assert code == 0, report
    ((service, pool, max_size, per_host),) = [(p["service"], p["pool"], p["max_size"], p["per_host"])
                                              for p in report["pools"]]  # fmt: skip
    assert (pool, max_size, per_host) == ("default", 10, 30) and service.startswith("app."), report["pools"]
    assert mysql_user.password not in json.dumps(report)


def test_a_django_project_without_a_config_file_lists_its_pooled_aliases(tmp_path, mysql_user):
    from support import APPS, MYSQL_DB, MYSQL_HOST, MYSQL_PORT

    env = {"DJANGO_SETTINGS_MODULE": "djangoproj.settings", "GP_DJ_ENGINE": "ours", "GP_DJ_NAME": MYSQL_DB,
           "GP_DJ_USER": mysql_user.name, "GP_DJ_PASSWORD": mysql_user.password, "GP_DJ_HOST": MYSQL_HOST,
           "GP_DJ_PORT": str(MYSQL_PORT), "GP_DJ_POOL": json.dumps({"max_size": 4})}  # fmt: skip
    flags = ["--app", "djangoproj.wsgi:application", "--chdir", str(APPS), "-w", "3", "-k", "gunicorn_pool.Worker"]
    code, report = _json(*flags, cwd=tmp_path, env=env)
    assert code == 0, report
    rows = [(p["service"], p["pool"], p["max_size"], p["per_host"]) for p in report["pools"]]
    assert rows == [("django", "default", 4, 12)], rows
    assert report["servers"][0]["fits"] is True and mysql_user.password not in json.dumps(report)
