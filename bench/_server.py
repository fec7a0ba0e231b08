"""Real gunicorn masters for the benchmarks: started on a free loopback port, stopped by pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from _common import BENCH, ROOT

APPS = BENCH / "apps"
READY = re.compile(r"GPB-READY pid=(\d+) t=([\d.]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``gunicorn -c bench/apps/gunicorn.conf.py --chdir bench/apps <module>:app`` on 127.0.0.1."""

    def __init__(self, module: str, worker_class: str, workers: int, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = tempfile.NamedTemporaryFile(prefix=f"gpb_{module}_", suffix=".log", delete=False)
        self.args = [sys.executable, "-m", "gunicorn", "-c", str(APPS / "gunicorn.conf.py"),
                     "-b", f"127.0.0.1:{self.port}", "-w", str(workers), "-k", worker_class,
                     "--chdir", str(APPS), "--no-control-socket", *extra, f"{module}:app"]  # fmt: skip
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]), **env)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Server:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def ready_times(self) -> list[float]:
        """time.monotonic() of each worker's post_worker_init, in order."""
        return [float(m.group(2)) for m in READY.finditer(self.text())]

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until every worker ran post_worker_init; return the last one's time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = self.ready_times()
            if len(times) >= self.workers:
                return times[self.workers - 1]
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(f"gunicorn {' '.join(self.args[-1:])} not ready:\n{self.text()[-3000:]}")

    def children(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master, wait, then SIGKILL it and any worker left (by pid)."""
        if self.proc is None:
            return
        workers = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in workers:  # normally gone already; never leave a stray worker
            try:
                if self.args[-1].encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.log.close()
        os.unlink(self.log.name)
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
