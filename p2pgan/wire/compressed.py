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
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch

from p2pgan.compression.choco import consensus_step
from p2pgan.compression.compressors import (
    Compressor, Delta, Encoded, applies_by_span, apply, apply_span, decode, ready_elements,
)
from p2pgan.compression.copies import NeighbourCopies, OwnCopy, digest
from p2pgan.errors import ProtocolError
from p2pgan.mixing.robust import BLOCK_ELEMENTS, RobustMixing
from p2pgan.wire import codec, outgoing, transport
from p2pgan.wire.frames import LITTLE_ENDIAN
from p2pgan.wire.connections import StripedLink

log = logging.getLogger(__name__)

#: how many rounds of copy digests :attr:`CompressedGossip.digests` keeps when recording
DIGEST_HISTORY = 1000


@dataclasses.dataclass(frozen=True)
class Incoming:
    """A checked compressed message: what moves the sender's copy to ``version``."""

    version: int
    delta: Delta


class CompressedGossip:
    """One peer's compressed-gossip state: its own public copy, its copies of the in-neighbours, link keys."""

    def __init__(self, compressor: Compressor, dim: int, *, gamma: float, key_interval: int) -> None:
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
        #: queue the messages while their payloads are written (False: write them in full first, as before
        #: the encoding streamed; scripts/bench_wan.py --one-pass times both)
        self.stream = True
        #: (step, round, own (version, digest), {in-neighbour: (version, digest)}) per round when recording
        self.record_digests = False
        self.digests: list[tuple[int, int, tuple[int, str], dict[str, tuple[int, str]]]] = []

    # -- sending ---------------------------------------------------------------------------------------
    def send(self, cur: torch.Tensor, step: int, r: int, outs: Sequence[str],
             link: Callable[[str], transport.Link | StripedLink],
             header: Callable[[Encoded, int], codec.MessageHeader], shard_bytes: int) -> int:
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
        streamed = self.stream and LITTLE_ENDIAN  # (codec.le_bytes copies a big-endian host's payload)
        if not streamed:
            fill(filling.advance)
        messages: dict[str, codec.OutgoingMessage] = {}

        def message(enc: Encoded) -> codec.OutgoingMessage:
            if enc.encoding not in messages:
                payload = codec.le_bytes(enc.payload)
                messages[enc.encoding] = codec.OutgoingMessage(
                    header(enc, len(payload)), payload, shard_bytes, filling=filling,
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
    def accept(self, h: codec.MessageHeader, vec: codec.ReceivedVector) -> Incoming:
        """The inbox's check of a complete message (server thread): the encoding is ours, the payload valid."""
        if h.encoding not in ("key", self.compressor.encoding):
            raise ProtocolError(f"{h._who}: encoding {h.encoding}, but this federation's mixing.compression is "
                                f"{self.compressor.name} (messages: key or {self.compressor.encoding})")
        delta = decode(h.encoding, vec.tensor(), h.element_count, block_elements=h.block_elements,
                       value_count=h.value_count, who=h._who)
        return Incoming(h.copy_version, delta)

    def stale(self, sender: str, item: object) -> None:
        """A checked message the mixer will not mix (its round has passed): keep the copy's chain whole."""
        if isinstance(item, Incoming):
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

