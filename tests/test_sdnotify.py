"""systemd readiness: a real daemon tells a real NOTIFY_SOCKET READY=1 once its health is SERVING,
STOPPING=1 when it leaves."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import federation

from deadlines import scaled
from p2pgan import sdnotify
from p2pgan.commands.status import daemon_status
from p2pgan.daemon.processes import PeerGroup, pid_alive

pytestmark = pytest.mark.timeout(240)

WAIT_S = scaled(120.0)  # bounds a hang


@pytest.fixture()
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket as systemd makes it (a short path: sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="sd-")
    path = str(Path(folder) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)
        Path(folder).rmdir()


def _fields(sock: socket.socket, timeout_s: float) -> list[str]:
    sock.settimeout(timeout_s)
    return sock.recv(4096).decode().split("\n")


def test_notify_sends_one_datagram_and_is_silent_without_systemd(notify_socket: tuple[socket.socket, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.delenv(sdnotify.NOTIFY_SOCKET_ENV, raising=False)
    assert sdnotify.notify("READY=1") is False  # not started by systemd: nobody to tell
    monkeypatch.setenv(sdnotify.NOTIFY_SOCKET_ENV, path)
    assert sdnotify.notify("READY=1", "STATUS=serving") is True
    assert _fields(sock, WAIT_S) == ["READY=1", "STATUS=serving"]
    monkeypatch.setenv(sdnotify.NOTIFY_SOCKET_ENV, path + ".gone")
    assert sdnotify.notify("READY=1") is False  # a socket that is not there is logged, never raised


def _health(config: Path) -> str:
    """The daemon's health answer once its server is up (polled with a pause: it is another process)."""
    pause = threading.Event()  # never set: paces the polling
    deadline = threading.Event()
    timer = threading.Timer(WAIT_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            health = daemon_status(config, timeout=5.0)["health"]
            if health != "UNREACHABLE":
                return str(health)
            pause.wait(0.2)
    finally:
        timer.cancel()
    raise AssertionError(f"{config}: no health answer within {WAIT_S} s")


def test_daemon_is_ready_for_systemd_when_its_health_turns_serving(tmp_path: Path,
                                                                   notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    fed = federation(tmp_path, 2, steps=100_000)
    specs = fed.specs()
    first = PeerGroup(specs[:1], env={sdnotify.NOTIFY_SOCKET_ENV: path})
    second = PeerGroup(specs[1:])
    with first:
        assert _health(fed.configs["peer0"]) == "NOT_SERVING"  # waiting for peer1: not ready
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)  # and systemd has not been told otherwise
        with second:
            fields = _fields(sock, WAIT_S)
            assert "READY=1" in fields and "STATUS=serving" in fields
            assert daemon_status(fed.configs["peer0"])["health"] == "SERVING"
        pids = first.pids
    seen: list[str] = []
    while "STOPPING=1" not in seen:  # SIGTERM: the daemon says it is leaving
        seen += _fields(sock, WAIT_S)
    assert "READY=1" not in seen
    assert not [pid for pid in pids if pid_alive(pid)]
