"""The wire format's vocabulary: a message's header, a received shard's view, the sizes and dtypes allowed.

What a Frame is and where its checks live is told in :mod:`p2pgan.wire.codec`; frames are written by
:mod:`p2pgan.wire.outgoing` and read by :mod:`p2pgan.wire.incoming`.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import torch
import xxhash

from p2pgan.compression import sparse
from p2pgan.errors import ProtocolError
from p2pgan.logsafe import printable
from p2pgan.wire.limits import MAX_CONNECTIONS, MAX_SHARD_BYTES
from p2pgan.wire.v1 import gossip_pb2 as pb

PROTOCOL_VERSION = 1
#: smallest configurable shard size (tiny shards only cost per-message overhead)
MIN_SHARD_BYTES = 4 * 1024
#: smallest shard a receiver accepts, except a message's last one: each shard costs the receiver a few
#: hundred bytes of bookkeeping, so 1 KiB keeps a message's memory within a small factor of its size
#: (4-byte shards raised a receiver from 500 MB to 787 MB per message; issue 9, case 3)
MIN_WIRE_SHARD_BYTES = 1024
#: largest vector accepted: 16 Gi elements would not fit anyone's memory anyway
MAX_ELEMENTS = 1 << 34

#: wire dtype name -> (torch dtype, protobuf enum)
WIRE_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "float32": (torch.float32, pb.FLOAT32),
    "bfloat16": (torch.bfloat16, pb.BFLOAT16),
    "float16": (torch.float16, pb.FLOAT16),
}
NAME_OF_ENUM = {enum: name for name, (_, enum) in WIRE_DTYPES.items()}
#: message encoding name -> protobuf enum (see ``Encoding`` in gossip.proto; p2pgan.compression makes them)
ENCODINGS: dict[str, int] = {
    "raw": pb.ENCODING_RAW, "key": pb.ENCODING_KEY, "bf16-delta": pb.ENCODING_BF16_DELTA,
    "int8": pb.ENCODING_INT8, "topk": pb.ENCODING_TOPK, "topk-spans": pb.ENCODING_TOPK_SPANS,
}
ENCODING_OF_ENUM = {enum: name for name, enum in ENCODINGS.items()}
#: the wire dtype each encoding other than raw requires (int8 and top-k: bytes laid out by the encoding)
ENCODING_DTYPES = {"key": "float32", "bf16-delta": "bfloat16", "int8": "float32", "topk": "float32",
                   "topk-spans": "float32"}
#: the encodings whose payload is bytes laid out by the encoding (p2pgan.compression reads them)
LAID_OUT = ("int8", "topk", "topk-spans")
#: the encodings that carry (index, value) pairs: value_count of them, 8 bytes each
SPARSE = ("topk", "topk-spans")
#: the largest vector a top-k message may describe: its int32 indices address no more
MAX_SPARSE_ELEMENTS = (1 << 31) - 1
#: bounds of an int8 message's block_elements (elements per float32 scale) and of a topk-spans message's (per span)
MIN_BLOCK_ELEMENTS, MAX_BLOCK_ELEMENTS = 16, 1 << 20
LITTLE_ENDIAN = sys.byteorder == "little"
SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def checksum(data: bytes | memoryview) -> int:
    """xxh3_64 of ``data``: ~50 GB/s, so verifying every shard costs well under a millisecond per MB."""
    return xxhash.xxh3_64_intdigest(data)


@dataclasses.dataclass(frozen=True)
class MessageHeader:
    """The header of one parameter message (see ``Header`` in gossip.proto)."""

    federation: str
    sender: str
    step: int
    round: int
    layout_digest: str
    dtype: str  # a key of WIRE_DTYPES
    element_count: int
    shard_count: int
    encoding: str = "raw"  # a key of ENCODINGS
    copy_version: int = 0  # compressed gossip: the sender's public copy version once this message is applied
    block_elements: int = 0  # int8: elements per scale; topk-spans: elements per span
    value_count: int = 0  # topk, topk-spans: (index, value) pairs
    #: striping (p2pgan.wire.striping): this stream carries shards part, part + parts, ...; parts <= 1: all
    part: int = 0
    parts: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the shard bytes are read as: the wire dtype, or bytes for the int8 and top-k layouts."""
        return torch.uint8 if self.encoding in LAID_OUT else WIRE_DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        if self.encoding == "int8":
            return math.ceil(self.element_count / max(1, self.block_elements)) * 4 + self.element_count
        if self.encoding == "topk-spans":  # a table of int32 counts, one per span, then the pairs
            return sparse.payload_bytes(self.element_count, self.value_count, max(1, self.block_elements))
        if self.encoding in SPARSE:
            return self.value_count * 8
        return self.element_count * self.torch_dtype.itemsize

    def check_sizes(self) -> None:
        """Raise :class:`ProtocolError` unless element and shard counts are consistent and bounded."""
        if not 1 <= self.element_count <= MAX_ELEMENTS:
            raise ProtocolError(f"{self._who}: element_count {self.element_count} is outside 1..{MAX_ELEMENTS}")
        need = ENCODING_DTYPES.get(self.encoding)
        if need is not None and self.dtype != need:
            raise ProtocolError(f"{self._who}: a {self.encoding} message must say dtype {need}, not {self.dtype}")
        blocked = self.encoding in ("int8", "topk-spans")
        if blocked and not MIN_BLOCK_ELEMENTS <= self.block_elements <= MAX_BLOCK_ELEMENTS:
            raise ProtocolError(f"{self._who}: block_elements {self.block_elements} is outside "
                                f"{MIN_BLOCK_ELEMENTS}..{MAX_BLOCK_ELEMENTS}")
        if self.encoding in SPARSE and self.element_count > MAX_SPARSE_ELEMENTS:
            raise ProtocolError(f"{self._who}: a {self.encoding} message of {self.element_count} elements (its int32 "
                                f"indices address at most {MAX_SPARSE_ELEMENTS})")
        if self.encoding in SPARSE and not 1 <= self.value_count <= self.element_count:
            raise ProtocolError(f"{self._who}: value_count {self.value_count} is outside 1..{self.element_count} "
                                "(the element count)")
        if self.parts > 1 and not (self.parts <= min(MAX_CONNECTIONS, self.shard_count) and self.part < self.parts):
            raise ProtocolError(f"{self._who}: part {self.part} of {self.parts} (allowed: parts up to "
                                f"{MAX_CONNECTIONS} and the shard count {self.shard_count}, part below parts)")
        if self.parts <= 1 and self.part != 0:
            raise ProtocolError(f"{self._who}: part {self.part} of a message that is not striped")
        lo = math.ceil(self.nbytes / MAX_SHARD_BYTES)
        hi = max(1, math.ceil(self.nbytes / MIN_WIRE_SHARD_BYTES))
        if not lo <= self.shard_count <= hi:
            raise ProtocolError(
                f"{self._who}: shard_count {self.shard_count} does not fit {self.nbytes} bytes "
                f"(allowed {lo}..{hi}: shards of {MIN_WIRE_SHARD_BYTES}..{MAX_SHARD_BYTES} bytes, the last one smaller)"
            )

    @property
    def _what(self) -> str:
        return f"{self.dtype} elements" if self.encoding == "raw" else f"elements, {self.encoding}-encoded"

    @property
    def _who(self) -> str:
        return f"message from {printable(self.sender)} (step {self.step}, round {self.round})"

    def to_frame(self) -> bytes:
        return pb.Frame(
            header=pb.Header(
                federation=self.federation, sender=self.sender, step=self.step, round=self.round,
                layout_digest=self.layout_digest, dtype=WIRE_DTYPES[self.dtype][1],
                element_count=self.element_count, shard_count=self.shard_count,
                encoding=ENCODINGS[self.encoding], copy_version=self.copy_version,
                block_elements=self.block_elements, value_count=self.value_count,
                part=self.part, parts=self.parts,
            )
        ).SerializeToString()


@dataclasses.dataclass(frozen=True)
class ShardView:
    """A received shard; ``data`` is a view into the received frame (no copy)."""

    index: int
    checksum: int
    data: memoryview
