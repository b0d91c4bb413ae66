"""Bounds on incoming Push streams, so that one member cannot starve the others or Hello.

Every Push stream holds one server thread for as long as it is open (streams are persistent). Without
bounds, 70 streams opened with one member's certificate and never written to took all 64 threads and
every Hello timed out (issue 9, case 2). :class:`StreamGate` admits a stream only:

- per member: at most :data:`MAX_STREAMS_PER_MEMBER` open at once; a new one REPLACES the member's
  oldest (a restarted neighbour's new stream must win over its dead one), which is cancelled;
- in all: at most :data:`MAX_PUSH_STREAMS`, fewer than the server's threads, so
  :data:`RESERVED_WORKERS` threads always remain for Hello and other unary calls;
- while active: a stream that carries no message for :data:`IDLE_TIMEOUT_S` is cancelled (the honest
  client reopens it on its next send, as after any broken stream).

Plain logic with a cancel callback per stream; the servicer passes ``context.cancel``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from p2pgan.errors import ResourceLimitError
from p2pgan.logsafe import printable

log = logging.getLogger(__name__)

#: server threads; one per open incoming stream plus the unary calls
SERVER_WORKERS = 64
#: threads a Push stream can never take: Hello (and future unary RPCs) always find one
RESERVED_WORKERS = 16
MAX_PUSH_STREAMS = SERVER_WORKERS - RESERVED_WORKERS
#: concurrent Push streams of one member (an honest neighbour keeps one; one more covers a reconnect); with
#: mixing.connections = N the server allows N - 1 more (p2pgan.wire.service)
MAX_STREAMS_PER_MEMBER = 2
#: a stream silent this long is cancelled; well above a step's compute time plus an evaluation
IDLE_TIMEOUT_S = 120.0
#: how often the watchdog looks for idle streams, at most
WATCH_INTERVAL_S = 1.0


class _Ticket:
    def __init__(self, key: str | None, cancel: Callable[[], None], now: float, address: str = "") -> None:
        self.key = key
        self.address = address
        self.cancel = cancel
        self.last = now
        self.cancelled = ""


class StreamGate:
    """Admission and idle control of Push streams (see the module docstring). Thread-safe."""

    def __init__(self, *, max_streams: int = MAX_PUSH_STREAMS, per_member: int = MAX_STREAMS_PER_MEMBER,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_streams = max_streams
        self.per_member = per_member
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._cond = threading.Condition()
        self._open: dict[int, _Ticket] = {}
        self._ids = itertools.count()
        self._watching = False
        self.replaced = 0
        self.idle_closed = 0
        self.refused = 0

    def stream(self, member: str | None, cancel: Callable[[], None], messages: Iterable[bytes],
               address: str = "") -> _Admitted:
        """Admit one stream of ``member`` (None: unauthenticated, insecure mode: only the total bound) that
        comes from ``address`` (gRPC's peer string, e.g. ``ipv4:127.0.0.1:40312``: one per connection).

        Raises :class:`ResourceLimitError` when the server already carries its maximum of streams.
        """
        victim: _Ticket | None = None
        with self._cond:
            if len(self._open) >= self.max_streams:
                self.refused += 1
                raise ResourceLimitError(
                    f"this peer already serves {len(self._open)} Push streams (its maximum); retry later"
                )
            now = self._clock()
            if member is not None:
                mine = [t for t in self._open.values() if t.key == member]
                if len(mine) >= self.per_member:
                    victim = min(mine, key=lambda t: t.last)
                    victim.cancelled = "replaced by a newer stream of the same member"
                    self._open = {i: t for i, t in self._open.items() if t is not victim}
                    self.replaced += 1
            ident = next(self._ids)
            ticket = self._open[ident] = _Ticket(member, cancel, now, address)
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="p2pgan-stream-watch", daemon=True).start()
        if victim is not None:
            log.info("Push stream of %s replaced by a newer one (at most %d per member)",
                     printable(member), self.per_member)
            victim.cancel()
        return _Admitted(self, ident, ticket, messages)

    def _release(self, ident: int) -> None:
        with self._cond:
            self._open.pop(ident, None)
            self._cond.notify_all()

    def addresses(self, member: str | None) -> list[str]:
        """The addresses of ``member``'s open streams (distinct ones: distinct TCP connections)."""
        with self._cond:
            return [t.address for t in self._open.values() if t.key == member]

    @property
    def open_streams(self) -> int:
        with self._cond:
            return len(self._open)

    def _watch(self) -> None:
        """Cancel idle streams; ends when no stream is open (started again by the next admission)."""
        while True:
            idle: list[_Ticket] = []
            with self._cond:
                if not self._open:
                    self._watching = False
                    return
                now = self._clock()
                for ident, t in list(self._open.items()):
                    if now - t.last >= self.idle_timeout_s:
                        t.cancelled = f"no message for {self.idle_timeout_s:g} s"
                        idle.append(self._open.pop(ident))
                self.idle_closed += len(idle)
                if not idle:
                    oldest = min(t.last for t in self._open.values())
                    wait = min(WATCH_INTERVAL_S, max(0.01, oldest + self.idle_timeout_s - now))
                    self._cond.wait(wait)
            for t in idle:
                log.info("Push stream of %s closed: %s", printable(t.key), t.cancelled)
                t.cancel()


class _Admitted:
    """An admitted stream: iterate it for its messages (each one refreshes its idle clock); a context."""

    def __init__(self, gate: StreamGate, ident: int, ticket: _Ticket, messages: Iterable[bytes]) -> None:
        self._gate = gate
        self._ident = ident
        self._ticket = ticket
        self._messages = messages

    def __iter__(self) -> Iterator[bytes]:
        clock, ticket = self._gate._clock, self._ticket
        for msg in self._messages:
            ticket.last = clock()
            yield msg

    @property
    def cancelled(self) -> str:
        """Why the gate cancelled this stream ("" if it did not)."""
        return self._ticket.cancelled

    def __enter__(self) -> _Admitted:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gate._release(self._ident)
