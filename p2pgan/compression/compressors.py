"""The compression operators Q of compressed gossip: a difference vector -> a few bytes -> the same update.

Every operator has three parts, shared by the sender and its receivers so that both ends change their
public copies by exactly the same numbers (CHOCO-SGD, Koloskova et al. 2019; :mod:`p2pgan.compression.copies`):

- :meth:`Compressor.encode`: the difference ``x - x_hat`` -> an :class:`Encoded` (the payload tensor the
  wire sends as raw little-endian bytes, and the header fields that describe it);
- :func:`decode`: a received payload -> a :class:`Delta`, checked (counts match, int8 codes in
  -127..127, scales finite and within :data:`MAX_SCALE`, top-k indices strictly increasing and in range,
  values finite); a malformed payload raises :class:`~p2pgan.errors.ProtocolError`;
- :func:`apply`: ``x_hat += delta`` in place.

The sender decodes its own payload and applies it, so nothing but the payload decides the update.
Operators: ``bf16-delta`` (the difference in bfloat16: 2 bytes per element), ``int8`` (blockwise absmax:
one float32 scale per :data:`INT8_BLOCK` elements and one signed byte per element, ~1.016 bytes per
element) and ``topk`` (the ``fraction`` largest differences as int32 index + float32 value: 8 bytes each).
``identity`` sends the public copy in full every round (a key): the CHOCO path without loss, for tests.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from p2pgan.compression.spec import parse_compression
from p2pgan.errors import ProtocolError

#: elements per float32 scale of int8 (the block size of bitsandbytes' and Hivemind's 8-bit codecs)
INT8_BLOCK = 256
#: the largest int8 scale accepted: 127 * scale stays far inside float32's range
MAX_SCALE = 1e30
#: the int8 codes used (-128 is never sent: the code range is symmetric)
INT8_MAX = 127


@dataclasses.dataclass(frozen=True)
class Encoded:
    """What one message carries: ``payload`` (sent as its raw little-endian bytes) and its header fields."""

    encoding: str  # a key of p2pgan.wire.codec.ENCODINGS other than raw
    payload: torch.Tensor  # 1-D: bfloat16 (bf16-delta), uint8 (int8, topk) or float32 (key)
    block_elements: int = 0
    value_count: int = 0


@dataclasses.dataclass(frozen=True)
class Delta:
    """A checked update of a public copy (see :func:`apply`)."""

    encoding: str
    values: torch.Tensor  # bf16-delta: bfloat16 [n]; int8: int8 [n]; topk: float32 [k]; key: float32 [n]
    scales: torch.Tensor | None = None  # int8: float32 [ceil(n / block)]
    indices: torch.Tensor | None = None  # topk: int64 [k], strictly increasing
    block: int = 0

    @property
    def is_key(self) -> bool:
        return self.encoding == "key"


class Compressor:
    """``Q``: compresses the difference between a vector and its public copy (see module docstring)."""

    name = "identity"
    encoding = "key"
    #: bytes per element on the wire, for the docs and the benchmark's expectations
    bytes_per_element = 4.0

    def encode(self, delta: torch.Tensor) -> Encoded:
        return Encoded("key", delta.detach().to(torch.float32).contiguous())

    @property
    def exact(self) -> bool:
        """Sends whole public copies (keys) only: the copy always equals the vector."""
        return self.encoding == "key"


class BF16Delta(Compressor):
    name = encoding = "bf16-delta"
    bytes_per_element = 2.0

    def encode(self, delta: torch.Tensor) -> Encoded:
        return Encoded("bf16-delta", delta.detach().to(torch.bfloat16).contiguous())


class Int8Blocks(Compressor):
    name = encoding = "int8"

    def __init__(self, block: int = INT8_BLOCK) -> None:
        self.block = block
        self.bytes_per_element = 1.0 + 4.0 / block

    def encode(self, delta: torch.Tensor) -> Encoded:
        n, b = delta.numel(), self.block
        nb, full = math.ceil(n / b), (n // b) * b
        delta = delta.detach().to(torch.float32).reshape(-1)
        scales = torch.empty(nb, dtype=torch.float32)
        codes = torch.empty(n, dtype=torch.float32)
        parts = [(delta[:full].view(-1, b), scales[: full // b], codes[:full].view(-1, b))] if full else []
        if full < n:
            parts.append((delta[full:].view(1, -1), scales[full // b :], codes[full:].view(1, -1)))
        for blocks, scale, out in parts:
            torch.amax(blocks.abs(), dim=1, out=scale)
            scale.div_(INT8_MAX)
            inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
            torch.mul(blocks, inverse.unsqueeze(1), out=out)
        codes.round_().clamp_(-INT8_MAX, INT8_MAX)
        payload = torch.cat([scales.view(torch.uint8), codes.to(torch.int8).view(torch.uint8)])
        return Encoded("int8", payload, block_elements=b)


class TopK(Compressor):
    name = encoding = "topk"
    bytes_per_element = 0.0  # 8 bytes per kept element: 8 * fraction

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.name = f"topk:{fraction:g}"
        self.bytes_per_element = 8.0 * fraction

    def count(self, n: int) -> int:
        return max(1, min(n, round(self.fraction * n)))

    def encode(self, delta: torch.Tensor) -> Encoded:
        n = delta.numel()
        k = self.count(n)
        idx = _largest(delta.detach().abs(), k).sort().values
        values = delta[idx].to(torch.float32)
        payload = torch.cat([idx.to(torch.int32).view(torch.uint8), values.view(torch.uint8)])
        return Encoded("topk", payload, value_count=k)


#: top-k: elements of the strided sample that estimates the selection threshold (see :func:`_largest`)
TOPK_SAMPLE = 65536


def _largest(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of ``magnitude`` (exactly those of ``torch.topk``, ties aside).

    ``torch.topk`` over the whole vector costs ~80 ns per element on one core; here a strided sample
    estimates a threshold a little below the k-th largest value, a single comparison pass keeps the
    candidates above it, and ``topk`` runs on those only. A threshold that keeps fewer than ``k``
    candidates (a skewed sample) falls back to the full ``topk``.
    """
    n = magnitude.numel()
    if n <= 4 * TOPK_SAMPLE or k * 4 > n:
        return torch.topk(magnitude, k, sorted=False).indices
    stride = n // TOPK_SAMPLE
    sample = magnitude[::stride]
    q = max(0, sample.numel() - 1 - int(2 * k / n * sample.numel()) - 16)  # ~2k candidates expected
    threshold = sample.kthvalue(q + 1).values
    candidates = torch.nonzero(magnitude >= threshold).squeeze(1)
    if candidates.numel() < k:
        return torch.topk(magnitude, k, sorted=False).indices
    return candidates[torch.topk(magnitude[candidates], k, sorted=False).indices]


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


# -- the receiving side ----------------------------------------------------------------------------------
def decode(encoding: str, payload: torch.Tensor, n: int, *, block_elements: int = 0, value_count: int = 0,
           who: str = "message") -> Delta:
    """A received payload (1-D: float32 for key, bfloat16 for bf16-delta, uint8 bytes for int8 and topk)
    of a vector of ``n`` elements -> a checked :class:`Delta`; :class:`ProtocolError` if it is malformed.

    The wire layer already checked that the byte count matches the header and that float payloads are
    finite; the checks here are the ones only the encoding knows.
    """
    if encoding in ("key", "bf16-delta"):
        if payload.numel() != n:
            raise ProtocolError(f"{who}: {payload.numel()} values for a vector of {n} elements")
        return Delta(encoding, payload)
    raw = payload.view(torch.uint8)
    if encoding == "int8":
        if block_elements < 1:
            raise ProtocolError(f"{who}: int8 needs block_elements >= 1, got {block_elements}")
        nb = math.ceil(n / block_elements)
        if raw.numel() != 4 * nb + n:
            raise ProtocolError(f"{who}: int8 payload of {raw.numel()} bytes, expected {4 * nb + n} "
                                f"({nb} scales and {n} codes)")
        raw = raw.contiguous()
        scales = raw[: 4 * nb].view(torch.float32)
        codes = raw[4 * nb :].view(torch.int8)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()) or bool((scales > MAX_SCALE).any()):
            raise ProtocolError(f"{who}: an int8 scale is negative, non-finite or above {MAX_SCALE:g}")
        if bool((codes == -128).any()):
            raise ProtocolError(f"{who}: int8 code -128 is outside -{INT8_MAX}..{INT8_MAX}")
        return Delta("int8", codes, scales=scales, block=block_elements)
    if encoding == "topk":
        k = value_count
        if not 1 <= k <= n or raw.numel() != 8 * k:
            raise ProtocolError(f"{who}: topk payload of {raw.numel()} bytes for value_count {k} "
                                f"(expected 8 * value_count, value_count in 1..{n})")
        raw = raw.contiguous()
        indices = raw[: 4 * k].view(torch.int32).to(torch.int64)
        values = raw[4 * k :].view(torch.float32)
        if int(indices[0]) < 0 or int(indices[-1]) >= n:
            raise ProtocolError(f"{who}: a topk index is outside 0..{n - 1}")
        if k > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise ProtocolError(f"{who}: topk indices must be strictly increasing (sorted, no repeats)")
        if not bool(torch.isfinite(values).all()):
            raise ProtocolError(f"{who}: a topk value is not finite")
        return Delta("topk", values, indices=indices)
    raise ProtocolError(f"{who}: encoding {encoding!r} carries no compressed update")


def apply(copy: torch.Tensor, delta: Delta) -> None:
    """``copy += delta`` in place (``copy``: 1-D, float32 on the wire; the simulator's float64 too); a key
    replaces the copy. The update is computed in float32, then added in the copy's dtype."""
    if delta.encoding == "key":
        copy.copy_(delta.values)
    elif delta.encoding == "bf16-delta":
        copy.add_(delta.values.to(copy.dtype))
    elif delta.encoding == "int8":
        assert delta.scales is not None
        n, b = copy.numel(), delta.block
        full = (n // b) * b
        codes = delta.values.to(torch.float32)
        if full:
            update = codes[:full].view(-1, b) * delta.scales[: full // b].unsqueeze(1)
            copy[:full].view(-1, b).add_(update.to(copy.dtype))
        if full < n:
            copy[full:].add_((codes[full:] * delta.scales[-1]).to(copy.dtype))
    elif delta.encoding == "topk":
        assert delta.indices is not None
        copy.index_add_(0, delta.indices, delta.values.to(copy.dtype))
    else:
        raise ValueError(f"no update of encoding {delta.encoding!r}")


def self_decode(enc: Encoded, n: int) -> Delta:
    """The sender's own reading of what it sends (the same :func:`decode` its receivers run)."""
    return decode(enc.encoding, enc.payload, n, block_elements=enc.block_elements, value_count=enc.value_count)
