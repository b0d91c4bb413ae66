"""The latency relay: bytes pass intact and in order, both ways; the delay is a lower bound on the RTT."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from p2pgan.errors import ConfigError
from p2pgan.netem import LatencyRelay, echo_server, measure_added_rtt, parse_target

pytestmark = pytest.mark.timeout(60)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        assert chunk, f"connection closed after {got} of {n} bytes"
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def test_relay_passes_bytes_intact_and_in_order_both_ways() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, odd size
    numbered = b"".join(i.to_bytes(4, "big") for i in range(20000))  # many small writes; order must hold
    with echo_server() as port, LatencyRelay(("127.0.0.1", port), 0.002) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as s:
            received: list[bytes] = []
            reader = threading.Thread(target=lambda: received.append(_recv_exactly(s, len(payload) + len(numbered))))
            reader.start()
            s.sendall(payload)
            for i in range(0, len(numbered), 4000):
                s.sendall(numbered[i : i + 4000])
            reader.join(30)
            assert not reader.is_alive()
        assert received[0] == payload + numbered


def test_relay_propagates_close_and_serves_several_connections() -> None:
    with echo_server() as port, LatencyRelay(("127.0.0.1", port), 0.0) as relay:
        for n in range(3):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
                s.sendall(b"hello %d" % n)
                s.shutdown(socket.SHUT_WR)  # half-close travels through the relay; the echo then closes
                data = b""
                while chunk := s.recv(100):
                    data += chunk
                assert data == b"hello %d" % n


def test_delay_is_a_lower_bound_on_the_added_round_trip() -> None:
    delay = 0.005
    m = measure_added_rtt(delay, samples=10)
    # the relay holds each direction for `delay`, so no round trip can be faster than 2 * delay
    assert m["relay_rtt_ms"] >= 2 * delay * 1e3
    assert m["direct_rtt_ms"] < m["relay_rtt_ms"]


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_target("localhost")
    with pytest.raises(ConfigError, match=">= 0"):
        LatencyRelay(("127.0.0.1", 1), -1.0)


def test_relay_command_reports_ports_and_stops_when_stdin_closes() -> None:
    with echo_server() as port:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pgan.netem", "relay", "--delay-ms", "1", "--target", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            info = json.loads(proc.stdout.readline())
            with socket.create_connection(("127.0.0.1", info["ports"][0]), timeout=10) as s:
                s.sendall(b"ping")
                assert _recv_exactly(s, 4) == b"ping"
            proc.stdin.close()
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
