"""Private memory and imported modules of one gunicorn worker, stock against ours.

For each variant (rows: bench/_worker.py) a fresh ``gunicorn -w 1`` serves
``--requests`` requests one after another (one TCP connection each); then the
worker's ``/proc/<pid>/smaps_rollup`` is read: private memory
(``Private_Clean + Private_Dirty``: what this worker alone holds, the pages it
wrote or mapped since the fork) and ``Rss``. The worker also writes its
``sys.modules`` after the last request (a ``post_request`` hook in
bench/apps/gunicorn_memory.conf.py), so the tables give the number of
modules it imported and the modules ours imports that its stock twin does
not, the list to read when cutting imports. ``--why`` adds, for each of
those, the chain of imports that brought it in (from a second worker of the
ours side run with ``PYTHONPROFILEIMPORTTIME=1``; master and worker alike,
since the worker inherits the master's modules).

    python bench/memory.py [--requests 800] [--rounds 3] [--only hello,plain,django,flask-sa] [--base REF] [--why]

With ``--base REF`` the ours side also runs on that commit's package (a
temporary git worktree), side by side with this checkout's.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

from _common import preamble, spread, table
from _server import APPS
from _worker import ROWS, Logins, Variant, check_package, drive, package_at, pick_rows, server, wait_file, worker_pid

CONFIG = APPS / "gunicorn_memory.conf.py"
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( +)(\S+)\s*$", re.M)
FORK = "GPB-FORK"


class Reading(NamedTuple):
    private_kb: int
    rss_kb: int
    modules: list[str]


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0])
    return fields


def measure(variant: Variant, env: dict[str, str], package: Optional[Path], requests: int, ours: bool,
            import_log: bool = False) -> tuple[Reading, str]:
    """One fresh worker of *variant*: its reading after *requests* requests, and (with *import_log*) its
    server log, which then holds the master's and the worker's ``-X importtime`` lines."""
    with tempfile.TemporaryDirectory(prefix="gpb_mem_") as tmp:
        out = Path(tmp) / "modules"
        env = dict(env, GPB_MODULES_AT=str(requests), GPB_MODULES_FILE=str(out))
        if import_log:
            env["PYTHONPROFILEIMPORTTIME"] = "1"
        srv = server(variant, env, package, config=CONFIG)
        if ours:
            check_package(srv, package)
        srv.start()
        try:
            pid = worker_pid(srv, timeout=120)
            drive(srv.port, requests, timeout=30)
            path = Path(f"{out}.{pid}")
            if not wait_file(path, 30):
                raise RuntimeError(f"the worker wrote no module list:\n{srv.text()[-2000:]}")
            fields = smaps_rollup(pid)
            log = srv.text() if import_log else ""
        finally:
            srv.stop()
        lines = path.read_text().splitlines()
    where = lines[1].split(" ", 1)[1]
    if ours and str((package or Path(__file__).resolve().parent.parent).resolve()) not in where:
        raise RuntimeError(f"the worker ran gunicorn_pool from {where}")
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return Reading(private, fields["Rss"], lines[2:]), log


class Chain(NamedTuple):
    importers: list[str]  # innermost first
    in_worker: bool  # imported after the fork: private to each worker


def import_chains(log: str) -> dict[str, Chain]:
    """For each module in an ``-X importtime`` log, the modules that imported it, innermost first (a
    module's line follows those of the modules it imported; its importer is the next line indented less).
    ``importlib.import_module()`` is not logged: a chain ends there (gunicorn loading the worker class
    and the app, gunicorn_pool loading a connector or a worker class), and such a module has no line."""
    fork = log.find(FORK)
    found = list(IMPORT_LINE.finditer(log))
    entries = [((len(m.group(1)) - 1) // 2, m.group(2)) for m in found]
    parent: dict[int, int] = {}
    waiting: list[int] = []  # lines whose importer is not seen yet, deepest last
    for i, (level, _) in enumerate(entries):
        while waiting and entries[waiting[-1]][0] > level:
            parent[waiting.pop()] = i
        waiting.append(i)
    chains: dict[str, Chain] = {}
    for i, (_, name) in enumerate(entries):
        if name in chains:
            continue
        chain, j = [], parent.get(i)
        while j is not None:
            if entries[j][1] not in (name, *chain):  # a package importing its own submodule: shown once
                chain.append(entries[j][1])
            j = parent.get(j)
        chains[name] = Chain(chain, 0 <= fork < found[i].start())
    return chains


def mb(kb: list[float]) -> str:
    med, lo, hi = spread([k / 1024 for k in kb])
    return f"{med:.1f}" if len(kb) == 1 else f"{med:.1f} ({lo:.1f}–{hi:.1f})"


def delta(kb: list[float], base: list[float]) -> str:
    med, lo, hi = spread([(k - b) / 1024 for k, b in zip(kb, base)])
    return f"**{med:+.1f}**" if len(kb) == 1 else f"**{med:+.1f}** ({lo:+.1f}–{hi:+.1f})"


def extra_modules(ours: list[str], stock: list[str], apps: tuple[str, ...] = ()) -> list[str]:
    """Modules in *ours* and not in *stock*, sorted, leaving out the rows' own app modules (*apps*)."""
    return sorted(set(ours) - set(stock) - set(apps))


def compact(modules: list[str]) -> str:
    """Backquoted names; a package outside gunicorn_pool with more than 3 of its modules listed is one
    entry, ``pkg.*`` (N modules)."""
    groups: dict[str, list[str]] = {}
    for name in modules:
        groups.setdefault(name.split(".")[0], []).append(name)
    out = []
    for top, members in groups.items():
        if len(members) > 3 and top != "gunicorn_pool":
            out.append(f"`{top}.*` ({len(members)} modules)")
        else:
            out += [f"`{m}`" for m in members]
    return ", ".join(out) or "none"


def why_lines(extra: list[str], chains: dict[str, Chain]) -> list[str]:
    """One line per module: ``module (master|worker) ← importer ← ...``, up to the first module loaded by
    ``importlib.import_module()`` (which the log does not show: gunicorn_pool's package itself, gunicorn's
    worker class and app, gunicorn_pool's connectors and worker classes). *worker*: imported after the
    fork, so its memory is private to every worker; *master*: shared with the master until written."""
    out = []
    for name in extra:
        chain = chains.get(name)
        if chain is None:
            out.append(f"- `{name}`: loaded by `importlib.import_module()` (not in the import log)")
        else:
            top = "a module loaded by `importlib.import_module()`"
            where = "worker" if chain.in_worker else "master"
            out.append(f"- `{name}` ({where}) ← {' ← '.join([*(f'`{c}`' for c in chain.importers), top])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=800, help="requests before the reading")
    parser.add_argument("--rounds", type=int, default=3, help="fresh workers per variant (ranges if > 1)")
    parser.add_argument("--only", help=f"comma-separated rows among {', '.join(ROWS)}")
    parser.add_argument("--base", help="a git commit whose package runs the ours side too, side by side")
    parser.add_argument("--why", action="store_true", help="the import chain of each module ours adds")
    args = parser.parse_args()
    names = pick_rows(args.only)
    sides = ["stock", "ours"] + (["base"] if args.base else [])
    readings: dict[tuple[str, str], list[Reading]] = {(name, side): [] for name in names for side in sides}
    chains: dict[str, dict[str, Chain]] = {}
    with Logins() as logins, package_at(args.base) as base_root:
        for r in range(args.rounds):
            for name in names:
                for side in sides if r % 2 == 0 else reversed(sides):
                    variant = ROWS[name].stock if side == "stock" else ROWS[name].ours
                    env = logins.env(f"{name}/{side}", variant)
                    package = base_root if side == "base" else None
                    reading, _ = measure(variant, env, package, args.requests, side != "stock")
                    readings[(name, side)].append(reading)
                    print(f"# {name} {side} round {r + 1}: private {reading.private_kb} kB, rss {reading.rss_kb} kB, "
                          f"{len(reading.modules)} modules", file=sys.stderr, flush=True)  # fmt: skip
        if args.why:
            for name in names:
                env = logins.env(f"{name}/ours", ROWS[name].ours)
                chains[name] = import_chains(measure(ROWS[name].ours, env, None, args.requests, True, True)[1])
    at = f" at {args.base}" if args.base else ""
    heads = ["row", "private MiB, stock", "ours", "ours − stock"]
    heads += [f"ours{at}", f"ours{at} − stock"] if args.base else []
    heads += ["Rss MiB, stock", "ours"] + ([f"ours{at}"] if args.base else [])
    mem_rows, mod_rows, lists = [], [], []
    for name in names:
        private = {side: [float(x.private_kb) for x in readings[(name, side)]] for side in sides}
        rss = {side: [float(x.rss_kb) for x in readings[(name, side)]] for side in sides}
        cells = [ROWS[name].label, mb(private["stock"]), mb(private["ours"]), delta(private["ours"], private["stock"])]
        if args.base:
            cells += [mb(private["base"]), delta(private["base"], private["stock"])]
        cells += [mb(rss[side]) for side in sides]
        mem_rows.append(cells)
        modules = {side: readings[(name, side)][-1].modules for side in sides}
        counts = [str(len(modules[side])) for side in sides]
        apps = (ROWS[name].stock.module, ROWS[name].ours.module)
        extra = extra_modules(modules["ours"], modules["stock"], apps)
        mod_rows.append([ROWS[name].label, *counts, str(len(extra))])
        ours_pkg = [m for m in extra if m.split(".")[0] == "gunicorn_pool"]
        others = [m for m in extra if m.split(".")[0] != "gunicorn_pool"]
        lists.append(f"**{ROWS[name].label}**: ours imports {len(extra)} modules stock does not (the apps' own "
                     f"modules left out): {len(ours_pkg)} of gunicorn_pool ({compact(ours_pkg)}) and {len(others)} "
                     f"others ({compact(others)}).")  # fmt: skip
        if args.base:
            gone = extra_modules(modules["base"], modules["ours"])
            new = extra_modules(modules["ours"], modules["base"])
            lists.append(f"Ours against ours at {args.base}: {len(new)} more ({compact(new)}); {len(gone)} fewer "
                         f"({compact(gone)}).")  # fmt: skip
        if name in chains:
            lists.append("Imported by:\n\n" + "\n".join(why_lines(extra, chains[name])))
    rounds = f"{args.rounds} rounds (a fresh worker each), median (min–max)" if args.rounds > 1 else "1 round"
    print(preamble("Memory per worker",
                   f"`gunicorn -w 1`, {args.requests} sequential requests, then /proc/<worker>/smaps_rollup "
                   f"(private = Private_Clean + Private_Dirty) and the worker's sys.modules; {rounds}"))  # fmt: skip
    print(table(heads, mem_rows))
    print()
    print(table(["row", "modules, stock", "ours", *([f"ours{at}"] if args.base else []), "ours − stock (set)"],
                mod_rows))  # fmt: skip
    print()
    print("\n\n".join(lists))


if __name__ == "__main__":
    main()
