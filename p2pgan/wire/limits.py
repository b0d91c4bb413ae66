"""Size limits of the wire that code outside the codec needs too (channel options), without the codec's torch."""

from __future__ import annotations

#: largest shard accepted (and sent); gRPC's default message limit is 4 MiB, we raise it a little
MAX_SHARD_BYTES = 4 * 1024 * 1024
#: room for the frame tags and varints around a shard's data
FRAME_OVERHEAD_BYTES = 64
#: most gRPC connections per neighbour (mixing.connections), hence most parts a message is striped into
MAX_CONNECTIONS = 16
