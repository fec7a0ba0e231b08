"""Run Django's own test suite (a subset: backends, transactions, ...) against gunicorn_pool.django.mysql.

Django's wheel ships no tests; its source distribution does. This script
takes an extracted source tree of the *installed* Django version (``--src``),
or downloads that version's sdist with ``pip download`` into a temporary
directory, and runs ``tests/runtests.py`` there with a settings module whose
``default`` and ``other`` aliases use the backend under test on the test
MariaDB (GP_MYSQL_* as the tests). A dedicated login and dedicated database
names (``gpdj_<hex>_*``) are created for the run and dropped after it.

``--engine stock`` runs the same labels on Django's own MySQL backend on
PyMySQL (``pymysql.install_as_MySQLdb()``), to tell failures of the backend
from failures of PyMySQL under Django.

    python tests/scripts/django_suite.py [--engine ours|stock] [--src DIR] [labels ...]

Default labels: backends transactions transaction_hooks select_for_update
get_or_create. Prints Django's runner output and a last line
``N passed, N failed, N skipped`` (errors count as failed). Takes a few
minutes: not part of the pytest run.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from support import MYSQL_HOST, MYSQL_PORT, admin_connect  # noqa: E402

LABELS = ["backends", "transactions", "transaction_hooks", "select_for_update", "get_or_create"]
ENGINES = {"ours": "gunicorn_pool.django.mysql", "stock": "django.db.backends.mysql"}

SETTINGS = """
{prelude}
_base = {{"ENGINE": {engine!r}, "USER": {user!r}, "PASSWORD": {password!r}, "HOST": {host!r},
         "PORT": {port!r}, "OPTIONS": {options!r}}}
DATABASES = {{
    "default": dict(_base, NAME={prefix!r} + "a", TEST={{"NAME": {prefix!r} + "test_a"}}),
    "other": dict(_base, NAME={prefix!r} + "b", TEST={{"NAME": {prefix!r} + "test_b"}}),
}}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
"""


def django_source(src: str | None, workdir: Path) -> Path:
    """The extracted source tree of the installed Django version."""
    import django

    if src:
        return Path(src)
    version = django.get_version()
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q", "-d",
                    str(workdir), f"django=={version}"], check=True, timeout=600)  # fmt: skip
    archive = next(workdir.glob("django-*.tar.gz"))
    subprocess.run(["tar", "xzf", str(archive), "-C", str(workdir)], check=True, timeout=300)
    return next(p for p in workdir.iterdir() if p.is_dir() and p.name.lower().startswith("django-"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=tuple(ENGINES), default="ours")
    parser.add_argument("--src", help="an extracted Django source tree of the installed version")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for Django's runner")
    parser.add_argument("labels", nargs="*", default=LABELS)
    args = parser.parse_args()

    tag = secrets.token_hex(3)
    user, password, prefix = f"gpdj_{tag}", "pw-" + secrets.token_hex(8), f"gpdj_{tag}_"
    admin = admin_connect()
    with tempfile.TemporaryDirectory(prefix="gp_django_suite_") as tmp:
        work = Path(tmp)
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT ALL ON `{prefix.replace('_', chr(92) + '_')}%`.* TO '{user}'@'%'")
                for name in ("a", "b"):
                    cur.execute(f"CREATE DATABASE `{prefix}{name}`")
            src = django_source(args.src, work)
            prelude = "import pymysql\npymysql.install_as_MySQLdb()" if args.engine == "stock" else ""
            options = {"ssl_disabled": True} if args.engine == "stock" else {}
            (work / "gp_suite_settings.py").write_text(textwrap.dedent(SETTINGS.format(
                prelude=prelude, engine=ENGINES[args.engine], user=user, password=password, host=MYSQL_HOST,
                port=str(MYSQL_PORT), options=options, prefix=prefix)))  # fmt: skip
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(work)]))
            cmd = [sys.executable, "runtests.py", "--settings=gp_suite_settings", "--parallel=1", "--noinput",
                   "-v", "1", *args.labels]  # fmt: skip
            print(f"$ (cd {src / 'tests'} && {' '.join(cmd[1:])})  [engine {ENGINES[args.engine]}]", flush=True)
            proc = subprocess.run(cmd, cwd=src / "tests", env=env, capture_output=True, text=True,
                                  timeout=args.timeout)  # fmt: skip
            out = proc.stdout + proc.stderr
            print(out.replace(password, "***"))
        finally:
            with admin.cursor() as cur:
                cur.execute(f"SHOW DATABASES LIKE '{prefix.replace('_', chr(92) + '_')}%'")
                for (name,) in cur.fetchall():
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            admin.close()
    ran = re.search(r"Ran (\d+) tests?", out)
    summary = re.search(r"^(?:OK|FAILED) ?\(?(.*?)\)?$", out, re.M)
    counts = dict.fromkeys(("failures", "errors", "skipped", "expected failures"), 0)
    if summary:
        for part in summary.group(1).split(","):
            name, _, number = part.strip().rpartition("=")
            if name in counts and number.isdigit():
                counts[name] = int(number)
    total = int(ran.group(1)) if ran else 0
    failed = counts["failures"] + counts["errors"]
    passed = total - failed - counts["skipped"]
    print(f"{passed} passed, {failed} failed, {counts['skipped']} skipped")
    return 0 if ran and failed == 0 and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
