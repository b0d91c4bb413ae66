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
element) and ``topk`` (the ``fraction`` largest differences of every span as int32 index + float32 value: 8
bytes each; :mod:`p2pgan.compression.topk`, its layouts :mod:`p2pgan.compression.sparse`'s).
:func:`p2pgan.compression.operators.make_compressor` makes the operator of a ``mixing.compression``.
``identity`` sends the public copy in full every round (a key): the CHOCO path without loss, for tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from p2pgan.compression import sparse
from p2pgan.errors import ProtocolError

#: elements per float32 scale of int8 (the block size of bitsandbytes' and Hivemind's 8-bit codecs)
INT8_BLOCK = 256
#: the largest int8 scale accepted: 127 * scale stays far inside float32's range
MAX_SCALE = 1e30
#: the int8 codes used (-128 is never sent: the code range is symmetric)
INT8_MAX = 127
#: elements per pass of the chunked loops (1 MiB of float32: a pass stays in cache instead of going through
#: a fresh vector-sized temporary; a multiple of INT8_BLOCK)
CHUNK = 1 << 18


#: writes an :class:`Encoded`'s payload, telling ``progress`` how many elements are done (see
#: :meth:`Compressor.encode_stream`)
Fill = Callable[[Callable[[int], None]], None]


def no_progress(done: int) -> None:
    """The progress of a fill nobody waits on."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """What one message carries: ``payload`` (sent as its raw little-endian bytes) and its header fields."""

    encoding: str  # a key of p2pgan.wire.codec.ENCODINGS other than raw
    payload: torch.Tensor  # 1-D: bfloat16 (bf16-delta), uint8 (int8, topk-spans) or float32 (key)
    block_elements: int = 0  # int8: elements per scale; topk-spans: elements per span
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

    def encode_step(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> Encoded:
        """The sender's round: ``enc = encode(x - copy)``, then ``copy`` += what receivers decode from ``enc``
        (exactly :func:`apply` of :func:`self_decode`); ``scratch`` is a float32 vector like ``x`` to work in.

        Dense operators override this with one chunked pass (the difference, its encoding and the copy's update
        while a chunk is in cache: half the memory traffic of the three passes); the numbers are the same.
        """
        enc = self.encode(torch.sub(x, copy, out=scratch))
        apply(copy, self_decode(enc, copy.numel()))
        return enc

    def encode_stream(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> tuple[Encoded, Fill]:
        """:meth:`encode_step` in two parts, so that a message can go out while it is being made: the
        :class:`Encoded` whose payload is still to be written, and ``fill(progress)``, which writes it and
        updates ``copy`` and calls ``progress(done)`` as it goes, ``done`` the elements of ``copy`` updated so
        far (see :func:`ready_elements` for the payload bytes final then). Same numbers as :meth:`encode_step`.

        Here (top-k, identity) the payload is made at once and ``fill`` only reports it done; the dense
        operators override it to write their payload in order, a chunk at a time."""
        enc = self.encode_step(x, copy, scratch)
        return enc, lambda progress: progress(copy.numel())

    @property
    def accepts(self) -> tuple[str, ...]:
        """The delta encodings a receiver takes from a neighbour in this operator's federation."""
        return (self.encoding,)

    @property
    def exact(self) -> bool:
        """Sends whole public copies (keys) only: the copy always equals the vector."""
        return self.encoding == "key"


class BF16Delta(Compressor):
    name = encoding = "bf16-delta"
    bytes_per_element = 2.0

    def encode(self, delta: torch.Tensor) -> Encoded:
        return Encoded("bf16-delta", delta.detach().to(torch.bfloat16).contiguous())

    def encode_step(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> Encoded:
        enc, fill = self.encode_stream(x, copy, scratch)
        fill(no_progress)
        return enc

    def encode_stream(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> tuple[Encoded, Fill]:
        n = x.numel()
        payload = torch.empty(n, dtype=torch.bfloat16)

        def fill(progress: Callable[[int], None]) -> None:
            for lo in range(0, n, CHUNK):
                hi = min(n, lo + CHUNK)
                work = torch.sub(x[lo:hi], copy[lo:hi], out=scratch[lo:hi])
                payload[lo:hi].copy_(work)
                work.copy_(payload[lo:hi])  # what apply() adds: the bfloat16 value in float32
                copy[lo:hi].add_(work)
                progress(hi)

        return Encoded("bf16-delta", payload), fill


class Int8Blocks(Compressor):
    name = encoding = "int8"

    def __init__(self, block: int = INT8_BLOCK) -> None:
        self.block = block
        self.bytes_per_element = 1.0 + 4.0 / block

    def encode(self, delta: torch.Tensor) -> Encoded:
        """Scales and codes are written straight into the payload, a cache-sized chunk at a time (see
        :data:`CHUNK`): per block ``scale = absmax / 127`` and ``code = round(x / scale)`` (0 where the block
        is all zeros)."""
        delta = delta.detach().to(torch.float32).reshape(-1)
        return self._encode(delta.numel(), lambda lo, hi: delta[lo:hi], None)

    def encode_step(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> Encoded:
        """:meth:`encode` of ``x - copy`` and :func:`apply` of it to ``copy``, a chunk at a time (same numbers)."""
        return self._encode(x.numel(), lambda lo, hi: torch.sub(x[lo:hi], copy[lo:hi], out=scratch[lo:hi]), copy)

    def encode_stream(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> tuple[Encoded, Fill]:
        """Two passes, so that the payload's first bytes are final early: the difference (kept in
        ``scratch``) and every block's scale first (the scales lead the payload), then the codes and the
        copy's update a chunk at a time, each chunk's codes final when ``progress`` hears of it. The same
        bytes and copy as :meth:`encode_step`'s one pass, which touches memory less but sends nothing until
        it ends."""
        n, b = x.numel(), self.block
        nb = math.ceil(n / b)
        payload = torch.empty(4 * nb + n, dtype=torch.uint8)

        def fill(progress: Callable[[int], None]) -> None:
            scales, codes = payload[: 4 * nb].view(torch.float32), payload[4 * nb :].view(torch.int8)
            step = max(1, CHUNK // b) * b
            spans = _chunks(n, step, b)
            work = torch.empty(min(n, step), dtype=torch.float32)
            inverse = torch.empty(nb, dtype=torch.float32)
            for lo, hi, full in spans:  # pass 1: the difference and the scales
                diff = torch.sub(x[lo:hi], copy[lo:hi], out=scratch[lo:hi])
                for a, z, rows in _blocks(lo, hi, full, b):
                    _scales(diff[a - lo : z - lo].view(rows, -1), work[a - lo : z - lo].view(rows, -1),
                            scales[a // b : math.ceil(z / b)], inverse[a // b : math.ceil(z / b)])
            progress(0)  # the scales are final
            for lo, hi, full in spans:  # pass 2: the codes and the copy's update
                tmp = work[: hi - lo]
                for a, z, rows in _blocks(lo, hi, full, b):
                    torch.mul(scratch[a:z].view(rows, -1), inverse[a // b : math.ceil(z / b)].unsqueeze(1),
                              out=tmp[a - lo : z - lo].view(rows, -1))
                tmp.round_().clamp_(-INT8_MAX, INT8_MAX)
                codes[lo:hi].copy_(tmp)
                _add_int8(copy, codes, scales, b, lo, hi, full, tmp)
                progress(hi)

        return Encoded("int8", payload, block_elements=b), fill

    def _encode(self, n: int, difference: Callable[[int, int], torch.Tensor], copy: torch.Tensor | None) -> Encoded:
        """The payload of the difference whose chunk ``[lo, hi)`` is ``difference(lo, hi)``; with ``copy``, each
        chunk's update (:func:`apply`'s arithmetic on the codes just made) is added to it while in cache."""
        b = self.block
        nb = math.ceil(n / b)
        payload = torch.empty(4 * nb + n, dtype=torch.uint8)
        scales, codes = payload[: 4 * nb].view(torch.float32), payload[4 * nb :].view(torch.int8)
        step = max(1, CHUNK // b) * b
        work = torch.empty(min(n, step), dtype=torch.float32)
        inverse = torch.empty(step // b, dtype=torch.float32)
        for lo, hi, full in _chunks(n, step, b):
            diff = difference(lo, hi)
            for a, z, rows in _blocks(lo, hi, full, b):  # whole blocks, then the short last block if here
                _quantize(diff[a - lo : z - lo].view(rows, -1), work[a - lo : z - lo].view(rows, -1),
                          scales[a // b : math.ceil(z / b)], inverse)
            tmp = work[: hi - lo]
            tmp.round_().clamp_(-INT8_MAX, INT8_MAX)
            codes[lo:hi].copy_(tmp)
            if copy is not None:
                _add_int8(copy, codes, scales, b, lo, hi, full, tmp)
        return Encoded("int8", payload, block_elements=b)


def _chunks(n: int, step: int, block: int) -> list[tuple[int, int, int]]:
    """``[lo, hi)`` spans of ``step`` elements (a multiple of ``block``) and where their full blocks end."""
    return [(lo, min(n, lo + step), lo + (min(n, lo + step) - lo) // block * block) for lo in range(0, n, step)]


def _blocks(lo: int, hi: int, full: int, block: int) -> list[tuple[int, int, int]]:
    """A chunk ``[lo, hi)`` as ``(start, end, rows)`` spans to view as ``rows`` blocks: its whole blocks, then
    the vector's short last block if the chunk ends with it."""
    spans = [(lo, full, (full - lo) // block)] if full > lo else []
    return spans + ([(full, hi, 1)] if full < hi else [])


def _scales(rows: torch.Tensor, work: torch.Tensor, scale: torch.Tensor, inverse: torch.Tensor) -> None:
    """Per row ``scale = absmax / 127`` and ``inverse = 1 / scale`` (0 where the row is all zeros)."""
    torch.abs(rows, out=work)
    torch.amax(work, dim=1, out=scale)
    scale.div_(INT8_MAX)
    torch.reciprocal(scale, out=inverse)
    inverse.nan_to_num_(posinf=0.0)


def _quantize(rows: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, inverse: torch.Tensor) -> None:
    """``out = rows / scale`` per row with ``scale = absmax / 127`` written to ``scale`` (0 stays 0)."""
    inv = inverse[: scale.numel()]
    _scales(rows, out, scale, inv)
    torch.mul(rows, inv.unsqueeze(1), out=out)


def ready_elements(enc: Encoded, n: int, end: int) -> int:
    """How many of the vector's ``n`` elements a fill (:meth:`Compressor.encode_stream`) must have done before
    ``enc``'s payload bytes ``[0, end)`` are final: int8's scales are final before any element (a fill reports
    0 after them), top-k's a span at a time."""
    if enc.encoding == "int8":
        return min(n, max(0, end - (enc.payload.numel() - n)))
    if enc.encoding in ("key", "bf16-delta"):
        return min(n, -(-end // enc.payload.element_size()))
    if enc.encoding == "topk-spans":  # (the table leads the payload, written before the message is queued)
        table = 4 * sparse.spans(n, enc.block_elements)
        before = sparse.starts(enc.payload[:table].view(torch.int32).numpy().astype(np.int64))
        return sparse.ready_elements(n, enc.block_elements, before, end)
    return n


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
        if codes.numel() and int(codes.min()) == -128:
            raise ProtocolError(f"{who}: int8 code -128 is outside -{INT8_MAX}..{INT8_MAX}")
        return Delta("int8", codes, scales=scales, block=block_elements)
    if encoding in ("topk", "topk-spans"):
        k = value_count
        if encoding == "topk-spans" and block_elements < 1:
            raise ProtocolError(f"{who}: topk-spans needs block_elements >= 1, got {block_elements}")
        want = 8 * k if encoding == "topk" else sparse.payload_bytes(n, k, block_elements)
        if not 1 <= k <= n or raw.numel() != want:
            raise ProtocolError(f"{who}: {encoding} payload of {raw.numel()} bytes for value_count {k} "
                                f"(expected {want}; value_count in 1..{n})")
        raw = raw.contiguous()
        if encoding == "topk":
            indices, values = sparse.read_sorted(raw, n, k, who)
        else:
            indices, values = sparse.read_spans(raw, n, k, block_elements, who)
        return Delta("topk", values, indices=indices)
    raise ProtocolError(f"{who}: encoding {encoding!r} carries no compressed update")


def apply(copy: torch.Tensor, delta: Delta) -> None:
    """``copy += delta`` in place (``copy``: 1-D, float32 on the wire; the simulator's float64 too); a key
    replaces the copy. The update is computed in float32, then added in the copy's dtype."""
    if delta.encoding == "key":
        copy.copy_(delta.values)
    elif delta.encoding in ("bf16-delta", "int8"):
        n = copy.numel()
        step = CHUNK if delta.encoding == "bf16-delta" else max(1, CHUNK // delta.block) * delta.block
        work = torch.empty(min(n, step), dtype=torch.float32)
        for lo in range(0, n, step):  # a chunk at a time: no vector-sized temporary
            apply_span(copy, delta, lo, min(n, lo + step), work)
    elif delta.encoding == "topk":
        assert delta.indices is not None
        copy.index_add_(0, delta.indices, delta.values.to(copy.dtype))
    else:
        raise ValueError(f"no update of encoding {delta.encoding!r}")


def applies_by_span(delta: Delta, span: int) -> bool:
    """Whether :func:`apply_span` can apply ``delta`` in spans of ``span`` elements (dense updates whose int8
    blocks, if any, tile the spans; top-k is sparse: :func:`apply` it whole)."""
    return delta.encoding in ("key", "bf16-delta") or (delta.encoding == "int8" and span % delta.block == 0)


def apply_span(copy: torch.Tensor, delta: Delta, lo: int, hi: int, work: torch.Tensor) -> None:
    """:func:`apply` on ``copy[lo:hi]`` only (``delta`` as :func:`applies_by_span` allows: ``lo`` on an int8
    block's start, ``hi`` too or the vector's end; ``work``: float32 scratch of at least ``hi - lo`` elements)."""
    if delta.encoding == "key":
        copy[lo:hi].copy_(delta.values[lo:hi])
    elif delta.encoding == "bf16-delta":
        tmp = work[: hi - lo]
        tmp.copy_(delta.values[lo:hi])
        copy[lo:hi].add_(tmp)
    else:
        assert delta.encoding == "int8" and delta.scales is not None and lo % delta.block == 0
        b = delta.block
        _add_int8(copy, delta.values, delta.scales, b, lo, hi, lo + (hi - lo) // b * b, work[: hi - lo])


def _add_int8(copy: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, b: int, lo: int, hi: int, full: int,
              tmp: torch.Tensor) -> None:
    """``copy[lo:hi] += code * scale`` (float32, in ``tmp``), ``lo`` on a block start and ``full`` where the
    span's whole blocks of ``b`` end (the rest, if any, is the vector's short last block)."""
    tmp.copy_(codes[lo:hi])
    if full > lo:
        tmp[: full - lo].view(-1, b).mul_(scales[lo // b : full // b].unsqueeze(1))
    if full < hi:
        tmp[full - lo :].mul_(scales[-1])
    copy[lo:hi].add_(tmp)


def self_decode(enc: Encoded, n: int) -> Delta:
    """The sender's own reading of what it sends (the same :func:`decode` its receivers run)."""
    return decode(enc.encoding, enc.payload, n, block_elements=enc.block_elements, value_count=enc.value_count)
