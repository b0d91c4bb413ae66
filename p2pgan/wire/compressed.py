"""Compressed gossip on the wire: the gRPC mixer's rounds with CHOCO public copies (issue 18).

:mod:`p2pgan.compression` has the operators and the copies; this module decides, per round and per
out-neighbour, whether a link gets the round's delta or a key (the public copy in full), frames both
with :mod:`p2pgan.wire.codec`, checks what arrives (:meth:`CompressedGossip.accept`, run by the inbox on
every complete message: a malformed payload is refused with INVALID_ARGUMENT), and mixes the round on
the copies (:meth:`CompressedGossip.combine`).

A link gets a key when its stream is new (a (re)connect: whoever is at the other end may have no copy
or an old one), when its last message was skipped (not sent: the other end's copy missed a version),
every ``key_interval`` steps, and on every link in the first round and after a jump in steps (a state
transfer or a rejoin reset this peer's vector). A receiver applies a delta only to a copy at the
delta's base version; a delta it cannot apply leaves that neighbour out of the round (its weight goes
to the self weight, as for a missed deadline, without marking it absent) until its next key. Messages
the mixer never mixes (they arrived after their round) are still applied to the copy, in stream order,
so a late message does not break the chain.

A round's CPU overlaps its link at both ends (:attr:`CompressedGossip.overlap`): the sender queues its
messages before it writes their payloads and a link sends each shard once it is written
(:meth:`~p2pgan.compression.compressors.Compressor.encode_stream`: int8's scales then its codes a chunk at a
time, bf16-delta in order, top-k a span of :mod:`p2pgan.compression.sparse` at a time); a receiver moves a
neighbour's copy by a delta as its shards arrive (:meth:`CompressedGossip.arrive`; top-k a whole span at a
time), when the copy is free, so that only the mix is left when the last shard lands. The numbers are those
of the serial round, bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch

from p2pgan.compression.arriving import ARRIVING, ArrivingDelta, ArrivingPairs, arriving
from p2pgan.compression.choco import consensus_step
from p2pgan.compression.compressors import (
    Compressor, Delta, Encoded, applies_by_span, apply, apply_span, decode, ready_elements,
)
from p2pgan.compression.copies import NeighbourCopies, OwnCopy, digest
from p2pgan.errors import ProtocolError
from p2pgan.mixing.robust import BLOCK_ELEMENTS, RobustMixing
from p2pgan.wire import codec, outgoing, transport
from p2pgan.wire.connections import StripedLink
from p2pgan.wire.frames import LITTLE_ENDIAN

log = logging.getLogger(__name__)

#: how many rounds of copy digests :attr:`CompressedGossip.digests` keeps when recording
DIGEST_HISTORY = 1000
#: the largest shard of an overlapped round (``network.shard_bytes`` if smaller): the unit in which a payload
#: leaves while it is written and is applied while it arrives. 256 KiB is 21 ms on a 100 Mbit/s link and
#: ~0.6 ms of one core to encode or apply; 2 MiB shards would leave an 8.36 MB model's int8 message (2.1 MB)
#: almost nothing to overlap
OVERLAP_SHARD_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Incoming:
    """A checked compressed message: what moves the sender's copy to ``version`` (None: it has moved it, as
    it arrived; see :meth:`CompressedGossip.arrive`)."""

    version: int
    delta: Delta | None


class CompressedGossip:
    """One peer's compressed-gossip state: its own public copy, its copies of the in-neighbours, link keys."""

    def __init__(self, compressor: Compressor, dim: int, *, gamma: float, key_interval: int,
                 overlap: bool = True) -> None:
        self.compressor = compressor
        self.dim = dim
        self.gamma = gamma
        self.key_interval = key_interval
        self.own = OwnCopy(compressor, dim)
        self.copies = NeighbourCopies()
        self._sent_on: dict[str, int] = {}  # peer -> link generation its last message went out on
        self._needs_key: set[str] = set()
        self._last_step: int | None = None
        self._key_messages: list[codec.OutgoingMessage] = []  # read own.copy in place until detached
        self.keys_sent = 0
        self.deltas_sent = 0
        #: overlap the round's CPU with its link: send a payload while it is written, and move a neighbour's
        #: copy while its delta arrives (False, ``mixing.streaming: false``: encode whole, then send; apply
        #: whole, then mix; scripts/bench_wan.py --serial times both)
        self.overlap = overlap
        #: (sender, step, round, version) -> the message moving its copy as it arrives
        self._arriving: dict[tuple[str, int, int, int], ArrivingDelta | ArrivingPairs] = {}
        #: (step, round, own (version, digest), {in-neighbour: (version, digest)}) per round when recording
        self.record_digests = False
        self.digests: list[tuple[int, int, tuple[int, str], dict[str, tuple[int, str]]]] = []

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, cur: torch.Tensor, step: int, r: int, outs: Sequence[str],
             link: Callable[[str], transport.Link | StripedLink],
             header: Callable[[Encoded, int, int], codec.MessageHeader], shard_bytes: int) -> int:
        """Advance the own copy toward ``cur`` and send each of ``outs`` its delta or a key; returns bytes sent.

        The messages are queued on the links before their payloads are written, so that a link sends each
        shard as soon as it is final while the rest is encoded (int8's scales first, then its codes and the
        copy a chunk at a time): the encoding overlaps the link instead of coming before it."""
        for message in self._key_messages:  # the copy changes now: what a slow link has not sent is built first
            message.detach()
        self._key_messages = []
        jumped = self._last_step is not None and step not in (self._last_step, self._last_step + 1)
        self._last_step = step
        if jumped:
            self.own.reset()
        key_round = r == 0 and self.key_interval > 0 and step % self.key_interval == 0
        delta, key, fill = self.own.begin(cur, key_round)
        filling = outgoing.Filling(self.dim)
        streamed = self.overlap and LITTLE_ENDIAN  # (codec.le_bytes copies a big-endian host's payload)
        if self.overlap:
            shard_bytes = min(shard_bytes, OVERLAP_SHARD_BYTES)
        if not streamed:
            fill(filling.advance)
        messages: dict[str, codec.OutgoingMessage] = {}

        def message(enc: Encoded) -> codec.OutgoingMessage:
            if enc.encoding not in messages:
                payload = codec.le_bytes(enc.payload)
                messages[enc.encoding] = codec.OutgoingMessage(
                    header(enc, len(payload), shard_bytes), payload, shard_bytes, filling=filling,
                    needs=lambda end: ready_elements(enc, self.dim, end))
                if enc.encoding == "key":
                    self._key_messages.append(messages[enc.encoding])
            return messages[enc.encoding]

        sent = 0
        for pid in outs:
            ln = link(pid)
            wants_key = delta is None or pid in self._needs_key or ln.fresh or self._sent_on.get(pid) != ln.generation
            msg = message(key if wants_key else delta)  # type: ignore[arg-type]
            nbytes = ln.send_message(msg)
            if nbytes:
                sent += nbytes
                self._sent_on[pid] = ln.generation
                self._needs_key.discard(pid)
                if wants_key:
                    self.keys_sent += 1
                else:
                    self.deltas_sent += 1
            else:
                self._needs_key.add(pid)  # its copy misses this version: a key next time
        if streamed:
            try:  # the links send each shard as soon as it is written (Compressor.encode_stream)
                fill(filling.advance)
            except BaseException:
                filling.fail()
                raise
        return sent

    # -- receiving -------------------------------------------------------------------------------------
    def arrive(self, h: codec.MessageHeader, shards: Sequence[memoryview]) -> None:
        """The inbox's call after each checked shard of an unstriped message (server thread; ``shards``: all of
        the message's so far). A delta moves its copy as it arrives, once the copy is free
        (:meth:`NeighbourCopies.claim`: at the delta's base version, its last message taken, the mixer not
        mixing); until then the shards wait in the inbox as always, and the first free moment applies them
        all. A malformed byte raises :class:`ProtocolError` (the stream is refused; :meth:`broken` follows)."""
        if not self.overlap or h.parts > 1 or h.encoding != self.compressor.encoding or h.encoding not in ARRIVING:
            return  # (a message of another encoding is refused whole by accept(), its copy untouched)
        key = (h.sender, h.step, h.round, h.copy_version)
        state = self._arriving.get(key)
        if state is None:
            copy = self.copies.claim(h.sender, h.copy_version)
            if copy is None:
                return
            state = self._arriving[key] = arriving(h.encoding, copy, block_elements=h.block_elements,
                                                   value_count=h.value_count, who=h._who)
            for data in shards:
                state.feed(data)
        else:
            state.feed(shards[-1])

    def broken(self, h: codec.MessageHeader) -> None:
        """The inbox's call when an unstriped message ends before it is delivered: a copy it half moved is
        forgotten (the sender's next message on a new stream is a key)."""
        if self._arriving.pop((h.sender, h.step, h.round, h.copy_version), None) is not None:
            self.copies.drop_claim(h.sender)

    def accept(self, h: codec.MessageHeader, vec: codec.ReceivedVector) -> Incoming:
        """The inbox's check of a complete message (server thread): the encoding is ours, the payload valid."""
        if h.encoding != "key" and h.encoding not in self.compressor.accepts:
            raise ProtocolError(f"{h._who}: encoding {h.encoding}, but this federation's mixing.compression is "
                                f"{self.compressor.name} (messages: key or {' or '.join(self.compressor.accepts)})")
        state = self._arriving.pop((h.sender, h.step, h.round, h.copy_version), None)
        if state is not None:  # applied while it arrived, and checked shard by shard on the way
            if state.complete:
                self.copies.settle(h.sender, h.copy_version)
                return Incoming(h.copy_version, None)
            self.copies.drop_claim(h.sender)  # (not reached: a complete message was fed whole)
        delta = decode(h.encoding, vec.tensor(), h.element_count, block_elements=h.block_elements,
                       value_count=h.value_count, who=h._who)
        return Incoming(h.copy_version, delta)

    def stale(self, sender: str, item: object) -> None:
        """A checked message the mixer will not mix (its round has passed): keep the copy's chain whole."""
        if isinstance(item, Incoming):
            if item.delta is None:
                self.copies.consumed(sender)
            else:
                self.copies.apply(sender, item.version, item.delta)

    # -- mixing ----------------------------------------------------------------------------------------
    def combine(self, cur: torch.Tensor, robust: RobustMixing, self_id: str, row: dict[str, float],
                got: dict[str, object], step: int, r: int) -> tuple[torch.Tensor, set[str]]:
        """The round's result on the copies (see :mod:`p2pgan.compression.choco`) and the neighbours left out
        because their message did not fit the copy held (``row``: peer -> live weight, self included)."""
        label = f"step {step} round {r}"
        out_of_step: set[str] = set()
        with self.copies.lock:
            pending: list[tuple[torch.Tensor, Delta]] = []  # dense updates, made span by span in the mixing pass
            for pid, item in got.items():
                if not isinstance(item, Incoming):
                    continue
                if item.delta is None:  # the copy moved while the message arrived: it is at item.version
                    self.copies.consumed(pid)
                    continue
                copy = self.copies.admit(pid, item.version, item.delta)
                if copy is None:
                    out_of_step.add(pid)
                    log.debug("%s: the copy of %s is not at the base of its delta; awaiting a key", label, pid)
                elif applies_by_span(item.delta, BLOCK_ELEMENTS):
                    pending.append((copy, item.delta))
                else:
                    apply(copy, item.delta)
            work = torch.empty(min(self.dim, BLOCK_ELEMENTS), dtype=torch.float32) if pending else None

            def complete(lo: int, hi: int) -> None:  # the copies' span, just before the mixing pass reads it
                for copy, delta in pending:
                    apply_span(copy, delta, lo, hi, work)  # type: ignore[arg-type]

            own = self.own.copy
            assert own is not None
            weight = dict(row)
            for pid in out_of_step:
                weight[self_id] += weight.pop(pid)
            shares = [(pid, codec.ReceivedVector((c,)), w) for pid, w in weight.items()
                      if pid != self_id and pid in got and (c := self.copies.get(pid)) is not None]
            if shares:  # one pass: copies completed, mixed and moved by the consensus step a span at a time
                result = robust.combine(
                    own, weight[self_id], shares, r, label, before=complete,
                    after=lambda lo, hi, out: consensus_step(cur[lo:hi], own[lo:hi], out, self.gamma))
            else:  # nobody to mix with: x stays as it is (as raw gossip's x * 1.0); the copies still move
                for copy, delta in pending:
                    apply(copy, delta)
                result = cur.clone()
            if self.record_digests:
                self.digests.append((step, r, (self.own.version, digest(own)), self.copies.digests()))
                del self.digests[:-DIGEST_HISTORY]
        return result, out_of_step

