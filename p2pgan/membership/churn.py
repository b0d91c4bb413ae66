"""What the mixing matrix becomes while members are absent (DESIGN.md section 5).

Rule: the weight of every edge to an absent neighbour moves to the self weight, on both ends of the
edge. If ``W`` is the topology's matrix for a round and ``A`` the set of absent members, the matrix the
live members mix with is

    W'[i, j] = W[i, j]                              for i != j, neither i nor j in A
    W'[i, j] = 0                                    for i != j, i or j in A
    W'[i, i] = W[i, i] + sum_{j in A, j != i} W[i, j]   (an absent i keeps only itself: W'[i, i] = 1)

When ``W`` is symmetric and doubly stochastic (ring, torus, random ring, complete, Metropolis-Hastings
graphs) and every live member agrees on ``A``, ``W'`` is again symmetric and doubly stochastic: column
``k`` loses ``W[a, k]`` for each absent ``a`` and its diagonal gains ``W[k, a]``, the same amount. For
the directed exponential graphs rows still sum to 1 (every peer's result is an average) but columns
need not: during churn their mixing is only row stochastic. Members may briefly disagree
(one end has noticed an absence and the other not yet): for that round the two rows differ from ``W'``
only on that edge. :func:`live_weights` is the row form that a network peer computes;
:func:`live_matrix` the matrix form the tests compare against.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch


def live_weights(weights: Mapping[int, float], self_rank: int, absent: Collection[int]) -> dict[int, float]:
    """Row ``self_rank`` of ``W'``: ``weights`` (row of ``W``, sparse) with absent neighbours' weight on the diagonal."""
    if self_rank in absent:
        return {self_rank: 1.0}
    row = {j: w for j, w in weights.items() if j == self_rank or j not in absent}
    moved = sum(w for j, w in weights.items() if j != self_rank and j in absent)
    if moved:
        row[self_rank] = row.get(self_rank, 0.0) + moved
    return row


def live_matrix(w: torch.Tensor, absent: Collection[int]) -> torch.Tensor:
    """The whole ``W'`` for a dense ``W`` (see the module docstring)."""
    out = w.clone()
    m = w.shape[0]
    for i in range(m):
        for j in range(m):
            if i != j and (i in absent or j in absent):
                out[i, i] += out[i, j]
                out[i, j] = 0.0
    return out
