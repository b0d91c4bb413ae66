"""State transfer: a (re)joining peer fetches the parameters of live neighbours (``FetchState``).

Format of a reply stream: one ``Frame{manifest: StateManifest}`` naming the step, the model layout,
the algorithm, the tensor parts (name, element count) and integer counters, then ONE parameter
message exactly as on a Push stream (Header + Shards, :mod:`p2pgan.wire.codec`) holding the parts back
to back as float32. The receiver checks everything a Push message is checked for (sizes, order,
checksums, finite values) and, in addition, that the manifest describes exactly the state it expects
(same parts, same sizes, same counters, same layout digest and algorithm), that the manifest's step,
its ``step`` counter and the message header's step are one number, and that no counter is negative:
a state that does not fit is refused, never partly loaded.

What travels reveals no more than gossip (DESIGN.md sections 4 and 5): the vector a peer mixes (X,
or z for the overlap schedule) and its step. Not the previous direction, not optimizer moments (X and
Z together would give the previous direction away: ``d = (X - Z) / lr``); the joiner seeds its own
direction with one gradient (:meth:`p2pgan.algorithm.dposg.DPOSG.adopt`). Whether a fetched state is
adopted is decided against the other members' states (:mod:`p2pgan.daemon.transfer`).

Serving is bounded (issue 16): :class:`StateBoard` hands ONE shared snapshot to every caller of about
the same step (the training loop makes it at a step boundary, where the state is consistent; the
callers stream views of it, so the serving peer holds one extra copy of its vector however many ask),
and :class:`ServeGate` admits at most one call per member at a time, a few calls in all (so Hello
always finds a free server thread), and a rate per member (a token bucket: :data:`MEMBER_BURST` calls,
then one per :data:`MEMBER_INTERVAL_S`); a refused
call gets RESOURCE_EXHAUSTED at once. A call that streams longer than :data:`SERVE_DEADLINE_S` is
cancelled by the server.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from google.protobuf.message import DecodeError

from p2pgan.errors import PeerUnavailableError, ProtocolError, ResourceLimitError
from p2pgan.logsafe import printable
from p2pgan.wire import codec
from p2pgan.wire.codec import MessageHeader, ShardAssembler
from p2pgan.wire.v1 import gossip_pb2 as pb

#: the dtype of every part on the wire (the algorithm's state is kept in float32)
STATE_DTYPE = "float32"
#: FetchState calls served at once, all members together: the server's other threads stay free for
#: Hello and Push (p2pgan.wire.streams.RESERVED_WORKERS is larger)
MAX_SERVES = 4
#: FetchState calls of one member at once
MAX_SERVES_PER_MEMBER = 1
#: a member's FetchState calls are rate limited: a burst of MEMBER_BURST, then one per MEMBER_INTERVAL_S
#: (an honest joiner asks each member once per transfer; a restart or catch-up is rarer than this)
MEMBER_BURST = 3
MEMBER_INTERVAL_S = 2.0
#: the server cancels a FetchState call still streaming after this many seconds (a reader that stalls)
SERVE_DEADLINE_S = 60.0
#: a snapshot at most this many steps old is handed out again instead of making a new copy
SNAPSHOT_REUSE_STEPS = 2


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What a joiner accepts: the algorithm, the tensor parts it knows (name -> elements), the parts that
    must be there, and the integer counters it knows (``step`` must be there)."""

    algorithm: str
    parts: Mapping[str, int]
    required: frozenset[str]
    counters: frozenset[str]

    def check(self, who: str, algorithm: str, parts: tuple[tuple[str, int], ...], counters: Iterable[str]) -> None:
        """Raise :class:`ProtocolError` unless a manifest with these fields fits this layout exactly."""
        if algorithm != self.algorithm:
            raise ProtocolError(f"{who}: algorithm {algorithm!r} differs from ours {self.algorithm!r}")
        names = [n for n, _ in parts]
        counters = set(counters)
        wrong = [f"{n} ({c} elements)" for n, c in parts if self.parts.get(n) != c]
        if (wrong or len(set(names)) != len(names) or not self.required <= set(names)
                or not counters <= self.counters or "step" not in counters):
            raise ProtocolError(
                f"{who}: state layout {list(parts)} / counters {sorted(counters)} does not match ours: parts "
                f"{dict(self.parts)} (required {sorted(self.required)}), counters {sorted(self.counters)}"
                + (f"; unexpected or wrongly sized: {', '.join(wrong)}" if wrong else "")
            )


@dataclasses.dataclass(frozen=True)
class StateSnapshot:
    """The algorithm's state as flat named tensors plus integer counters."""

    step: int
    algorithm: str
    parts: tuple[tuple[str, torch.Tensor], ...]
    counters: Mapping[str, int]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], algorithm: str) -> StateSnapshot:
        """Flatten an algorithm ``state_dict()`` (tensors, ints and one nested ``direction`` dict)."""
        parts: list[tuple[str, torch.Tensor]] = []
        counters: dict[str, int] = {}

        def add(prefix: str, d: Mapping[str, Any]) -> None:
            for key in sorted(d):
                value = d[key]
                name = f"{prefix}{key}"
                if isinstance(value, Mapping):
                    add(f"{name}.", value)
                elif isinstance(value, torch.Tensor):
                    parts.append((name, value.detach().reshape(-1).to(torch.float32).cpu()))
                else:
                    counters[name] = int(value)

        add("", state)
        return cls(int(state["step"]), algorithm, tuple(parts), counters)

    def to_state_dict(self, shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Any]:
        """The nested state dict (``a.b`` names -> ``{"a": {"b": ...}}``), tensors as ``shape``/``dtype``."""
        out: dict[str, Any] = {}
        items: list[tuple[str, Any]] = [(n, t.reshape(shape).to(dtype)) for n, t in self.parts]
        items += list(self.counters.items())
        for name, value in items:
            *path, leaf = name.split(".")
            node = out
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = value
        return out


def encode_state(snap: StateSnapshot, *, federation: str, sender: str, layout_digest: str,
                 shard_bytes: int, compression: str = "none") -> Iterator[bytes]:
    """The frames of one FetchState reply (see the module docstring), made as gRPC sends them: a state is
    several copies of the model, and encoding it all at once would hold one more (issue 11 item 3)."""
    manifest = pb.StateManifest(
        federation=federation, sender=sender, step=snap.step, layout_digest=layout_digest,
        algorithm=snap.algorithm, parts=[pb.StatePart(name=n, element_count=t.numel()) for n, t in snap.parts],
        counters=dict(snap.counters), compression="" if compression == "none" else compression,
    )
    # one part (the default: the mixed vector) is streamed from the snapshot itself, without a copy
    flat = snap.parts[0][1] if len(snap.parts) == 1 else torch.cat([t for _, t in snap.parts])
    header = MessageHeader(
        federation=federation, sender=sender, step=snap.step, round=0, layout_digest=layout_digest,
        dtype=STATE_DTYPE, element_count=flat.numel(),
        shard_count=codec.shard_count(flat.numel() * flat.element_size(), shard_bytes),
    )
    message = codec.OutgoingMessage(header, codec.le_bytes(flat), shard_bytes)
    return itertools.chain((pb.Frame(manifest=manifest).SerializeToString(),), message.subscribe())


def decode_state(frames: Iterable[bytes], *, federation: str, sender: str, layout_digest: str,
                 expected: StateLayout, compression: str = "none") -> StateSnapshot:
    """Read and check one FetchState reply from ``sender`` against the ``expected`` layout (our own).

    Raises :class:`ProtocolError` naming what did not match; nothing is returned half-checked.
    """
    it = iter(frames)
    who = f"state from {sender!r}"
    try:
        first = pb.Frame.FromString(next(it))
    except StopIteration:
        raise ProtocolError(f"{who}: the reply was empty") from None
    except DecodeError as exc:  # a call that failed (grpc.RpcError) is the caller's to report, not a bad manifest
        raise ProtocolError(f"{who}: undecodable manifest: {exc}") from None
    if first.WhichOneof("kind") != "manifest":
        raise ProtocolError(f"{who}: the reply must start with a state manifest")
    m = first.manifest
    if m.federation != federation or m.sender != sender:
        raise ProtocolError(f"{who}: manifest names {m.sender!r} of {m.federation!r}")
    if layout_digest and m.layout_digest != layout_digest:
        raise ProtocolError(f"{who}: model layout {m.layout_digest!r} differs from ours {layout_digest!r}")
    if (m.compression or "none") != compression:  # a state from another gossip scheme is not one of ours
        raise ProtocolError(f"{who}: mixing.compression {printable(m.compression or 'none')} differs from ours "
                            f"{compression!r}")
    parts = tuple((p.name, int(p.element_count)) for p in m.parts)
    expected.check(who, m.algorithm, parts, m.counters)
    if m.step < 0 or any(v < 0 for v in m.counters.values()):
        raise ProtocolError(f"{who}: negative step or counter")
    if m.counters.get("step") != m.step:
        raise ProtocolError(f"{who}: the manifest says step {m.step} but its step counter {m.counters.get('step')}")
    total = sum(n for _, n in parts)
    writer: ShardAssembler | None = None
    for msg in it:
        frame = codec.decode_frame(msg)
        if isinstance(frame, MessageHeader):
            if writer is not None:
                raise ProtocolError(f"{who}: a second header")
            if (frame.federation, frame.sender, frame.dtype) != (federation, sender, STATE_DTYPE):
                raise ProtocolError(f"{who}: header of {frame.sender!r}/{frame.federation!r} in {frame.dtype}")
            frame.check_sizes()
            if frame.step != m.step:
                raise ProtocolError(f"{who}: the manifest says step {m.step}, the message header {frame.step}")
            if frame.element_count != total:
                raise ProtocolError(f"{who}: {frame.element_count} elements, the manifest says {total}")
            writer = ShardAssembler(frame)
            continue
        if writer is None:
            raise ProtocolError(f"{who}: shard before the header")
        writer.add(frame)
    if writer is None:
        raise ProtocolError(f"{who}: no parameter message after the manifest")
    flat = writer.vector().tensor()  # one new tensor; the parts are views of it (the loader copies them)
    out: list[tuple[str, torch.Tensor]] = []
    offset = 0
    for name, n in parts:
        out.append((name, flat[offset : offset + n]))
        offset += n
    return StateSnapshot(int(m.step), m.algorithm, tuple(out), dict(m.counters))


class StateBoard:
    """Requests for a snapshot (RPC threads) answered by the training loop between steps.

    One snapshot is shared: a request finds the current one if it is at most
    :data:`SNAPSHOT_REUSE_STEPS` behind the loop's step, else waits for the next step boundary, where
    the loop makes a new one (the old one is dropped, so at most one is kept beyond what calls in
    flight still stream)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self._serial = 0
        self._snapshot: StateSnapshot | None = None
        self._step = -1  # the loop's step at its last boundary
        self._closed = False
        self._training = False
        self.made = 0  # snapshots made so far (tests, metrics)

    def request(self, timeout: float) -> StateSnapshot:
        """The shared snapshot, or block until the loop publishes one at its next step boundary (or raise)."""
        with self._cond:
            if not self._training or self._closed:
                raise PeerUnavailableError("this peer is not training (yet or any more); ask another member")
            snap = self._snapshot
            if snap is not None and self._step - snap.step <= SNAPSHOT_REUSE_STEPS:
                return snap
            self._waiting += 1
            serial = self._serial
            try:
                if not self._cond.wait_for(lambda: self._serial != serial or self._closed, timeout):
                    raise PeerUnavailableError(f"no state snapshot within {timeout:g} s; ask another member")
                if self._snapshot is None or self._serial == serial:
                    raise PeerUnavailableError("this peer stopped before it could hand out its state")
                return self._snapshot
            finally:
                self._waiting -= 1

    def serve(self, make: Callable[[], StateSnapshot], step: int | None = None) -> bool:
        """Called by the loop between steps (at ``step``): publish a snapshot if anyone waits; True if one was made.

        A snapshot too old to hand out again is dropped here (callers that took it keep their reference)."""
        with self._cond:
            self._training = True
            if step is not None:
                self._step = step
            if self._snapshot is not None and self._step - self._snapshot.step > SNAPSHOT_REUSE_STEPS:
                self._snapshot = None
            if not self._waiting:
                return False
        snap = make()
        with self._cond:
            self._snapshot = snap
            self._step = max(self._step, snap.step)
            self._serial += 1
            self.made += 1
            self._cond.notify_all()
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._training = False
            self._snapshot = None
            self._cond.notify_all()


class ServeGate:
    """Admission of FetchState calls: per member and in all, and a per-member rate (module docstring)."""

    def __init__(self, *, max_serves: int = MAX_SERVES, per_member: int = MAX_SERVES_PER_MEMBER,
                 burst: int = MEMBER_BURST, interval_s: float = MEMBER_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_serves = max_serves
        self.per_member = per_member
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._tokens: dict[str, tuple[float, float]] = {}  # member -> (tokens, when counted)
        self.refused = 0

    @contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold a serving slot for ``caller`` or raise :class:`ResourceLimitError` at once."""
        with self._lock:
            now = self._clock()
            tokens, then = self._tokens.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) / self.interval_s)
            problem = ""
            if self._active.get(caller, 0) >= self.per_member:
                problem = f"{caller} already has {self.per_member} FetchState call(s) in progress"
            elif sum(self._active.values()) >= self.max_serves:
                problem = f"{self.max_serves} FetchState calls are in progress; ask another member or retry later"
            elif tokens < 1.0:
                problem = (f"{caller} asks for our state too often: at most {self.burst} calls, then one per "
                           f"{self.interval_s:g} s")
            if problem:
                self.refused += 1
                self._tokens[caller] = (tokens, now)
                raise ResourceLimitError(problem)
            self._tokens[caller] = (tokens - 1.0, now)
            self._active[caller] = self._active.get(caller, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._active[caller] -= 1
