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
from p2pgan.netem import (
    EmulatedLinks, LatencyRelay, LinkSpec, echo_server, measure_added_rtt, measure_rate, parse_link, parse_target,
)

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


def test_rate_limited_relay_carries_a_bulk_transfer_at_the_set_rate() -> None:
    """A token bucket bounds the rate from above, so the achieved rate never exceeds the set one by more than
    the chunk-granularity slack; a loaded machine can only slow it down, and 10% below is still generous."""
    spec = parse_link("4mbit:2ms")
    m = measure_rate(spec, 400_000)  # 0.8 s at 4 Mbit/s
    assert m["rate_achieved_mbit_s"] <= 1.1 * 4.0
    assert m["rate_achieved_mbit_s"] >= 0.9 * 4.0
    assert m["elapsed_s"] >= spec.floor_s(400_000) * 0.99


def test_emulated_links_share_one_pacer_per_direction_of_a_pair() -> None:
    with echo_server() as port, EmulatedLinks({"a": port, "b": port, "c": port}, parse_link("50mbit:1ms")) as links:
        assert len({links.port(x, y) for x in "abc" for y in "abc" if x != y}) == 6
        with socket.create_connection(("127.0.0.1", links.port("a", "b")), timeout=10) as s:
            s.sendall(b"x" * 1000)
            assert _recv_exactly(s, 1000) == b"x" * 1000
        carried = links.carried()
        # a dialled b: a->b carried the request, the echo came back on b->a; nothing else moved
        assert carried["a->b"] == 1000 and carried["b->a"] == 1000
        assert all(v == 0 for k, v in carried.items() if k not in ("a->b", "b->a"))


@pytest.mark.parametrize(("text", "problem"), [
    ("10mbit", "RATE:DELAY"), ("10mb:5ms", "rate unit 'mb'"), ("10mbit:5m", "delay unit 'm'"),
    ("0mbit:5ms", "within 1kbit"), ("1mbit:20s", "at most"),
])
def test_bad_link_is_one_clear_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_link(text)
    assert "\n" not in str(info.value) and text in str(info.value)


def test_parse_link_reads_units() -> None:
    assert parse_link("100mbit:20ms") == LinkSpec(100e6, 0.02)
    assert parse_link("1gbit:5ms") == LinkSpec(1e9, 0.005)
    assert parse_link("1.5Mbit:0.5s").rate_bps == 1.5e6
    assert parse_link("10mbit:20ms").floor_s(1_250_000) == pytest.approx(1.02)
