"""A TCP proxy the fault tests control, running in threads of the test process.

``FaultProxy`` listens on a free loopback port and forwards to the test
MariaDB, or to any ``target=(host, port)`` (``FaultProxy(target=(PG_HOST,
PG_PORT))`` for PostgreSQL: it forwards bytes, whatever the protocol). Point a
pool at ``proxy.port`` and switch modes while a real gunicorn server runs::

    proxy = FaultProxy().start()
    proxy.refuse()      # listener closed: new connects get ECONNREFUSED
    proxy.cut()         # reset every forwarded connection now
    proxy.blackhole()   # accept, never answer, never forward
    proxy.stall()       # connections open now stop forwarding (a hung server); new ones flow
    proxy.forward()     # back to normal (rebinds the same port)
    proxy.stop()        # close everything, join every thread

Every socket wait is bounded (``_TICK``), every thread is a daemon and is
joined on ``stop()``.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Optional

from support import MYSQL_HOST, MYSQL_PORT, free_port

__all__ = ["FaultProxy"]

_TICK = 0.1  # seconds any proxy thread blocks at most before re-checking its state
_JOIN = 2.0  # seconds stop() waits for each thread


def _reset(sock: socket.socket) -> None:
    """Close *sock* with a TCP RST (SO_LINGER 0), as a dropped network would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One forwarded connection: client <-> upstream, pumped by one thread."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.done = threading.Event()
        self.stalled = threading.Event()  # nothing is forwarded any more, both ways
        self.parked = threading.Event()  # the pump saw ``stalled``: it forwards nothing from now on
        self.thread = threading.Thread(target=self._pump, name="proxy-pump", daemon=True)

    def _pump(self) -> None:
        socks = [self.client, self.upstream]
        try:
            while not self.done.is_set():
                if self.stalled.is_set():
                    self.parked.set()
                    self.done.wait(_TICK)
                    continue
                readable, _, _ = select.select(socks, [], [], _TICK)
                if self.stalled.is_set():
                    continue  # stalled while waiting: what arrived is never forwarded
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    dst = self.upstream if src is self.client else self.client
                    dst.sendall(data)
        except (OSError, ValueError):
            return  # reset by cut(), or a peer went away
        finally:
            self.done.set()
            _reset(self.client)
            _reset(self.upstream)

    def cut(self) -> None:
        self.done.set()
        _reset(self.client)
        _reset(self.upstream)


class FaultProxy:
    """A controllable TCP proxy to the test MySQL server, or to *target* (see the module doc)."""

    def __init__(self, target: tuple[str, int] = (MYSQL_HOST, MYSQL_PORT), port: int = 0) -> None:
        self.target = target
        self.port = port or free_port()
        self.mode = "forward"
        self.accepted = 0  # connections accepted in any mode
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._pairs: list[_Pair] = []
        self._held: list[socket.socket] = []  # blackholed client sockets
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(_JOIN)
        self._close_listener()
        self.cut()
        self._release_held()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- modes ---------------------------------------------------------------------

    def forward(self) -> None:
        """Forward new connections to the server (rebinding the port if refused)."""
        with self._lock:
            self.mode = "forward"
        self._release_held()
        self._listen()

    def refuse(self) -> None:
        """Close the listener: new connects are refused. Open ones keep flowing."""
        with self._lock:
            self.mode = "refuse"
        self._close_listener()

    def blackhole(self) -> None:
        """Accept new connections but never answer or forward (a hung server)."""
        with self._lock:
            self.mode = "blackhole"
        self._listen()

    def stall(self) -> int:
        """Stop forwarding on every connection open now (a server that hangs mid-session); new
        connections still flow. Return how many were stalled; ``cut()`` ends them."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.stalled.set()
        for pair in pairs:
            pair.parked.wait(_JOIN)  # from here on the pump forwards nothing
        return len(pairs)

    def cut(self) -> int:
        """Reset every forwarded connection now; return how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.cut()
        for pair in pairs:
            pair.thread.join(_JOIN)
        return len(pairs)

    def open_pairs(self) -> int:
        """Forwarded connections currently alive."""
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.done.is_set()]
            return len(self._pairs)

    # -- internals -----------------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            sock.settimeout(_TICK)
            self._listener = sock

    def _close_listener(self) -> None:
        with self._lock:
            sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # stop listening now, even mid-accept() in the other thread
            except OSError:
                pass
            sock.close()

    def _release_held(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopping.wait(_TICK)
                continue
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue  # tick, or the listener was closed by refuse()
            client.settimeout(None)
            self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
            self.accepted += 1
        if mode == "blackhole":
            with self._lock:
                self._held.append(client)
            return
        if mode != "forward":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2.0)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs.append(pair)
        pair.thread.start()
