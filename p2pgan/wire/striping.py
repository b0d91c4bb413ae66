"""A message striped over several connections (``mixing.connections`` > 1): its parts, and their assembly.

With N connections to a neighbour, a message of S shards goes out as N parts, one per connection (each
its own TCP + TLS session, so N cores encrypt and N congestion windows carry it): part ``c`` is the
header with ``part = c, parts = N`` and then the shards ``c, c + N, c + 2N, ...`` in order. A receiver
joins the parts of one message, keyed by (step, round, sender) as any message, in one
:class:`StripedMessage`; each stream checks its own part with a :class:`PartWriter` (the shard indices
of its stride, in order, the bytes received so far within the header's size), and the stream that
finishes the last part checks the whole message exactly as an unstriped one
(:class:`p2pgan.wire.codec.ShardAssembler`: sizes add up, checksums, finite values) and hands it on.
Every part must carry the same header but for ``part``, and each part may arrive once.

A message whose parts do not all arrive (a connection broke) never completes; the inbox drops it with
its round. Plain logic, no gRPC.
"""

from __future__ import annotations

import dataclasses
import threading

from p2pgan.errors import ProtocolError
from p2pgan.wire.codec import MessageHeader, ReceivedVector, ShardAssembler, ShardView
from p2pgan.wire.limits import MAX_SHARD_BYTES


class StripedMessage:
    """The parts of one striped message received so far (thread-safe: each part arrives on its own stream)."""

    def __init__(self, header: MessageHeader, *, verify_checksums: bool) -> None:
        self.header = dataclasses.replace(header, part=0)
        self._verify = verify_checksums
        self._lock = threading.Lock()
        self._shards: dict[int, ShardView] = {}
        self._bytes = 0
        self._joined: set[int] = set()
        self._done: set[int] = set()

    def join(self, header: MessageHeader) -> PartWriter:
        """A writer for the part ``header`` announces; :class:`ProtocolError` for a part that does not fit."""
        if dataclasses.replace(header, part=0) != self.header:
            raise ProtocolError(f"{header._who}: part {header.part} has a header that differs from its other parts'")
        with self._lock:
            if header.part in self._joined:
                raise ProtocolError(f"{header._who}: part {header.part} of {header.parts} arrived twice")
            self._joined.add(header.part)
        return PartWriter(self, header.part)

    def _add(self, shard: ShardView) -> None:
        h = self.header
        with self._lock:
            if self._bytes + len(shard.data) > h.nbytes:
                raise ProtocolError(f"{h._who}: shards add up to more than the {h.nbytes} bytes of the message")
            self._bytes += len(shard.data)
            self._shards[shard.index] = shard

    def _finish(self, part: int) -> bool:
        """Part ``part`` is complete; True for the one call that completes the message."""
        with self._lock:
            self._done.add(part)
            return len(self._done) == self.header.parts

    def vector(self) -> ReceivedVector:
        """The complete message, checked as an unstriped one (sizes, checksums, finite values)."""
        assembler = ShardAssembler(dataclasses.replace(self.header, parts=0), verify_checksums=self._verify)
        for i in range(self.header.shard_count):
            assembler.add(self._shards[i])
        return assembler.vector()


class PartWriter:
    """One stream's part of a :class:`StripedMessage`: its shards in their stride, in order."""

    def __init__(self, message: StripedMessage, part: int) -> None:
        self.message = message
        self.header = message.header
        self.part = part
        self._next = part

    @property
    def done(self) -> bool:
        return self._next >= self.header.shard_count

    def add(self, shard: ShardView) -> bool:
        """Keep ``shard``; True when this part is done and it completed the whole message."""
        h = self.header
        if self.done or shard.index != self._next:
            due = "no further shard" if self.done else f"shard {self._next}"
            raise ProtocolError(f"{h._who}: shard {shard.index} arrived on part {self.part} of {h.parts} where {due} "
                                "was due")
        if len(shard.data) > MAX_SHARD_BYTES:
            raise ProtocolError(f"{h._who}: shard {shard.index} has {len(shard.data)} bytes, more than "
                                f"{MAX_SHARD_BYTES}")
        self.message._add(shard)
        self._next += h.parts
        return self.done and self.message._finish(self.part)

    def check_ended(self) -> None:
        """The stream ended: raise unless this part is done."""
        if not self.done:
            h = self.header
            raise ProtocolError(f"{h._who}: stream ended inside part {self.part} of {h.parts} (shard {self._next} "
                                f"of {h.shard_count} was due)")
