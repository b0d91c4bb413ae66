"""Top-k's payloads: a sparse update as (index, value) pairs, in spans that can be sent while they are chosen.

Two layouts carry ``value_count`` (``K``) int32 indices, strictly increasing and below the element count
``n``, with their float32 values; both move a copy by the same :func:`~p2pgan.compression.compressors.apply`:

- ``topk`` (wire ``ENCODING_TOPK``): every index, then every value. The whole selection must be known before
  the first byte is, so nothing of it can leave while the rest is chosen. Still read, from peers that send it.
- ``topk-spans`` (wire ``ENCODING_TOPK_SPANS``): the vector is cut into ``S`` spans of ``block_elements``
  (the last one shorter). The payload starts with a table of ``S`` int32 counts ``c_s`` (each at most its
  span's length, adding up to ``K``), then holds span after span its ``c_s`` indices (inside the span) and
  its ``c_s`` values. Span ``s`` starts at byte ``4 S + 8 (c_0 + ... + c_{s-1})``: its bytes are final as soon
  as its pairs are chosen, and the table before any.

The sender (:class:`p2pgan.compression.topk.TopK`) shares the ``K`` pairs out among the spans as the
whole-vector top-k would (:func:`allocate`: by how many of a strided sample of the difference each span has
above the sample's own top-``K / n`` threshold), writes the table, then picks each span's ``c_s`` largest
differences (:func:`p2pgan.compression.selection.largest`) while the span is in cache. Spans with large
differences get most of the pairs, as they do in the whole-vector top-k; spans with none to speak of get
none. Any counts give a contraction (what a span leaves out is sent in later rounds: CHOCO-SGD's error
feedback), so the sample's noise costs nothing but a little of the pairs' energy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from p2pgan.errors import ProtocolError

#: the allocation's sample takes every this many elements of the difference (every other 64-byte line)
SAMPLE_STRIDE = 32


def spans(n: int, span: int) -> int:
    """``S``: how many spans of ``span`` elements cover ``n`` (the last one shorter)."""
    return math.ceil(n / span)


def payload_bytes(n: int, k: int, span: int) -> int:
    """A ``topk-spans`` payload's size: the table of counts and ``k`` pairs."""
    return 4 * spans(n, span) + 8 * k


def lengths(n: int, span: int) -> np.ndarray:
    """Each span's element count (int64 ``[S]``)."""
    return np.minimum(span, n - np.arange(spans(n, span), dtype=np.int64) * span)


def allocate(sample: np.ndarray, n: int, k: int, span: int, stride: int = SAMPLE_STRIDE) -> np.ndarray:
    """The ``k`` pairs shared out among the spans (int64 ``[S]``, each at most its span's length):
    ``sample[j]`` is ``|difference|`` at element ``j * stride``. Each span gets pairs in proportion to its
    sampled elements at or above the sample's top-``k / n`` magnitude (largest remainders round them to
    whole pairs; a span's pairs beyond its length go to the others); a sample with none above zero, or too
    small to hold ``k / n`` of itself, shares them in proportion to the spans' lengths."""
    room = lengths(n, span)
    want = k / n * sample.size
    above = None
    if sample.size and want >= 0.5:
        top = min(sample.size, max(1, round(want)))
        threshold = np.partition(sample, sample.size - top)[sample.size - top]
        picked = sample >= threshold if threshold > 0 else sample > 0  # (fewer non-zeros than pairs: those)
        above = np.bincount(np.flatnonzero(picked) * stride // span, minlength=room.size)
    share = (above if above is not None and above.any() else room).astype(np.float64)
    ideal = k * share / share.sum()
    counts = np.minimum(np.floor(ideal).astype(np.int64), room)
    while (rest := k - int(counts.sum())) > 0:  # largest remainders first, among spans with room left
        order = np.argsort(np.where(counts < room, counts - ideal, np.inf), kind="stable")
        counts[order[: min(rest, int((counts < room).sum()))]] += 1
    return counts


def starts(counts: np.ndarray) -> np.ndarray:
    """``C``: int64 ``[S + 1]``, ``C[s]`` = the pairs before span ``s`` (``C[S] = K``)."""
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts, dtype=np.int64)])


def ready_elements(n: int, span: int, before: np.ndarray, end: int) -> int:
    """How many elements a span-wise fill must have chosen before payload bytes ``[0, end)`` are final (``before``:
    :func:`starts` of the table, written before any span): the end of the first span whose pairs reach ``end``."""
    pairs = -(-(end - 4 * (before.size - 1)) // 8)
    if pairs <= 0:
        return 0
    s = int(np.searchsorted(before[1:], pairs))  # the first span s with C[s + 1] >= pairs
    return min(n, (s + 1) * span)


def read_table(raw: torch.Tensor, n: int, k: int, span: int, who: str) -> np.ndarray:
    """A ``topk-spans`` table (uint8 ``[4 S]``) -> checked :func:`starts`: each count in 0..its span's length,
    the counts adding up to ``k``."""
    counts = raw.numpy().view(np.int32).astype(np.int64)
    if bool((counts < 0).any()) or bool((counts > lengths(n, span)).any()) or int(counts.sum()) != k:
        raise ProtocolError(f"{who}: a topk-spans table must give each span of {span} elements 0..its length "
                            f"pairs, {k} (value_count) in all")
    return starts(counts)


def read_sorted(raw: torch.Tensor, n: int, k: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk``'s payload (uint8 ``[8k]``) -> checked (indices int64, values float32)."""
    indices = raw[: 4 * k].view(torch.int32)
    values = raw[4 * k :].view(torch.float32)
    _check(indices.numpy(), values.numpy(), n, who)
    return indices.to(torch.int64), values


def read_spans(raw: torch.Tensor, n: int, k: int, span: int, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk-spans``' payload (uint8, :func:`payload_bytes`) -> checked (indices int64, values float32, in
    index order): the table, and besides :func:`read_sorted`'s checks, every span holding its own pairs."""
    table = 4 * spans(n, span)
    before = read_table(raw[:table], n, k, span, who)
    return read_span_range(raw[table:], n, span, before, 0, before.size - 1, who)


def read_span_range(raw: torch.Tensor, n: int, span: int, before: np.ndarray, first: int, end: int,
                    who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans ``first .. end - 1`` of a ``topk-spans`` payload (``raw``: their pairs' bytes; ``before``: the
    table's :func:`starts`) -> checked (indices int64, values float32), as :func:`read_spans`."""
    counts = np.diff(before[first : end + 1])
    # each span's words: its c_s indices, then its c_s values
    is_index = np.repeat(np.tile(np.array([True, False]), counts.size), np.repeat(counts, 2))
    words = raw.numpy().view(np.int32)
    indices, values = words[is_index], words[~is_index].view(np.float32)
    if indices.size:
        _check(indices, values, n, who)
    # sorted indices: each span holds its own pairs if the count below each span edge is the pairs before it
    edges = np.minimum(np.arange(first, end + 1, dtype=np.int64) * span, n)
    if not np.array_equal(np.searchsorted(indices, edges), before[first : end + 1] - before[first]):
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
