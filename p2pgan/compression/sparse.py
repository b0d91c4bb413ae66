"""Top-k's payloads: a sparse update as (index, value) pairs, in spans that can be sent while they are chosen.

Two layouts carry the same thing, ``value_count`` int32 indices (strictly increasing, below the element
count) and their float32 values, and move a copy by the same :func:`~p2pgan.compression.compressors.apply`:

- ``topk`` (wire ``ENCODING_TOPK``): every index, then every value. The whole selection must be known before
  the first byte is, so nothing of it can leave while the rest is chosen. Still read, from peers that send it.
- ``topk-spans`` (wire ``ENCODING_TOPK_SPANS``, sent since the round overlaps its link): the vector is cut into
  spans of ``block_elements`` (the last one shorter), and span ``s`` = ``[lo, hi)`` holds exactly
  ``c_s = floor(K * hi / n) - floor(K * lo / n)`` pairs (``K`` = value_count, ``n`` = element count: the
  counts are known from the header alone and add up to ``K``), laid out as the span's ``c_s`` indices
  (each inside the span) then its ``c_s`` values. Span ``s`` starts at byte ``8 * floor(K * lo / n)``: its bytes
  are final as soon as its pairs are chosen.

The sender picks each span's ``c_s`` largest differences (:func:`p2pgan.compression.selection.largest`): the
span-wise top-k of deep gradient compression (Lin et al., ICLR 2018, select per layer). It is a contraction
with the same factor as the whole-vector top-k (each span keeps ``c_s / (hi - lo)`` ~ ``K / n`` of its energy
at least), which is all CHOCO-SGD's error feedback needs; what a span leaves out is sent in later rounds.
"""

from __future__ import annotations

import numpy as np
import torch

from p2pgan.errors import ProtocolError


def span_starts(n: int, k: int, span: int) -> torch.Tensor:
    """``C``: int64 ``[S + 1]``, ``C[s]`` = the pairs before span ``s`` (``floor(K * lo_s / n)``, ``C[S] = K``)."""
    edges = torch.arange(0, n + span, span, dtype=torch.int64).clamp_(max=n)
    return edges * k // n  # (n < 2**31: p2pgan.wire.frames.MAX_SPARSE_ELEMENTS; no int64 overflow)


def ready_elements(n: int, k: int, span: int, end: int) -> int:
    """How many elements a span-wise fill must have chosen before payload bytes ``[0, end)`` are final (whole
    spans: the first span end whose pairs reach byte ``end``)."""
    pairs = -(-end // 8)
    if pairs <= 0:
        return 0
    # the first span s (0-based) with floor(K * hi_s / n) >= pairs, hi_s = min(n, (s + 1) * span)
    hi = -(-pairs * n // k)  # the least element count h with floor(K * h / n) >= pairs
    return min(n, -(-hi // span) * span)


def read_sorted(raw: torch.Tensor, n: int, k: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk``'s payload (uint8 ``[8k]``) -> checked (indices int64, values float32)."""
    indices = raw[: 4 * k].view(torch.int32)
    values = raw[4 * k :].view(torch.float32)
    _check(indices.numpy(), values.numpy(), n, who)
    return indices.to(torch.int64), values


def read_spans(raw: torch.Tensor, n: int, k: int, span: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk-spans``' payload (uint8 ``[8k]``, spans of ``span`` elements) -> checked (indices int64, values
    float32, in index order): besides :func:`read_sorted`'s checks, every span holds its own pairs."""
    starts = span_starts(n, k, span).numpy()
    return read_span_range(raw, n, span, starts, 0, starts.size - 1, who)


def read_span_range(raw: torch.Tensor, n: int, span: int, starts: np.ndarray, first: int, end: int,
                    who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans ``first .. end - 1`` of a ``topk-spans`` payload (``raw``: their bytes, ``8 * (C[end] - C[first])``;
    ``starts``: :func:`span_starts`) -> checked (indices int64, values float32), as :func:`read_spans`."""
    counts = np.diff(starts[first : end + 1])
    # each span's words: its c_s indices, then its c_s values
    is_index = np.repeat(np.tile(np.array([True, False]), counts.size), np.repeat(counts, 2))
    words = raw.numpy().view(np.int32)
    indices, values = words[is_index], words[~is_index].view(np.float32)
    if indices.size:
        _check(indices, values, n, who)
    # sorted indices: each span holds its own pairs if the count below each span edge is the pairs before it
    edges = np.minimum(np.arange(first, end + 1, dtype=np.int64) * span, n)
    if not np.array_equal(np.searchsorted(indices, edges), starts[first : end + 1] - starts[first]):
        raise ProtocolError(f"{who}: a topk-spans span holds indices outside its {span} elements")
    return torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(values)


def _check(indices: np.ndarray, values: np.ndarray, n: int, who: str) -> None:
    """int32 indices in 0..n-1 and strictly increasing, float32 values finite."""
    if int(indices.min()) < 0 or int(indices.max()) >= n:
        raise ProtocolError(f"{who}: a topk index is outside 0..{n - 1}")
    if indices.size > 1 and not bool((np.diff(indices) > 0).all()):  # (no overflow: all in 0..n-1 < 2**31)
        raise ProtocolError(f"{who}: topk indices must be strictly increasing (sorted, no repeats)")
    if not bool(np.isfinite(values).all()):
        raise ProtocolError(f"{who}: a topk value is not finite")
