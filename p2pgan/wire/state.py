"""State transfer: a (re)joining peer fetches the algorithm state of a live neighbour (``FetchState``).

Format of a reply stream: one ``Frame{manifest: StateManifest}`` naming the step, the model layout,
the algorithm, the tensor parts (name, element count) and integer counters, then ONE parameter
message exactly as on a Push stream (Header + Shards, :mod:`p2pgan.wire.codec`) holding the parts back
to back as float32. The receiver checks everything a Push message is checked for (sizes, order,
checksums, finite values) and, in addition, that the manifest describes exactly the state it has
itself (same parts, same sizes, same counters, same layout digest and algorithm): a state whose layout
does not match is refused, never partly loaded. Only the algorithm's state travels: X, Z, the
previous direction, optimizer moments and step counters; no data, no RNG state, no metrics.

:class:`StateBoard` hands a consistent snapshot from the training loop to the serving RPC thread: the
RPC posts a request, the loop answers it at its next step boundary (where the state is consistent).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from google.protobuf.message import DecodeError

from p2pgan.errors import PeerUnavailableError, ProtocolError
from p2pgan.wire import codec
from p2pgan.wire.codec import MessageHeader, ShardAssembler
from p2pgan.wire.v1 import gossip_pb2 as pb

#: the dtype of every part on the wire (the algorithm's state is kept in float32)
STATE_DTYPE = "float32"


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
                 shard_bytes: int) -> Iterator[bytes]:
    """The frames of one FetchState reply (see the module docstring), made as gRPC sends them: a state is
    several copies of the model, and encoding it all at once would hold one more (issue 11 item 3)."""
    manifest = pb.StateManifest(
        federation=federation, sender=sender, step=snap.step, layout_digest=layout_digest,
        algorithm=snap.algorithm, parts=[pb.StatePart(name=n, element_count=t.numel()) for n, t in snap.parts],
        counters=dict(snap.counters),
    )
    flat = torch.cat([t for _, t in snap.parts]) if snap.parts else torch.zeros(1)
    header = MessageHeader(
        federation=federation, sender=sender, step=snap.step, round=0, layout_digest=layout_digest,
        dtype=STATE_DTYPE, element_count=flat.numel(),
        shard_count=codec.shard_count(flat.numel() * flat.element_size(), shard_bytes),
    )
    message = codec.OutgoingMessage(header, codec.le_bytes(flat), shard_bytes)
    return itertools.chain((pb.Frame(manifest=manifest).SerializeToString(),), message.subscribe())


def decode_state(frames: Iterable[bytes], *, federation: str, sender: str, layout_digest: str,
                 expected: StateLayout) -> StateSnapshot:
    """Read and check one FetchState reply from ``sender`` against the ``expected`` layout (our own).

    Raises :class:`ProtocolError` naming what did not match; nothing is returned half-checked.
    """
    it = iter(frames)
    who = f"state from {sender!r}"
    try:
        first = pb.Frame.FromString(next(it))
    except StopIteration:
        raise ProtocolError(f"{who}: the reply was empty") from None
    except DecodeError as exc:  # only the bytes' fault: a failed call (grpc.RpcError) goes to the caller as it is
        raise ProtocolError(f"{who}: undecodable manifest: {exc}") from None
    if first.WhichOneof("kind") != "manifest":
        raise ProtocolError(f"{who}: the reply must start with a state manifest")
    m = first.manifest
    if m.federation != federation or m.sender != sender:
        raise ProtocolError(f"{who}: manifest names {m.sender!r} of {m.federation!r}")
    if layout_digest and m.layout_digest != layout_digest:
        raise ProtocolError(f"{who}: model layout {m.layout_digest!r} differs from ours {layout_digest!r}")
    parts = tuple((p.name, int(p.element_count)) for p in m.parts)
    expected.check(who, m.algorithm, parts, m.counters)
    if m.step < 0 or any(v < 0 for v in m.counters.values()):
        raise ProtocolError(f"{who}: negative step or counter")
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
    """Requests for a snapshot (RPC threads) answered by the training loop between steps."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self._serial = 0
        self._snapshot: StateSnapshot | None = None
        self._closed = False
        self._training = False

    def request(self, timeout: float) -> StateSnapshot:
        """Block until the loop publishes a snapshot at its next step boundary (or raise)."""
        with self._cond:
            if not self._training or self._closed:
                raise PeerUnavailableError("this peer is not training (yet or any more); ask another member")
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
                if not self._waiting:
                    self._snapshot = None  # the callers hold what they took; do not keep a copy of the model

    def serve(self, make: Callable[[], StateSnapshot]) -> bool:
        """Called by the loop between steps: publish a snapshot if anyone waits; True if one was made."""
        with self._cond:
            self._training = True
            if not self._waiting:
                return False
        snap = make()
        with self._cond:
            self._snapshot = snap
            self._serial += 1
            self._cond.notify_all()
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._training = False
            self._snapshot = None
            self._cond.notify_all()
