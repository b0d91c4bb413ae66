"""User-space link emulation: a TCP relay that paces every chunk to a rate and holds it for a one-way delay.

This kernel has no netem qdisc, so experiments that need "a 100 Mbit/s link with 20 ms of delay" put a
:class:`LatencyRelay` in front of each peer's server and give the other peers the relay's port. Each
direction of each connection is a reader thread that timestamps the chunks it receives and a writer
thread that sends each chunk when the emulated link has carried it, in arrival order. Without a rate
that is ``delay_s`` after it arrived; with a rate (a :class:`Pacer`, a token bucket of one chunk's
burst shared by every connection of that direction of the link) a chunk first waits for the link to be
free, takes ``bytes * 8 / rate`` seconds to serialize, then ``delay_s`` to propagate, as on a real link
whose bottleneck queue is bounded (:data:`QUEUE_S`). A request/response therefore pays
``2 * delay_s`` more round-trip time, plus the relay's own overhead, which :func:`measure_added_rtt`
measures (ping-pong through the relay versus direct) so that results report what was really added;
:func:`measure_rate` does the same for the rate (a bulk transfer through the relay, bytes over time).

:func:`parse_link` reads the ``RATE:DELAY`` form (``100mbit:20ms``, ``1gbit:5ms``, ``10mbit:20ms``)
that ``p2pgan harness --link`` and the benchmarks take; :class:`EmulatedLinks` gives every pair of
peers its own link (a relay per direction of dialling, the two directions of the pair each one pacer).

Command line (one process hosting several relays; prints the bound ports as one JSON line, then serves
until stdin closes or SIGTERM)::

    python -m p2pgan.netem relay --delay-ms 1 --target 127.0.0.1:7001 --target 127.0.0.1:7002
    python -m p2pgan.netem relay --link 100mbit:20ms --target 127.0.0.1:7001
    python -m p2pgan.netem pair --link 100mbit:20ms --target 127.0.0.1:7001 --target 127.0.0.1:7002
    python -m p2pgan.netem measure --delay-ms 1 --samples 200
    python -m p2pgan.netem measure --link 10mbit:5ms --bytes 2000000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import re
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
#: on a paced link, a chunk is at most this many seconds of the link's time (finer pacing at low rates)
PACED_CHUNK_S = 0.002
#: smallest chunk read on a paced link, bytes (one TLS record is up to 16 KiB)
MIN_PACED_CHUNK_BYTES = 16 * 1024
#: a paced direction stops reading once this many seconds of the link's time wait in it (the bottleneck
#: queue of a real router: beyond it the sender's TCP window fills and it slows down, instead of the relay
#: buffering a whole model)
QUEUE_S = 0.05
#: bits per second of each rate unit of ``--link`` (decimal, as link rates are quoted)
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
#: seconds per delay unit of ``--link``
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
#: the fastest link emulated: beyond it the relay's Python threads, not the pacer, set the rate
MAX_RATE_BPS = 100 * 10**9
#: the longest one-way delay accepted
MAX_DELAY_S = 10.0


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    """An emulated link: ``rate_bps`` bits per second in each direction (None: unlimited) and a one-way delay."""

    rate_bps: float | None
    delay_s: float

    def __str__(self) -> str:
        rate = "unlimited" if self.rate_bps is None else _format_rate(self.rate_bps)
        return f"{rate}:{self.delay_s * 1e3:g}ms"

    def floor_s(self, nbytes: float) -> float:
        """The least time ``nbytes`` take over this link, one way: serialization plus the delay."""
        return (0.0 if self.rate_bps is None else nbytes * 8 / self.rate_bps) + self.delay_s


def _format_rate(bps: float) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bps >= RATE_UNITS[unit]:
            return f"{bps / RATE_UNITS[unit]:g}{unit}"
    return f"{bps:g}bit"


_LINK_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*:\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*$")


def parse_link(text: str, flag: str = "--link") -> LinkSpec:
    """``RATE:DELAY`` (``100mbit:20ms``, ``1gbit:5ms``, ``10mbit:0.5s``) -> :class:`LinkSpec`, or a one-line
    :class:`ConfigError` naming ``flag`` and what is allowed."""
    allowed = (f"expected RATE:DELAY such as 100mbit:20ms or 1gbit:5ms (rate units {', '.join(RATE_UNITS)}; "
               f"delay units {', '.join(DELAY_UNITS)})")
    m = _LINK_RE.match(text.lower())
    if m is None:
        raise ConfigError(f"{flag} {text!r}: {allowed}")
    rate, runit, delay, dunit = float(m[1]), m[2], float(m[3]), m[4]
    if runit not in RATE_UNITS:
        raise ConfigError(f"{flag} {text!r}: rate unit {runit!r} is not one of {', '.join(RATE_UNITS)}")
    if dunit not in DELAY_UNITS:
        raise ConfigError(f"{flag} {text!r}: delay unit {dunit!r} is not one of {', '.join(DELAY_UNITS)}")
    bps, delay_s = rate * RATE_UNITS[runit], delay * DELAY_UNITS[dunit]
    if not 1000 <= bps <= MAX_RATE_BPS:
        raise ConfigError(f"{flag} {text!r}: the rate must be within 1kbit..{_format_rate(MAX_RATE_BPS)}")
    if delay_s > MAX_DELAY_S:
        raise ConfigError(f"{flag} {text!r}: the delay must be at most {MAX_DELAY_S:g} s")
    return LinkSpec(bps, delay_s)


class Pacer:
    """One direction of an emulated link: a token bucket of ``rate_bps`` whose burst is one chunk.

    :meth:`depart` books a chunk on the link and returns when its last bit has left (the link is free
    again then): chunks of every connection sharing the pacer queue behind each other, so they share the
    rate as flows on one real link do. Thread-safe. :attr:`bytes` and :attr:`busy_s` count what it carried.
    """

    def __init__(self, rate_bps: float) -> None:
        if not rate_bps > 0:
            raise ConfigError(f"link rate must be > 0 bit/s, got {rate_bps}")
        self.rate_bps = rate_bps
        self._free_at = 0.0
        self._lock = threading.Lock()
        self.bytes = 0
        self.busy_s = 0.0

    def depart(self, now: float, nbytes: int) -> float:
        """Book ``nbytes`` arriving at ``now`` (monotonic seconds); the time their last bit has left."""
        cost = nbytes * 8 / self.rate_bps
        with self._lock:
            self._free_at = max(self._free_at, now) + cost
            self.bytes += nbytes
            self.busy_s += cost
            return self._free_at

    def backlog_s(self, now: float) -> float:
        """Seconds of the link's time already booked beyond ``now``."""
        with self._lock:
            return max(0.0, self._free_at - now)

    @property
    def chunk_bytes(self) -> int:
        """How many bytes to read at once for this rate (about :data:`PACED_CHUNK_S` of the link's time)."""
        return int(min(CHUNK_BYTES, max(MIN_PACED_CHUNK_BYTES, self.rate_bps / 8 * PACED_CHUNK_S)))


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close_listener(server: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in accept() returns (close alone does not)."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()


class _Pipe:
    """One direction of one relayed connection: src -> (pace, then hold delay_s) -> dst, order kept."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay_s: float, pacer: Pacer | None = None) -> None:
        self._src, self._dst, self._delay, self._pacer = src, dst, delay_s, pacer
        self._chunk = CHUNK_BYTES if pacer is None else pacer.chunk_bytes
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
                data = self._src.recv(self._chunk)
                now = time.monotonic()
                with self._cond:
                    if not data:
                        break
                    while self._buffered > MAX_BUFFERED_BYTES and not self._stopped:
                        self._cond.wait()
                pacer = self._pacer
                if pacer is not None:
                    # the bottleneck queue is full: wait (reading nothing more, so TCP slows the sender down)
                    while (backlog := pacer.backlog_s(time.monotonic())) > QUEUE_S and not self._stopped:
                        time.sleep(backlog - QUEUE_S)  # pacing in emulated link time, not synchronizing
                    # booked from when it arrived: a reader that overslept leaves no gap in the link's schedule
                    now = pacer.depart(now, len(data))
                with self._cond:
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
    in each direction. ``pacers`` (toward the target, back from it) limit the rate of each direction;
    give the same pacers to several relays to make them one link (:class:`EmulatedLinks`), or
    ``rate_bps`` for a link of this relay's own.
    """

    def __init__(
        self, target: tuple[str, int], delay_s: float, *, listen_host: str = "127.0.0.1", listen_port: int = 0,
        rate_bps: float | None = None, pacers: tuple[Pacer, Pacer] | None = None,
    ) -> None:
        if delay_s < 0:
            raise ConfigError(f"latency relay: delay must be >= 0 seconds, got {delay_s}")
        if pacers is None and rate_bps is not None:
            pacers = (Pacer(rate_bps), Pacer(rate_bps))
        self.target = target
        self.delay_s = delay_s
        self.pacers = pacers
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
                out, back = self.pacers or (None, None)
                self._pipes += [_Pipe(client, upstream, self.delay_s, out), _Pipe(upstream, client, self.delay_s, back)]

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


class EmulatedLinks:
    """Every pair of ``ports``' peers on its own emulated link of ``spec``: peer ``a`` reaches ``b`` at
    :meth:`port` ``(a, b)``, a relay to ``b``'s server. The relay ``a`` dials and the one ``b`` dials share
    the pair's two pacers (``a -> b`` and ``b -> a``), so each direction of the pair carries at most the
    rate whoever opened the connection. A context manager: closing it closes every relay.
    """

    def __init__(self, ports: dict[str, int], spec: LinkSpec, host: str = "127.0.0.1",
                 listen_ports: dict[tuple[str, str], int] | None = None) -> None:
        self.spec = spec
        self._relays: dict[tuple[str, str], LatencyRelay] = {}
        self._pacers: dict[tuple[str, str], Pacer] = {}
        try:
            for a in ports:
                for b in ports:
                    if a == b:
                        continue
                    pacers = None
                    if spec.rate_bps is not None:
                        pacers = (self._pacer(a, b, spec.rate_bps), self._pacer(b, a, spec.rate_bps))
                    self._relays[a, b] = LatencyRelay((host, ports[b]), spec.delay_s, listen_host=host, pacers=pacers,
                                                      listen_port=(listen_ports or {}).get((a, b), 0))
        except BaseException:
            self.close()
            raise

    def _pacer(self, src: str, dst: str, rate_bps: float) -> Pacer:
        return self._pacers.setdefault((src, dst), Pacer(rate_bps))

    def port(self, a: str, b: str) -> int:
        """The port peer ``a`` dials to reach peer ``b``."""
        return self._relays[a, b].port

    def carried(self) -> dict[str, int]:
        """Bytes each direction of each pair carried so far (``"a->b"``: paced links only)."""
        return {f"{a}->{b}": p.bytes for (a, b), p in sorted(self._pacers.items())}

    def close(self) -> None:
        for relay in self._relays.values():
            relay.close()

    def __enter__(self) -> EmulatedLinks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def sink_server() -> Iterator[tuple[int, list[float]]]:
    """A TCP server on 127.0.0.1 that reads every byte and, per connection, replies with one byte once the
    sender half-closes; yields (port, times): the monotonic time each connection's last byte arrived."""
    server = socket.create_server(("127.0.0.1", 0))
    done: list[float] = []
    conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(CHUNK_BYTES):
                pass
            done.append(time.monotonic())
            conn.sendall(b"k")
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server.getsockname()[1], done
    finally:
        _close_listener(server)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        acceptor.join(JOIN_TIMEOUT_S)


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
    relay.add_argument("--delay-ms", type=float, default=None, help="one-way delay added in each direction")
    relay.add_argument("--link", default=None, help="RATE:DELAY, e.g. 100mbit:20ms (instead of --delay-ms)")
    relay.add_argument("--target", action="append", required=True, help="HOST:PORT to relay to (repeatable)")
    pair = sub.add_parser("pair", help="one emulated link between two servers: ports [A dials to reach B, B dials to "
                                       "reach A], both relays sharing the link's two pacers")
    pair.add_argument("--link", required=True, help="RATE:DELAY, e.g. 1gbit:5ms")
    pair.add_argument("--target", action="append", required=True, help="HOST:PORT of A, then of B")
    measure = sub.add_parser("measure", help="measure the round-trip time (and with --link the rate) a relay adds")
    measure.add_argument("--delay-ms", type=float, default=1.0)
    measure.add_argument("--samples", type=int, default=200)
    measure.add_argument("--link", default=None, help="RATE:DELAY: also measure the rate of a bulk transfer")
    measure.add_argument("--bytes", type=int, default=2_000_000, help="bytes of the bulk transfer (with --link)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "pair" and len(args.target) != 2:
            raise ConfigError(f"pair: give exactly two --target HOST:PORT (A, then B), got {len(args.target)}")
        if args.link is not None:
            spec = parse_link(args.link)
        elif args.delay_ms is not None:
            spec = LinkSpec(None, args.delay_ms / 1e3)
        else:
            raise ConfigError("relay: give --delay-ms MS or --link RATE:DELAY")
        if spec.delay_s < 0:
            raise ConfigError(f"--delay-ms: must be >= 0, got {args.delay_ms}")
        if args.cmd == "measure":
            if args.bytes < 1:
                raise ConfigError(f"--bytes: must be >= 1, got {args.bytes}")
            out = measure_added_rtt(spec.delay_s, args.samples)
            if spec.rate_bps is not None:
                out.update(measure_rate(spec, args.bytes))
            print(json.dumps(out))
            return 0
        targets = [parse_target(t) for t in args.target]
        with contextlib.ExitStack() as stack:
            if args.cmd == "pair":
                ab, ba = (Pacer(spec.rate_bps), Pacer(spec.rate_bps)) if spec.rate_bps else (None, None)
                relays = [stack.enter_context(LatencyRelay(targets[1], spec.delay_s, pacers=(ab, ba) if ab else None)),
                          stack.enter_context(LatencyRelay(targets[0], spec.delay_s, pacers=(ba, ab) if ba else None))]
            else:
                relays = [stack.enter_context(LatencyRelay(t, spec.delay_s, rate_bps=spec.rate_bps)) for t in targets]
            print(json.dumps({"ports": [r.port for r in relays], "delay_ms": spec.delay_s * 1e3,
                              "rate_mbit_s": None if spec.rate_bps is None else spec.rate_bps / 1e6}), flush=True)
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
