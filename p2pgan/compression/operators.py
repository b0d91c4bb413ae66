"""``mixing.compression`` -> its operator (:func:`make_compressor`)."""

from __future__ import annotations

from p2pgan.compression.compressors import BF16Delta, Compressor, Int8Blocks
from p2pgan.compression.spec import parse_compression
from p2pgan.compression.topk import TopK


def make_compressor(spec: str, field: str = "mixing.compression") -> Compressor | None:
    """``mixing.compression`` -> its operator (None for ``none``: today's raw gossip); a one-line
    :class:`ConfigError` naming ``field`` otherwise."""
    kind, fraction = parse_compression(spec, field)
    if kind == "none":
        return None
    if kind == "topk":
        assert fraction is not None
        return TopK(fraction)
    return {"identity": Compressor, "bf16-delta": BF16Delta, "int8": Int8Blocks}[kind]()
