"""What a relay really adds: round-trip time (ping-pong through it versus direct) and rate (a bulk transfer).

Results report these measured figures, not only the ones set (:func:`measure_added_rtt`, :func:`measure_rate`).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator

from p2pgan.netem.pacer import CHUNK_BYTES
from p2pgan.netem.relay import CONNECT_TIMEOUT_S, JOIN_TIMEOUT_S, LatencyRelay, close_listener, set_nodelay
from p2pgan.netem.spec import LinkSpec


@contextlib.contextmanager
def _tcp_server(serve_one: Callable[[socket.socket], None], *, nodelay: bool = False) -> Iterator[int]:
    """A TCP server on 127.0.0.1 (port yielded) running ``serve_one`` on each accepted connection in a thread
    of its own; on the way out it closes the listener and every connection and joins the acceptor."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if nodelay:
                set_nodelay(conn)
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1]
    finally:
        close_listener(server)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        acceptor.join(JOIN_TIMEOUT_S)


@contextlib.contextmanager
def sink_server() -> Iterator[tuple[int, list[float]]]:
    """A TCP server on 127.0.0.1 that reads every byte and, per connection, replies with one byte once the
    sender half-closes; yields (port, times): the monotonic time each connection's last byte arrived."""
    done: list[float] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(CHUNK_BYTES):
                pass
            done.append(time.monotonic())
            conn.sendall(b"k")
            conn.shutdown(socket.SHUT_WR)

    with _tcp_server(serve_one) as port:
        yield port, done


def measure_rate(spec: LinkSpec, nbytes: int) -> dict[str, float]:
    """Send ``nbytes`` through a relay of ``spec`` to a sink; the rate achieved (bits over the time from the
    first byte sent to the last byte received, less the one-way delay) beside the rate set."""
    payload = b"\0" * min(nbytes, CHUNK_BYTES)
    with sink_server() as (port, done), \
            LatencyRelay(("127.0.0.1", port), spec.delay_s, rate_bps=spec.rate_bps) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=CONNECT_TIMEOUT_S) as s:
            t0 = time.monotonic()
            left = nbytes
            while left > 0:
                s.sendall(payload[: min(left, len(payload))])
                left -= min(left, len(payload))
            s.shutdown(socket.SHUT_WR)
            if s.recv(1) != b"k" or not done:
                raise ConnectionError("the sink closed before it had read every byte")
            elapsed = done[0] - t0
    achieved = nbytes * 8 / max(elapsed - spec.delay_s, 1e-9)
    return {
        "link": str(spec),
        "bytes": nbytes,
        "rate_set_mbit_s": (spec.rate_bps or 0) / 1e6,
        "rate_achieved_mbit_s": achieved / 1e6,
        "elapsed_s": elapsed,
        "floor_s": spec.floor_s(nbytes),
    }


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 (port yielded) that echoes every byte back; for RTT measurements."""

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(CHUNK_BYTES):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    with _tcp_server(serve_one, nodelay=True) as port:
        yield port


def ping_pong_ms(port: int, samples: int, payload: int = 64) -> list[float]:
    """Round-trip times (ms) of ``samples`` ping-pongs of ``payload`` bytes to an echo at 127.0.0.1:port."""
    msg = b"x" * payload
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S) as s:
        set_nodelay(s)
        for _ in range(samples):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < payload:
                chunk = s.recv(payload - got)
                if not chunk:
                    raise ConnectionError("echo server closed the connection")
                got += len(chunk)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_added_rtt(delay_s: float, samples: int = 200, payload: int = 64) -> dict[str, float]:
    """Median round trip direct and through a relay with ``delay_s`` one-way delay, and their difference."""
    with echo_server() as port:
        direct = ping_pong_ms(port, samples, payload)
        with LatencyRelay(("127.0.0.1", port), delay_s) as relay:
            relayed = ping_pong_ms(relay.port, samples, payload)
    d, r = statistics.median(direct), statistics.median(relayed)
    return {
        "delay_ms": delay_s * 1e3,
        "samples": samples,
        "payload_bytes": payload,
        "direct_rtt_ms": d,
        "relay_rtt_ms": r,
        "added_rtt_ms": r - d,
        "relay_rtt_p90_ms": sorted(relayed)[int(0.9 * (len(relayed) - 1))],
    }
