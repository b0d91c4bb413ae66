"""The receiving side of the wire format: frames parsed (canonical shards without a copy), a message's shards
checked and assembled into a vector read where gRPC delivered it; see :mod:`p2pgan.wire.codec`.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import warnings

import torch
from google.protobuf.message import DecodeError

from p2pgan.errors import ProtocolError
from p2pgan.logsafe import printable
from p2pgan.wire.frames import (
    ENCODING_OF_ENUM, ENCODINGS, LITTLE_ENDIAN, MIN_WIRE_SHARD_BYTES, NAME_OF_ENUM, SAME_WIDTH_INT, WIRE_DTYPES,
    MessageHeader, ShardView, checksum,
)
from p2pgan.wire.limits import MAX_SHARD_BYTES
from p2pgan.wire.v1 import gossip_pb2 as pb


class _NotCanonical(Exception):
    """Internal: the frame is not in our canonical shard layout; use the generated parser."""


def _read_varint(mv: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(mv) or shift > 63:
            raise _NotCanonical
        b = mv[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fast_shard(msg: bytes) -> ShardView:
    mv = memoryview(msg)
    body_len, pos = _read_varint(mv, 1)
    if pos + body_len != len(mv) or mv[pos] != 0x08:
        raise _NotCanonical
    index, pos = _read_varint(mv, pos + 1)
    if pos + 10 > len(mv) or mv[pos] != 0x11:
        raise _NotCanonical
    (csum,) = struct.unpack_from("<Q", mv, pos + 1)
    if mv[pos + 9] != 0x1A:
        raise _NotCanonical
    n, pos = _read_varint(mv, pos + 10)
    if pos + n != len(mv):
        raise _NotCanonical
    return ShardView(index, csum, mv[pos:])


def decode_frame(msg: bytes) -> MessageHeader | ShardView:
    """Parse one stream message; raise :class:`ProtocolError` if it is not a valid Frame."""
    if msg[:1] == b"\x12":
        try:
            return _fast_shard(msg)
        except _NotCanonical:
            pass
    try:
        frame = pb.Frame.FromString(msg)
    except DecodeError as exc:
        raise ProtocolError(f"undecodable frame of {len(msg)} bytes: {exc}") from None
    kind = frame.WhichOneof("kind")
    if kind == "shard":
        s = frame.shard
        return ShardView(s.index, s.checksum, memoryview(s.data))
    if kind == "header":
        h = frame.header
        if h.dtype not in NAME_OF_ENUM:
            raise ProtocolError(
                f"message from {printable(h.sender)}: dtype {h.dtype} is not one of {', '.join(WIRE_DTYPES)}"
            )
        if h.encoding not in ENCODING_OF_ENUM:
            raise ProtocolError(
                f"message from {printable(h.sender)}: encoding {h.encoding} is not one of {', '.join(ENCODINGS)}"
            )
        return MessageHeader(
            federation=h.federation, sender=h.sender, step=h.step, round=h.round,
            layout_digest=h.layout_digest, dtype=NAME_OF_ENUM[h.dtype],
            element_count=h.element_count, shard_count=h.shard_count,
            encoding=ENCODING_OF_ENUM[h.encoding], copy_version=h.copy_version,
            block_elements=h.block_elements, value_count=h.value_count, part=h.part, parts=h.parts,
        )
    if kind == "manifest":
        raise ProtocolError("a state manifest frame is only valid at the start of a FetchState reply")
    raise ProtocolError(f"empty frame of {len(msg)} bytes (neither header nor shard)")


@dataclasses.dataclass(frozen=True)
class ReceivedVector:
    """A complete, checked vector in the wire dtype, kept as read-only views of its received shards.

    Mixing reads the shards where gRPC delivered them, so a received vector is never copied into a
    contiguous buffer (one full pass over the payload saved per neighbour and round).
    """

    chunks: tuple[torch.Tensor, ...]

    def add_to(self, out: torch.Tensor, alpha: float) -> None:
        """``out += alpha * vector`` for a 1-D ``out`` of the same length."""
        offset = 0
        for chunk in self.chunks:
            n = chunk.numel()
            out[offset : offset + n].add_(chunk, alpha=alpha)
            offset += n

    def tensor(self) -> torch.Tensor:
        """The vector as one new contiguous tensor (a copy)."""
        return torch.cat(self.chunks)


def _readonly_view(data: memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over the bytes of a received frame; never written to (see :class:`ReceivedVector`)."""
    return torch.frombuffer(data, dtype=dtype)


# torch warns once per process that a tensor over an immutable buffer could be written through; ours
# are only read, so the one warning is consumed here rather than shown to the user mid-training
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _readonly_view(memoryview(b"\0"), torch.uint8)


class ShardAssembler:
    """Checks the shards of one message and keeps views of their data (no copy).

    ``verify_checksums=False`` skips the xxh3 of each shard: for messages that came over mutual TLS, whose
    AEAD records already authenticate every byte in transit (a checksum adds nothing against the sender
    itself, which could compute a valid one for any data). It saved about 3 % of a round's CPU (issue 11).
    Insecure links keep verifying; senders always fill the checksum in, so any receiver can check it.
    """

    def __init__(self, header: MessageHeader, *, verify_checksums: bool = True) -> None:
        self.header = header
        self._verify = verify_checksums
        self._data: list[memoryview] = []
        self._next = 0
        self._offset = 0

    @property
    def complete(self) -> bool:
        return self._next == self.header.shard_count

    @property
    def shards(self) -> list[memoryview]:
        """The data of the shards checked so far, in order (views of the received frames: read, never write)."""
        return self._data

    def add(self, shard: ShardView) -> None:
        h = self.header
        n = len(shard.data)
        if shard.index != self._next:
            raise ProtocolError(f"{h._who}: shard {shard.index} arrived where shard {self._next} was due")
        if n > MAX_SHARD_BYTES:
            raise ProtocolError(f"{h._who}: shard {shard.index} has {n} bytes, more than {MAX_SHARD_BYTES}")
        if self._offset + n > h.nbytes:
            raise ProtocolError(
                f"{h._who}: shards add up to more than the {h.nbytes} bytes of "
                f"{h.element_count} {h._what}"
            )
        last = shard.index == h.shard_count - 1
        if n == 0 or (not last and n < MIN_WIRE_SHARD_BYTES):
            raise ProtocolError(
                f"{h._who}: shard {shard.index} has {n} bytes; every shard but the last needs at least "
                f"{MIN_WIRE_SHARD_BYTES}, and none may be empty"
            )
        if last and self._offset + n != h.nbytes:
            raise ProtocolError(
                f"{h._who}: shards add up to {self._offset + n} bytes, expected {h.nbytes} "
                f"({h.element_count} {h._what})"
            )
        if self._verify and checksum(shard.data) != shard.checksum:
            raise ProtocolError(f"{h._who}: checksum mismatch in shard {shard.index}")
        self._data.append(shard.data)
        self._offset += n
        self._next += 1

    def vector(self) -> ReceivedVector:
        """The complete vector; checks that its values are finite."""
        h = self.header
        if not self.complete:
            raise ProtocolError(f"{h._who}: stream ended after {self._next} of {h.shard_count} shards")
        dtype, size = h.torch_dtype, h.torch_dtype.itemsize
        if LITTLE_ENDIAN and all(len(d) % size == 0 for d in self._data):
            chunks = tuple(_readonly_view(d, dtype) for d in self._data)
        else:  # shards that split an element, or a big-endian host: one contiguous (writable) copy
            raw = torch.cat([_readonly_view(d, torch.uint8) for d in self._data])
            if not LITTLE_ENDIAN:
                raw.view(SAME_WIDTH_INT[size]).numpy().byteswap(inplace=True)
            chunks = (raw.view(dtype),)
        for chunk in chunks if dtype.is_floating_point else ():  # int8 / top-k layouts: p2pgan.compression checks
            # Any NaN or inf makes the sum non-finite, so a finite sum proves all values finite at ~1/50 the
            # cost of isfinite().all(); a non-finite sum may also be an overflow of finite values: check exactly.
            if not math.isfinite(float(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
                raise ProtocolError(f"{h._who}: the vector holds non-finite values (NaN or inf)")
        return ReceivedVector(chunks)
