"""The relay: a TCP listener that forwards each connection to a target, paced and delayed chunk by chunk.

Each direction of each connection is a reader thread that timestamps the chunks it receives and a writer
thread that sends each chunk when the emulated link has carried it, in arrival order. Without a rate that is
``delay_s`` after it arrived; with a rate (a :class:`~p2pgan.netem.pacer.Pacer`) a chunk first waits for the
link to be free, takes ``bytes * 8 / rate`` seconds to serialize, then ``delay_s`` to propagate, as on a real
link whose bottleneck queue is bounded (:data:`QUEUE_S`).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from types import TracebackType

from p2pgan.errors import ConfigError
from p2pgan.netem.pacer import CHUNK_BYTES, Pacer

#: a direction stops reading while this many bytes wait for their release time (bounds relay memory)
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
#: how long close() waits for each relay thread, seconds
JOIN_TIMEOUT_S = 5.0
#: how long a relay waits to connect to its target, seconds
CONNECT_TIMEOUT_S = 10.0
#: a paced direction stops reading once this many seconds of the link's time wait in it (the bottleneck
#: queue of a real router: beyond it the sender's TCP window fills and it slows down, instead of the relay
#: buffering a whole model)
QUEUE_S = 0.05


def set_nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def close_listener(server: socket.socket) -> None:
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
                set_nodelay(s)
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
        close_listener(self._server)
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
