"""The import layers of gunicorn_pool: every module imports only from layers below its own.

The table is the one drawn in docs/lifecycle.md ("Layers"). Imports inside
functions count; imports under ``if TYPE_CHECKING:`` do not (they never run).
A module missing from the table fails the test: a new module is placed on
purpose, not by accident.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gunicorn_pool"

#: Bottom first. Each entry is one layer; a tuple inside a layer lists siblings that must not
#: import each other (``|`` in the docs); other modules of one layer may.
LAYERS: list[list[object]] = [
    ["errors", "stats", "options", "slot", "_frames"],  # L0 leaves: stdlib only
    ["core", "_concurrency", "leaks"],  # L1 core: what the pool owns and the layers above plug into
    ["connectors"],  # L2 drivers
    [("pool", "pool_async")],  # L3 front ends (sync/gevent | asyncio)
    ["config", "redis_config", "base"],  # L4 config, worker profile, service contract
    ["service", "service_async", "database", "database_async", "redis", "redis_async", "replicas", "budget",
     "registry"],  # L5 services
    ["request", "wsgi", "asgi"],  # L6 requests
    [("sqlalchemy", "django")],  # L7 integrations
    ["integrations", "lifecycle", "warmup", "metrics", "otel", "hooks", "workers", "cli", "__init__", "__main__"],
]

LAYER: dict[str, int] = {}
INDEPENDENT: dict[str, set[str]] = {}
for number, layer in enumerate(LAYERS):
    for entry in layer:
        names = entry if isinstance(entry, tuple) else (entry,)
        for name in names:
            LAYER[str(name)] = number
            INDEPENDENT[str(name)] = set(map(str, names)) - {str(name)} if isinstance(entry, tuple) else set()


def _component(relative: Path) -> str:
    """``connectors/mysql.py`` -> ``connectors``; ``pool.py`` -> ``pool``; ``__init__.py`` -> ``__init__``."""
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _resolve(package: Path, importer: Path, node: ast.ImportFrom) -> list[str]:
    """The gunicorn_pool components a ``from ... import ...`` statement of *importer* reaches."""
    if node.level == 0:
        module = node.module or ""
        if module != "gunicorn_pool" and not module.startswith("gunicorn_pool."):
            return []
        parts = module.split(".")[1:]
    else:
        base = importer.parent.relative_to(package).parts
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        parts = [*base, *(node.module.split(".") if node.module else [])]
    if parts:
        return [parts[0]]
    # "from . import x" in the package itself: a submodule, or an attribute of __init__.
    out = []
    for alias in node.names:
        target = package / alias.name
        out.append(alias.name if target.with_suffix(".py").exists() or target.is_dir() else "__init__")
    return out


def _runtime_imports(tree: ast.Module) -> list[ast.AST]:
    """Import statements that can run (not those under ``if TYPE_CHECKING:``)."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _edges() -> list[tuple[str, str, str]]:
    return _edges_of(PACKAGE)


@functools.cache
def _edges_of(package: Path) -> list[tuple[str, str, str]]:
    """(importer, imported, where) for every runtime import between components of *package*."""
    edges = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        source = _component(relative)
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(package, path, node)
            else:
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("gunicorn_pool.")]
            for target in targets:
                if target != source:
                    edges.append((source, target, f"{relative}:{node.lineno}"))
    return edges


def test_every_module_has_a_layer():
    components = {_component(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    missing = components - set(LAYER)
    assert not missing, f"place these in tests/test_layers.py and docs/lifecycle.md: {missing}"


@pytest.mark.parametrize("source", sorted({_component(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}))
def test_imports_go_down_only(source):
    wrong = [
        f"{where}: {source} (L{LAYER[source]}) imports {target} (L{LAYER.get(target, '?')})"
        for src, target, where in _edges()
        if src == source
        and (target not in LAYER or LAYER[target] > LAYER[source] or target in INDEPENDENT[source])
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an import of the request layer from the pool core is reported."""
    fake = tmp_path / "gunicorn_pool"
    fake.mkdir()
    (fake / "pool.py").write_text("def f():\n    from .request import current\n")
    (fake / "request.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert ("pool", "request", "pool.py:2") in _edges()


@pytest.mark.parametrize(("modules", "absent"), [
    # A WSGI worker's own imports: service.py once imported pool_async, which loaded asyncio (31
    # modules) in every WSGI master, held privately by each worker (bench/memory.py).
    ("gunicorn_pool.database, gunicorn_pool.workers.sync, gunicorn_pool.lifecycle, gunicorn_pool.wsgi", "asyncio"),
    # Adopted engines on MySQL: the psycopg2 connection class is built on a psycopg2 engine's first
    # connect, not when gunicorn_pool.sqlalchemy is imported (psycopg2 and libpq: ~2.6 MiB a worker).
    ("gunicorn_pool.sqlalchemy", "psycopg2"),
])  # fmt: skip
def test_a_worker_imports_only_what_its_pools_need(modules, absent):
    import subprocess
    import sys

    code = f"import sys, {modules}; print({absent!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False", f"{absent} imported by {modules}"
