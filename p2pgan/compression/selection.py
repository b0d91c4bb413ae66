"""Top-k's selection: the positions of a span's ``k`` largest magnitudes, several times faster than
``torch.topk`` on one core.

Used by :class:`p2pgan.compression.topk.TopK` on each span of the difference it compresses
(:mod:`p2pgan.compression.sparse`), while the span is in cache.
"""

from __future__ import annotations

import math

import numpy as np

#: a span holds this many magnitudes per sampled one (the sample estimates the selection threshold)
SAMPLE_STRIDE = 8
#: below this many sampled magnitudes (or when k is a quarter of the span or more) the selection is exact
#: from the start (``np.argpartition``): the sample would say too little
MIN_SAMPLE = 2048


def largest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Ascending positions (int64) of the ``k`` largest of ``magnitude`` (float32, >= 0, one span), ties
    broken deterministically (the same input always gives the same positions).

    A strided sample estimates a threshold a little below the k-th largest; one pass marks the candidates at
    or above it (k and a margin: about 1.2k at 5 %, 1.45k at 1 %), and the k-th largest among those is found
    exactly. A threshold that keeps fewer than ``k`` candidates (a skewed sample) falls back to the exact
    selection over the whole span; ties at the k-th value are settled among the candidates.
    """
    n = magnitude.size
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    sample = magnitude[::SAMPLE_STRIDE]
    if sample.size < MIN_SAMPLE or 4 * k > n:
        return _exact(magnitude, k)
    # candidates expected: k plus 6 standard deviations of the sample's count above the k-th magnitude (at
    # least 10 %); fewer than k (a sample that misjudged the span) falls back to the exact selection
    expected = k / n * sample.size
    above = min(sample.size - 1, int(expected * (1 + max(0.1, 6 / math.sqrt(expected)))) + 4)
    threshold = np.partition(sample, sample.size - 1 - above)[sample.size - 1 - above]
    candidates = np.flatnonzero(magnitude >= threshold)
    if candidates.size < k:
        return _exact(magnitude, k)
    found = magnitude[candidates]
    kth = np.partition(found, found.size - k)[found.size - k]
    keep = candidates[found >= kth]  # ascending, without a sort
    if keep.size != k:  # ties at the k-th value: the exact selection settles them
        keep = candidates[_exact(found, k)]
    return keep


def _exact(values: np.ndarray, k: int) -> np.ndarray:
    """Ascending positions of the ``k`` largest ``values`` (``np.argpartition``: deterministic ties)."""
    return np.sort(np.argpartition(values, values.size - k)[values.size - k :])
