"""Helpers shared by the daemon and harness tests: federations on disk, peer groups, a capturing TCP relay."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2pgan.daemon.processes import PeerGroup, pid_alive
from p2pgan.harness import Federation, HarnessOptions, prepare


def federation(out: Path, peers: int, **options: Any) -> Federation:
    """A throw-away federation (certificates, roster, shards, configs) like the harness makes it."""
    opts = {"steps": 40, "dataset": "gaussians", "round_timeout_s": 2.0, "eval_interval": 0, "threads": 1, **options}
    return prepare(HarnessOptions(peers=peers, out=out, **opts))


@contextmanager
def running(fed: Federation, *, resume: bool = False) -> Iterator[PeerGroup]:
    """Start the federation's daemons; on exit every one of them is stopped and reaped (checked)."""
    group = PeerGroup(fed.specs(resume=resume))
    with group:
        yield group
    assert not [pid for pid in group.pids if pid_alive(pid)], "a peer process was left behind"


def wait_for_text(path: Path, text: str, timeout_s: float, interval_s: float = 0.1, *, times: int = 1,
                  process: subprocess.Popen[Any] | None = None) -> None:
    """Wait until ``text`` appears ``times`` times in the file at ``path`` (a log another process writes, also
    one appended to across restarts); with ``process``, fail at once if that process exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    ticker = threading.Event()  # never set: paces the polling of the file
    while (path.read_text(errors="replace") if path.exists() else "").count(text) < times:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{text!r} not yet {times}x in {path}, and its process exited "
                                 f"(rc {process.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} did not appear {times}x in {path} within {timeout_s} s")
        ticker.wait(interval_s)


class CaptureRelay:
    """A TCP relay in front of a server that keeps a copy of every byte passing in either direction.

    Real sockets on loopback; used to look at what peers really put on the wire (insecure mode, so the
    gRPC frames are readable). A context manager: closes its listener and connections on exit.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self.listener]
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                self.captured += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def snapshot(self) -> bytes:
        with self._lock:
            return bytes(self.captured)

    def __enter__(self) -> CaptureRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:  # shutdown wakes threads blocked in accept() / recv() on Linux; close alone may not
            for op in (lambda: s.shutdown(socket.SHUT_RDWR), s.close):
                try:
                    op()
                except OSError:
                    pass
        self._accept.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)
