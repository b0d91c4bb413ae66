"""Tensor <-> wire frames: one Header frame, then Shard frames of raw little-endian bytes. Never pickle.

The frames are protobuf ``p2pgan.wire.v1.Frame`` messages. Shard frames sit on the hot path, so they
are written and read by hand in canonical protobuf encoding: the data bytes are copied once from
the tensor into the frame on the way out, and not at all on the way in: a received vector is read
where gRPC delivered it (:class:`ReceivedVector`; a generated-class parse would copy them again). Any
other valid protobuf encoding of a Frame (another implementation, another field order) falls back to
the generated parser, so the format is exactly what ``protos/p2pgan/wire/v1/gossip.proto`` says.

A header's ``encoding`` says how its shard bytes are read: ``raw`` (the vector in ``dtype``, as before
compressed gossip existed) or one of :mod:`p2pgan.compression`'s (``key``, ``bf16-delta``: float payloads,
checked finite here; ``int8``, ``topk``, ``topk-spans``: byte layouts whose sizes are checked here and whose contents
:func:`p2pgan.compression.compressors.decode` checks).

Structure checks live in the codec (sizes add up, shard order, checksums, finite values, oversize); checks
that need the receiver's context (federation, sender identity, layout, step window) live in
:mod:`p2pgan.wire.inbox`.

The rooms: :mod:`p2pgan.wire.frames` (the header, shard views, sizes and dtypes), :mod:`p2pgan.wire.outgoing`
(tensor -> frames, made on demand) and :mod:`p2pgan.wire.incoming` (frames -> checked vector). This module
names them all, as callers use them (``codec.MessageHeader``, ``codec.OutgoingMessage``, ``codec.decode_frame``).
"""

from p2pgan.wire.frames import (
    ENCODING_DTYPES, ENCODINGS, MAX_BLOCK_ELEMENTS, MAX_ELEMENTS, MIN_BLOCK_ELEMENTS, MIN_SHARD_BYTES,
    MIN_WIRE_SHARD_BYTES, PROTOCOL_VERSION, WIRE_DTYPES, MessageHeader, ShardView, checksum,
)
from p2pgan.wire.incoming import ReceivedVector, ShardAssembler, decode_frame
from p2pgan.wire.limits import FRAME_OVERHEAD_BYTES, MAX_CONNECTIONS, MAX_SHARD_BYTES
from p2pgan.wire.outgoing import OutgoingMessage, encode, le_bytes, shard_count, shard_frame

__all__ = [
    "ENCODINGS", "ENCODING_DTYPES", "FRAME_OVERHEAD_BYTES", "MAX_BLOCK_ELEMENTS", "MAX_CONNECTIONS", "MAX_ELEMENTS",
    "MAX_SHARD_BYTES", "MIN_BLOCK_ELEMENTS", "MIN_SHARD_BYTES", "MIN_WIRE_SHARD_BYTES", "PROTOCOL_VERSION",
    "WIRE_DTYPES", "MessageHeader", "OutgoingMessage", "ReceivedVector", "ShardAssembler", "ShardView", "checksum",
    "decode_frame", "encode", "le_bytes", "shard_count", "shard_frame",
]
