"""``gunicorn-pool check``: will this gunicorn config fit the database servers?

::

    gunicorn-pool check [-c gunicorn.conf.py] [--hosts N] [--json] [--app module:app]
                        [-w N] [-k WORKER_CLASS] [--threads N] [--chdir DIR] [--pythonpath DIRS]
                        [--pgbouncer-pool-size N]
    gunicorn-pool check --app module:app -w 4 -k gunicorn_pool.ThreadWorker --threads 8
    python -m gunicorn_pool check ...

Loads the gunicorn config the way gunicorn does (the file, then
``GUNICORN_CMD_ARGS``, then ``-w/-k/--threads/--chdir/--pythonpath`` given
here, gunicorn's own flags), so the pools the file registers are built with the
sizes a worker would use. Without a config file (no ``-c``, no
``./gunicorn.conf.py``: most apps have none), gunicorn's defaults and those
flags make the config, and the app is required. The app (``--app``, else the
config's ``wsgi_app``) is imported as a worker imports it, from ``chdir`` and
``pythonpath``; its services are found as a worker finds them: registered,
entry points, a loaded Django project's pooled aliases, and the app walk (a
Flask-SQLAlchemy extension or an Engine it reaches). With
``DJANGO_SETTINGS_MODULE`` set, it loads the Django settings too and lists the
pooled aliases (``gunicorn_pool.django``) as service ``django``. For every pool it
prints the masked DSN and sizes, connects once (bounded by the pool's
``connect_timeout``) and reads the server's version, its connection limit and
current connections: MySQL's ``@@max_connections``, ``@@max_user_connections``
and ``Threads_connected``; PostgreSQL's ``max_connections``, the slots it
reserves (``superuser_reserved_connections`` and, from 16,
``reserved_connections``; none for a superuser login), the login's and the
database's ``CONNECTION LIMIT`` and the client backends in
``pg_stat_activity``. The budget per server is::

    sum over its pools of  workers x max_size  x 2 (SIGHUP: old and new workers overlap)  x hosts

and it fits when it is at most ``max_connections`` minus the reserved slots.
Read replicas (``replicas``) are servers of their own, each with its own
pools (``default.replica1``...): every row says whether it is a primary or a
replica, and the totals count the two apart.

Behind PgBouncer (``pgbouncer=true``) the workers are PgBouncer's clients: the
peak above must fit PgBouncer's ``max_client_conn``, and the database server
sees PgBouncer's server connections instead::

    (pool_size + reserve_pool) x (user, database) pairs  [x hosts when PgBouncer is on 127.0.0.1/localhost]

(a PgBouncer on the loopback is taken to be one per host, any other one shared
by every host). ``pool_size`` and ``reserve_pool`` of the pool's database and
``max_client_conn`` come from PgBouncer's admin console (``SHOW DATABASES``,
``SHOW CONFIG``), read with the pool's own login: list it in PgBouncer's
``stats_users``. When the console cannot be read, ``--pgbouncer-pool-size N``
gives ``pool_size + reserve_pool``; with neither, that server's budget is
unknown (a warning).

Exit codes: 0 everything fits; 1 a server is over budget or a pool cannot
connect; 2 the configuration is wrong (bad file, unknown option, no pool).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from typing import Any, Optional, Sequence

from .config import mask_dsn
from .connectors.pgcalls import CLIENT_BACKENDS_SQL  # no driver import: plain SQL text

__all__ = ["main"]

EXIT_OK, EXIT_BUDGET, EXIT_CONFIG = 0, 1, 2
_SERVERS = ("mysql", "postgresql")  # adapters with a server connection budget


class CheckConfigError(Exception):
    """The configuration cannot be loaded (exit code 2)."""


# -- loading the config like gunicorn -----------------------------------------------


def _load_gunicorn_config(path: Optional[str], overrides: dict[str, Any],
                          app: Optional[str] = None) -> tuple[Any, Optional[str], dict[str, Any]]:  # fmt: skip
    """Return (gunicorn Config, config path or None, the file's namespace). Without a config file
    (none given, none in the working directory) gunicorn's defaults are the config: allowed when
    *app* is named, as gunicorn runs one."""
    from gunicorn.app.base import Application
    from gunicorn.config import get_default_config_file

    class ConfigLoader(Application):  # type: ignore[misc]  # gunicorn is untyped
        """gunicorn's Application, minus argv parsing, printing and sys.exit."""

        def __init__(self) -> None:
            self.path = ""
            self.namespace: dict[str, Any] = {}
            super().__init__(usage=None, prog="gunicorn-pool")

        def do_load_config(self) -> None:
            self.load_default_config()
            self.load_config()
            validate = getattr(self.cfg, "validate", None)  # gunicorn >= 27
            if validate is not None:
                validate()

        def init(self, parser: Any, opts: Any, args: Any) -> None:
            return None

        def load(self) -> Any:
            raise NotImplementedError

        def load_config(self) -> None:
            self.chdir()  # as gunicorn: the working directory is importable from the config file
            env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
            location = path or env_args.config or get_default_config_file()
            if location:
                self.path = location
                self.namespace = self.load_config_from_file(location)
            elif not app:
                raise CheckConfigError(
                    "no gunicorn config file and no app: pass -c gunicorn.conf.py, or --app module:app"
                    " (with -w, -k, --threads as you pass them to gunicorn)"
                )
            for key, value in [*vars(env_args).items(), *overrides.items()]:
                if value is not None and key not in ("args", "config"):
                    try:
                        self.cfg.set(key.lower(), value)
                    except Exception as exc:
                        raise CheckConfigError(f"invalid value for gunicorn setting {key!r}: {exc}") from None
            self.chdir()  # the config's chdir, where the workers will run

        def load_config_from_module_name_or_filename(self, location: str) -> dict[str, Any]:
            # As gunicorn, but a bad value raises instead of printing it.
            if location.startswith("python:"):
                namespace = vars(importlib.import_module(location[len("python:") :]))
            else:
                namespace = self.get_config_from_filename(location.removeprefix("file:"))
            for key, value in namespace.items():
                if key in self.cfg.settings:
                    try:
                        self.cfg.set(key.lower(), value)
                    except Exception as exc:
                        raise CheckConfigError(f"invalid value for gunicorn setting {key!r}: {exc}") from None
            return namespace

        def get_config_from_filename(self, filename: str) -> dict[str, Any]:
            # As gunicorn, but the error is one line: a traceback would print
            # the file's source lines, passwords included.
            if not os.path.exists(filename):
                raise CheckConfigError(f"{filename!r} doesn't exist")
            from importlib.machinery import SourceFileLoader

            loader = SourceFileLoader("__config__", filename)
            spec = importlib.util.spec_from_file_location("__config__", filename, loader=loader)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["__config__"] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise CheckConfigError(f"{filename}{_where(exc, filename)}: {type(exc).__name__}: {exc}") from None
            return vars(module)

    try:
        loader = ConfigLoader()
    except CheckConfigError:
        raise
    except SystemExit as exc:  # argparse on a bad GUNICORN_CMD_ARGS
        raise CheckConfigError(f"bad GUNICORN_CMD_ARGS (exit {exc.code})") from None
    except Exception as exc:
        raise CheckConfigError(f"{type(exc).__name__}: {exc}") from None
    return loader.cfg, os.path.abspath(loader.path) if loader.path else None, loader.namespace


def _where(exc: BaseException, filename: str) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f", line {exc.lineno}"
    target = os.path.abspath(filename)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == target]
    return f", line {frames[-1].lineno}" if frames else ""


def _typo_warnings(namespace: dict[str, Any], settings: Any) -> list[str]:
    """Names in the file that gunicorn will ignore but look like a setting."""
    out = []
    for name in namespace:
        if name.startswith("_") or name in settings or name.upper() == name:
            continue
        close = difflib.get_close_matches(name, list(settings), n=1, cutoff=0.85)
        if close:
            out.append(f"{name!r} is not a gunicorn setting and is ignored; did you mean {close[0]!r}?")
    return out


# -- what the workers will run ---------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """The worker side of the budget."""

    worker_class: str
    kind: str
    workers: int
    threads: int
    pool_worker: bool


def _plan(cfg: Any) -> Plan:
    from .base import WorkerProfile, set_profile, worker_kind
    from .workers.base import PoolWorkerMixin
    from .workers.sync import Worker

    try:
        cls = cfg.worker_class
    except Exception as exc:
        raise CheckConfigError(f"worker_class {cfg.worker_class_str!r}: {type(exc).__name__}: {exc}") from None
    threads = max(1, int(cfg.threads or 1))
    if cls is Worker and threads > 1:
        from .workers.gthread import ThreadWorker

        cls = ThreadWorker  # what gunicorn_pool.Worker runs with threads > 1
    kind = worker_kind(cls)
    set_profile(WorkerProfile(kind=kind, threads=threads))  # before any pool size is resolved
    name = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else str(cfg.worker_class_str)
    pool_worker = isinstance(cls, type) and issubclass(cls, PoolWorkerMixin)
    return Plan(name, kind, max(1, int(cfg.workers or 1)), threads, pool_worker)


# -- pools and servers ---------------------------------------------------------------------


def _pools(services: list[tuple[str, Any]], plan: Plan, hosts: int) -> tuple[list[dict[str, Any]], list[str]]:
    from .base import current_profile
    from .database import DatabasePool
    from .database_async import AsyncDatabasePool

    pools, others = [], []
    for service_name, service in services:
        # An AsyncDatabasePool's configs are DatabasePool's: its servers are probed the same way
        # (with the synchronous driver: one connect, a few bounded reads).
        if isinstance(service, (DatabasePool, AsyncDatabasePool)):
            configs = service.configs
        elif callable(getattr(service, "pool_configs", None)):  # Django aliases, SQLAlchemy engines
            configs = service.pool_configs()
        else:
            others.append(f"service {service_name!r} ({type(service).__name__}) is not a DatabasePool: not checked")
            continue
        for key, cfg in configs.items():
            lo, hi = cfg.sizes(current_profile().default_sizes())
            row: dict[str, Any] = {
                "service": service_name, "pool": key, "adapter": cfg.adapter, "dsn": cfg.dsn,
                "role": f"replica of {cfg.primary}" if getattr(cfg, "primary", "") else "primary",
                "pgbouncer": bool(getattr(cfg, "pgbouncer", False)),
                "address": cfg.address, "user": cfg.user if cfg.adapter in _SERVERS else None,
                "database": cfg.database if cfg.adapter in _SERVERS else None,
                "min_size": lo, "max_size": hi,
            }  # fmt: skip
            if cfg.adapter in _SERVERS:
                per_host = plan.workers * hi
                row.update(per_host=per_host, sighup_peak=2 * per_host, total=2 * per_host * hosts)
            row["_cfg"] = cfg
            pools.append(row)
    return pools, others


def _probe(row: dict[str, Any]) -> dict[str, Any]:
    """Connect once with the pool's own settings; read what the budget needs (and, behind
    PgBouncer, what its admin console says)."""
    probe = _probe_server(row)
    if row["pgbouncer"] and probe["ok"]:
        probe["pgbouncer"] = _probe_pgbouncer(row["_cfg"])
    return probe


def _probe_pgbouncer(cfg: Any) -> dict[str, Any]:
    """PgBouncer's figures for *cfg*'s database, from its admin console with the pool's login
    (``SHOW DATABASES``: pool_size, reserve_pool; ``SHOW CONFIG``: max_client_conn)."""
    from .connectors import make_connector

    admin = dataclasses.replace(cfg, database="pgbouncer", init_command=None, session=(), replicas=())
    connector = make_connector(admin)
    try:
        raw = connector.connect()
    except Exception as exc:
        return {"ok": False, "error": mask_dsn(connector.describe_error(exc), cfg.password)}
    raw._gp_holder = None  # the pool's own use
    try:
        databases = _named_rows(raw, "SHOW DATABASES", cfg.connect_timeout, cfg.driver)
        config = {r["key"]: r["value"] for r in _named_rows(raw, "SHOW CONFIG", cfg.connect_timeout, cfg.driver)}
    except Exception as exc:
        return {"ok": False, "error": mask_dsn(connector.describe_error(exc), cfg.password)}
    finally:
        connector.close(raw)
    mine = next((r for r in databases if r.get("name") == cfg.database), None)
    pool_size = int(mine["pool_size"]) if mine and mine.get("pool_size") is not None else int(
        config.get("default_pool_size", 20))  # fmt: skip
    reserve = int(mine.get("reserve_pool") or 0) if mine else int(config.get("reserve_pool_size", 0))
    return {"ok": True, "pool_size": pool_size, "reserve_pool": reserve,
            "max_client_conn": int(config.get("max_client_conn", 0)) or None,
            "pool_mode": (mine or {}).get("pool_mode") or config.get("pool_mode")}  # fmt: skip


def _named_rows(raw: Any, sql: str, timeout: float, driver: Optional[str] = None) -> list[dict[str, Any]]:
    """*sql*'s rows as dicts (column name to value), bounded by *timeout*."""
    if driver == "psycopg2":
        from .connectors.psycopg2 import fetch as fetch2

        return fetch2(raw, sql, timeout, names=True)
    from .connectors.postgresql import _wait

    cursor = raw.cursor()
    try:
        with raw.lock:
            _wait(raw, cursor._execute_gen(sql), timeout, "query")
        names = [d.name for d in cursor.description or ()]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _probe_server(row: dict[str, Any]) -> dict[str, Any]:
    from .connectors import make_connector

    cfg = row["_cfg"]
    connector = make_connector(cfg)
    start = time.monotonic()
    try:
        raw = connector.connect()
    except Exception as exc:
        return {"ok": False, "error": mask_dsn(connector.describe_error(exc), cfg.password)}
    ms = (time.monotonic() - start) * 1000
    if cfg.adapter == "postgresql":
        return _probe_postgresql(connector, raw, cfg, ms)
    raw._read_timeout = raw._write_timeout = cfg.connect_timeout  # bound our queries too
    try:
        cur = raw.cursor()
        cur.execute("SELECT VERSION(), @@max_connections, @@max_user_connections")
        version, max_conn, max_user = cur.fetchone()
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST")
        (visible,) = cur.fetchone()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        found = cur.fetchone()
        now = int(found[1]) if found else int(visible)
    except Exception as exc:
        return {"ok": False, "error": mask_dsn(connector.describe_error(exc), cfg.password)}
    finally:
        connector.close(raw)
    return {
        "ok": True, "connect_ms": round(ms, 1), "version": version, "max_connections": int(max_conn),
        "max_user_connections": int(max_user), "connections_now": now, "processlist_visible": int(visible),
    }  # fmt: skip


def _probe_postgresql(connector: Any, raw: Any, cfg: Any, ms: float) -> dict[str, Any]:
    """What the budget needs from a PostgreSQL server, in one query bounded by ``connect_timeout``."""
    if cfg.driver == "psycopg2":
        from .connectors.psycopg2 import fetch
    else:
        from .connectors.postgresql import fetch  # type: ignore[assignment]

    raw._gp_holder = None  # the pool's own use
    try:
        rows = fetch(raw, _PG_LIMITS, cfg.connect_timeout)
        ((version, max_conn, su_reserved, reserved, now, role_limit, superuser, db_limit),) = rows
    except Exception as exc:
        return {"ok": False, "error": mask_dsn(connector.describe_error(exc), cfg.password)}
    finally:
        connector.close(raw)
    return {
        "ok": True, "connect_ms": round(ms, 1), "version": f"PostgreSQL {version}", "max_connections": int(max_conn),
        # A superuser may use the slots kept for superusers (and those of reserved_connections).
        "reserved_connections": 0 if superuser else int(su_reserved) + int(reserved),
        # CONNECTION LIMIT of the login and of the database: -1 (none) is 0 here, as MySQL says it.
        "max_user_connections": max(0, int(role_limit)), "database_connection_limit": max(0, int(db_limit)),
        "connections_now": int(now),
    }  # fmt: skip


_PG_LIMITS = f"""
SELECT current_setting('server_version'),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       {CLIENT_BACKENDS_SQL},
       (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       (SELECT datconnlimit FROM pg_database WHERE datname = current_database())
"""


def _servers(pools: list[dict[str, Any]], hosts: int = 1,
             pgbouncer_pool_size: Optional[int] = None) -> list[dict[str, Any]]:  # fmt: skip
    servers: dict[str, dict[str, Any]] = {}
    for row in pools:
        if row["adapter"] not in _SERVERS:
            continue
        srv = servers.setdefault(row["address"], {"address": row["address"], "adapter": row["adapter"], "pools": [],
                                                  "roles": [], "steady": 0, "needed": 0})  # fmt: skip
        srv["pools"].append(f"{row['service']}/{row['pool']}")
        role = "replica" if row["role"] != "primary" else "primary"
        if role not in srv["roles"]:
            srv["roles"].append(role)
        if row["pgbouncer"]:
            bouncer = srv.setdefault("pgbouncer", {"clients": 0, "pairs": []})
            bouncer["clients"] += row["total"]
            pair = [row["user"], row["database"]]
            if pair not in bouncer["pairs"]:
                bouncer["pairs"].append(pair)
            found = (row.get("connect") or {}).get("pgbouncer") or {}
            if found.get("ok"):
                bouncer.update({k: found[k] for k in ("pool_size", "reserve_pool", "max_client_conn", "pool_mode")})
            elif found and "admin_error" not in bouncer:
                bouncer["admin_error"] = found["error"]
        srv["steady"] += row["total"] // 2
        srv["needed"] += row["total"]
        probe = row["connect"]
        if probe["ok"] and "max_connections" not in srv:
            keys = ("version", "max_connections", "connections_now", "processlist_visible")
            srv.update({k: probe[k] for k in keys if k in probe})
        if probe["ok"] and "reserved_connections" in probe:
            # PostgreSQL: slots its logins cannot use (none for a superuser); any ordinary login's count
            srv["reserved_connections"] = max(srv.get("reserved_connections", 0), probe["reserved_connections"])
        if probe["ok"] and probe["max_user_connections"] > 0:
            limits = srv.setdefault("max_user_connections", {})
            limits[row["user"]] = probe["max_user_connections"]
        if probe["ok"] and probe.get("database_connection_limit", 0) > 0:
            srv.setdefault("database_connection_limit", {})[row["database"]] = probe["database_connection_limit"]
    for srv in servers.values():
        if "pgbouncer" in srv and not _pgbouncer_budget(srv, hosts, pgbouncer_pool_size):
            srv.update(spare=None, fits=None)
            continue
        if "max_connections" not in srv:
            srv.update(version=None, max_connections=None, connections_now=None, spare=None, fits=None)
            continue
        srv["spare"] = srv["max_connections"] - srv.get("reserved_connections", 0) - srv["needed"]
        srv["fits"] = srv["spare"] >= 0
        bouncer = srv.get("pgbouncer")
        if bouncer is not None:
            if bouncer.get("max_client_conn") is not None and bouncer["clients"] > bouncer["max_client_conn"]:
                srv["fits"] = False
            continue  # the login's and database's limits count server connections: PgBouncer's
        for user, limit in srv.get("max_user_connections", {}).items():
            wanted = sum(r["total"] for r in pools if r["address"] == srv["address"] and r["user"] == user)
            if wanted > limit:
                srv["fits"] = False
                srv.setdefault("over_user_limit", {})[user] = {"needed": wanted, "max_user_connections": limit}
        for database, limit in srv.get("database_connection_limit", {}).items():
            wanted = sum(r["total"] for r in pools if r["address"] == srv["address"] and r["database"] == database)
            if wanted > limit:
                srv["fits"] = False
                srv.setdefault("over_database_limit", {})[database] = {"needed": wanted, "connection_limit": limit}
    return list(servers.values())


def _pgbouncer_budget(srv: dict[str, Any], hosts: int, pool_size: Optional[int]) -> bool:
    """Replace *srv*'s client peak by PgBouncer's server connections (see the module docstring).
    False when PgBouncer's pool size is unknown."""
    bouncer = srv["pgbouncer"]
    per_pair = pool_size if pool_size is not None else None
    if per_pair is None and "pool_size" in bouncer:
        per_pair = bouncer["pool_size"] + bouncer.get("reserve_pool", 0)
    if per_pair is None:
        return False
    host = srv["address"].rsplit(":", 1)[0].strip("[]")
    copies = hosts if host in ("127.0.0.1", "localhost", "::1") else 1
    bouncer.update(server_connections_per_pair=per_pair, pgbouncers=copies)
    srv["steady"] = srv["needed"] = per_pair * len(bouncer["pairs"]) * copies
    return True


def _role(srv: dict[str, Any]) -> str:
    role = "+".join(srv["roles"])
    return f"{role} via pgbouncer" if "pgbouncer" in srv else role


# -- output ------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("-" if c is None else str(c)) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _render(report: dict[str, Any]) -> str:
    plan = report["plan"]
    if plan is None:  # the config did not load
        return "\n".join([*(f"error: {e}" for e in report["errors"]), "FAIL: configuration error"])
    source = report["config"] or "no config file (gunicorn's defaults and the flags given)"
    out = [
        f"gunicorn-pool check: {source}" + (f"; app: {report['app']}" if report.get("app") else ""),
        f"workers: {plan['workers']} x {plan['worker_class']} ({plan['kind']}"
        + (f", {plan['threads']} threads" if plan["kind"] == "thread" else "")
        + f"); hosts: {report['hosts']}",
        "",
    ]
    rows = []
    for p in report["pools"]:
        c = p.get("connect") or {}
        status = p.get("note") or (
            "sqlite: no server budget" if p["adapter"] == "sqlite"
            else "dbapi: not checked (any driver)" if p["adapter"] == "dbapi"
            else f"ok {c['connect_ms']} ms" if c.get("ok") else "FAILED"
        )  # fmt: skip
        rows.append([p["service"], p["pool"], p["role"], p["dsn"], p["min_size"], p["max_size"],
                     p.get("per_host"), p.get("sighup_peak"), status])  # fmt: skip
    out.append(_table(["SERVICE", "POOL", "ROLE", "DSN", "MIN", "MAX", "PER HOST", "SIGHUP PEAK", "CONNECT"], rows))
    if report["servers"]:
        rows = []
        for s in report["servers"]:
            verdict = "unknown" if s["fits"] is None else "fits" if s["fits"] else "OVER BUDGET"
            rows.append([s["address"], _role(s), s["version"], s["max_connections"], s.get("reserved_connections"),
                         s["connections_now"], s["steady"], s["needed"], s["spare"], verdict])  # fmt: skip
        heads = ["SERVER", "ROLE", "VERSION", "MAX_CONNECTIONS", "RESERVED", "NOW", "STEADY", "PEAK", "SPARE",
                 "VERDICT"]  # fmt: skip
        out += ["", _table(heads, rows)]
        for role, total in report["totals"].items():
            out.append(f"{role}: {total['servers']} server(s), peak {total['needed']} connection(s)")
        for s in report["servers"]:
            b = s.get("pgbouncer")
            if b is None:
                continue
            if "server_connections_per_pair" not in b:
                out.append(f"PgBouncer {s['address']}: pool size unknown ({b.get('admin_error', 'not read')}):"
                           " pass --pgbouncer-pool-size or list the login in its stats_users")  # fmt: skip
                continue
            limit = f" (max_client_conn {b['max_client_conn']})" if b.get("max_client_conn") else ""
            out.append(f"PgBouncer {s['address']}: clients peak {b['clients']}{limit};"
                       f" server connections {b['server_connections_per_pair']} x {len(b['pairs'])} pair(s)"
                       f" x {b['pgbouncers']} PgBouncer(s) = {s['needed']}")  # fmt: skip
        out.append(f"PEAK = workers x max_size, x2 while SIGHUP runs old and new workers, x {report['hosts']} host(s)")
        out.append("STEADY = PEAK without the SIGHUP overlap; SPARE = MAX_CONNECTIONS - RESERVED - PEAK")
        out.append("RESERVED = PostgreSQL's superuser_reserved_connections (+ reserved_connections) unless the login is"
                   " a superuser")  # fmt: skip
        out.append("NOW = every client of the server (MySQL Threads_connected, PostgreSQL client backends)")
    out.append("")
    out += [f"warning: {w}" for w in report["warnings"]]
    out += [f"error: {e}" for e in report["errors"]]
    out.append(
        {
            EXIT_OK: "OK: every server fits the peak",
            EXIT_BUDGET: "FAIL: over budget or unreachable",
            EXIT_CONFIG: "FAIL: configuration error",
        }[report["exit_code"]]  # fmt: skip
    )
    return "\n".join(out)


# -- the command ---------------------------------------------------------------------------


def check(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Run the check; return (exit code, report)."""
    from . import integrations

    report: dict[str, Any] = {"config": args.config, "app": args.app, "hosts": args.hosts, "plan": None, "pools": [],
                              "servers": [], "totals": {}, "warnings": [], "errors": []}  # fmt: skip
    overrides = {"workers": args.workers, "threads": args.threads, "worker_class": args.worker_class,
                 "chdir": args.chdir, "pythonpath": args.pythonpath}  # fmt: skip
    try:
        cfg, report["config"], namespace = _load_gunicorn_config(args.config, overrides, args.app)
        report["warnings"] += _typo_warnings(namespace, cfg.settings)
        plan = _plan(cfg)
        if os.environ.get("DJANGO_SETTINGS_MODULE"):
            _load_django_settings(cfg)
        report["app"] = args.app or getattr(cfg, "wsgi_app", None)  # gunicorn's own setting, as it reads it
        app = _import_app(report["app"], cfg) if report["app"] else None
        services = integrations.discover(app)
        if not services:
            raise CheckConfigError("no pool service found: register one in the config file (or pass --app)")
    except CheckConfigError as exc:
        report["errors"].append(mask_dsn(str(exc)))
        return EXIT_CONFIG, report
    except Exception as exc:  # a service's own import/validation error
        report["errors"].append(mask_dsn(f"{type(exc).__name__}: {exc}"))
        return EXIT_CONFIG, report
    report["plan"] = dataclasses.asdict(plan)
    if not plan.pool_worker and getattr(cfg.post_worker_init, "__module__", "") == "gunicorn.config":
        report["warnings"].append(
            f"worker_class {plan.worker_class} is not a gunicorn_pool worker and post_worker_init is not set:"
            " gunicorn will not open these pools (use gunicorn_pool.Worker or gunicorn_pool.hooks)"
        )
    try:
        pools, others = _pools(services, plan, args.hosts)
    except Exception as exc:  # a service's configuration error (a Django alias's ImproperlyConfigured)
        report["errors"].append(mask_dsn(f"{type(exc).__name__}: {exc}"))
        return EXIT_CONFIG, report
    report["warnings"] += others
    for row in pools:
        if row["adapter"] in _SERVERS:
            row["connect"] = _probe(row)
            if not row["connect"]["ok"]:
                report["errors"].append(
                    f"pool {row['service']}/{row['pool']} ({row['dsn']}): cannot connect: {row['connect']['error']}"
                )
    report["servers"] = _servers(pools, args.hosts, args.pgbouncer_pool_size)
    report["totals"] = _totals(report["servers"])
    for srv in report["servers"]:
        if "pgbouncer" in srv and srv["fits"] is None:
            report["warnings"].append(
                f"PgBouncer {srv['address']}: its pool size is unknown, so the server budget behind it is:"
                " pass --pgbouncer-pool-size or list the pool's login in PgBouncer's stats_users"
            )
    for srv in report["servers"]:
        if srv["fits"] is False:
            report["errors"].append(_over_budget(srv))
    report["pools"] = [{k: v for k, v in row.items() if k != "_cfg"} for row in pools]
    return (EXIT_BUDGET if report["errors"] else EXIT_OK), report


def _totals(servers: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Servers and peak connections of primaries and of replicas, counted apart."""
    out: dict[str, dict[str, int]] = {}
    for srv in servers:
        for role in srv["roles"]:
            total = out.setdefault("primaries" if role == "primary" else "replicas", {"servers": 0, "needed": 0})
            total["servers"] += 1
            total["needed"] += srv["needed"]
    return out


def _over_budget(srv: dict[str, Any]) -> str:
    bouncer = srv.get("pgbouncer")
    if bouncer is not None and srv["spare"] >= 0:
        return (f"PgBouncer {srv['address']}: peak {bouncer['clients']} clients > max_client_conn"
                f" {bouncer['max_client_conn']}")  # fmt: skip
    if srv["spare"] < 0:
        reserved = srv.get("reserved_connections") or 0
        less = f" - {reserved} reserved" if reserved else ""
        limit = f"max_connections {srv['max_connections']}{less}"
        return f"server {srv['address']}: peak {srv['needed']} connections > {limit}"
    if "over_user_limit" in srv:
        return f"server {srv['address']}: over max_user_connections {srv['over_user_limit']}"
    return f"server {srv['address']}: over the database's connection limit {srv['over_database_limit']}"


def _load_django_settings(cfg: Any) -> None:
    """Load the settings named by DJANGO_SETTINGS_MODULE (importable from the config's chdir and
    pythonpath, as in a worker), so discovery finds the project's pooled aliases."""
    _add_paths(cfg)
    try:
        from django.conf import settings

        settings.DATABASES  # noqa: B018 - loads the settings module
    except Exception as exc:
        raise CheckConfigError(
            f"cannot load the Django settings {os.environ['DJANGO_SETTINGS_MODULE']!r}: {type(exc).__name__}: {exc}"
        ) from None


def _add_paths(cfg: Any) -> None:
    for path in [*(cfg.pythonpath or "").split(","), cfg.chdir]:
        if path and os.path.abspath(path) not in sys.path:
            sys.path.insert(0, os.path.abspath(path))


def _import_app(spec: str, cfg: Any) -> Any:
    from gunicorn import util

    _add_paths(cfg)
    try:
        return util.import_app(spec)
    except Exception as exc:
        raise CheckConfigError(f"cannot import app {spec!r}: {type(exc).__name__}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gunicorn-pool", description="gunicorn-pool tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "check",
        help="list pools, connect once to each, check the connection budget",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", help="gunicorn config file (default: ./gunicorn.conf.py, as gunicorn)")
    p.add_argument("--hosts", type=_positive, default=1, help="hosts running this config (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--app", help="module:app to import as a worker does (default: the config's wsgi_app), for"
                   " pools registered or held by the app; with it no config file is needed")  # fmt: skip
    p.add_argument("-w", "--workers", type=_positive, help="override the config's workers")
    p.add_argument("--threads", type=_positive, help="override the config's threads")
    p.add_argument("-k", "--worker-class", help="override the config's worker_class")
    p.add_argument("--chdir", help="override the config's chdir (where the app is imported from)")
    p.add_argument("--pythonpath", help="override the config's pythonpath (comma-separated directories)")
    p.add_argument("--pgbouncer-pool-size", type=_positive,
                   help="server connections PgBouncer opens per (user, database) pair: pool_size + reserve_pool"
                        " (default: read from its admin console)")  # fmt: skip
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gunicorn-pool`` console script."""
    args = _parser().parse_args(argv)
    code, report = check(args)
    report["exit_code"] = code
    report["ok"] = code == EXIT_OK
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(_render(report))
    return code
