"""User-space latency emulation: a TCP relay that holds every chunk for a fixed one-way delay.

This kernel has no netem qdisc, so experiments that need "1 ms more latency" put a :class:`LatencyRelay`
in front of each peer's server and give the other peers the relay's port. Each direction of each
connection is a reader thread that timestamps the chunks it receives and a writer thread that sends
each chunk ``delay_s`` after it arrived, in arrival order. A request/response therefore pays
``2 * delay_s`` more round-trip time, plus the relay's own overhead, which :func:`measure_added_rtt`
measures (ping-pong through the relay versus direct) so that results report what was really added.

Command line (one process hosting several relays; prints the bound ports as one JSON line, then serves
until stdin closes or SIGTERM)::

    python -m p2pgan.netem relay --delay-ms 1 --target 127.0.0.1:7001 --target 127.0.0.1:7002
    python -m p2pgan.netem measure --delay-ms 1 --samples 200
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from p2pgan.errors import ConfigError

#: bytes read from a socket at once
CHUNK_BYTES = 256 * 1024
#: a direction stops reading while this many bytes wait for their release time (bounds relay memory)
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
#: how long close() waits for each relay thread, seconds
JOIN_TIMEOUT_S = 5.0
#: how long a relay waits to connect to its target, seconds
CONNECT_TIMEOUT_S = 10.0


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_listener(server: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in accept() returns (close alone does not)."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()


class _Pipe:
    """One direction of one relayed connection: src -> (hold delay_s) -> dst, order kept."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        self._src, self._dst, self._delay = src, dst, delay_s
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._cond = threading.Condition()
        self._stopped = False
        self.threads = [
            threading.Thread(target=self._read, name="netem-read", daemon=True),
            threading.Thread(target=self._write, name="netem-write", daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        try:
            while True:
                data = self._src.recv(CHUNK_BYTES)
                now = time.monotonic()
                with self._cond:
                    if not data:
                        break
                    while self._buffered > MAX_BUFFERED_BYTES and not self._stopped:
                        self._cond.wait()
                    self._queue.append((now + self._delay, data))
                    self._buffered += len(data)
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._eof:
                        self._cond.wait()
                    if not self._queue:
                        break
                    due, data = self._queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)  # woken early by new data: re-check the head
                        continue
                    self._queue.popleft()
                    self._buffered -= len(data)
                    self._cond.notify_all()
                self._dst.sendall(data)
            with contextlib.suppress(OSError):
                self._dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.stop()
            with contextlib.suppress(OSError):
                self._src.shutdown(socket.SHUT_RD)

    def stop(self) -> None:
        """Release a reader blocked on a full buffer (the sockets are closed by the owner)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class LatencyRelay:
    """Listens on ``listen_host:listen_port`` (0: any free port) and relays to ``target`` with a delay.

    Use as a context manager; :attr:`port` is the bound port. ``delay_s`` is the one-way delay added
    in each direction.
    """

    def __init__(
        self, target: tuple[str, int], delay_s: float, *, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        if delay_s < 0:
            raise ConfigError(f"latency relay: delay must be >= 0 seconds, got {delay_s}")
        self.target = target
        self.delay_s = delay_s
        self._server = socket.create_server((listen_host, listen_port))
        self.host, self.port = self._server.getsockname()[:2]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._pipes: list[_Pipe] = []
        self._acceptor = threading.Thread(target=self._accept, name="netem-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                _nodelay(s)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self._pipes += [_Pipe(client, upstream, self.delay_s), _Pipe(upstream, client, self.delay_s)]

    def close(self) -> None:
        """Stop accepting, cut every relayed connection and join the threads. Idempotent."""
        self._closed.set()
        _close_listener(self._server)
        with self._lock:
            sockets, pipes = list(self._sockets), list(self._pipes)
        for p in pipes:
            p.stop()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in [self._acceptor, *(t for p in pipes for t in p.threads)]:
            t.join(JOIN_TIMEOUT_S)

    def __enter__(self) -> LatencyRelay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 (port yielded) that echoes every byte back; for RTT measurements."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(CHUNK_BYTES):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            _nodelay(conn)
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1]
    finally:
        _close_listener(server)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        acceptor.join(JOIN_TIMEOUT_S)


def ping_pong_ms(port: int, samples: int, payload: int = 64) -> list[float]:
    """Round-trip times (ms) of ``samples`` ping-pongs of ``payload`` bytes to an echo at 127.0.0.1:port."""
    msg = b"x" * payload
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S) as s:
        _nodelay(s)
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


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with a clear error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--target {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pgan.netem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    relay = sub.add_parser("relay", help="relay to each --target with a delay; prints the bound ports as JSON")
    relay.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    relay.add_argument("--target", action="append", required=True, help="HOST:PORT to relay to (repeatable)")
    measure = sub.add_parser("measure", help="measure the round-trip time a relay really adds")
    measure.add_argument("--delay-ms", type=float, default=1.0)
    measure.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "measure":
            print(json.dumps(measure_added_rtt(args.delay_ms / 1e3, args.samples)))
            return 0
        targets = [parse_target(t) for t in args.target]
        with contextlib.ExitStack() as stack:
            relays = [stack.enter_context(LatencyRelay(t, args.delay_ms / 1e3)) for t in targets]
            print(json.dumps({"ports": [r.port for r in relays], "delay_ms": args.delay_ms}), flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
            stop.wait()
    except ConfigError as exc:
        print(f"netem: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
