"""The :class:`Topology` interface and the spectral helpers shared by every graph.

Convention (used by every mixer): one round replaces row ``i`` by ``sum_j W[i, j] x_j``. Row ``i`` of
``W`` holds peer ``i``'s *in*-weights (whom it receives from); column ``i`` says whom it *sends* to.
For the symmetric graphs of the paper the two coincide; the exponential graphs are directed but
doubly stochastic, so averages are preserved all the same.
"""

from __future__ import annotations

import abc
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pgan.errors import TopologyError

if TYPE_CHECKING:
    import torch

#: tolerance for the symmetric / doubly-stochastic checks (weights are float64)
MATRIX_TOL = 1e-9

Edge = tuple[int, int, float]  # (i, j, W[i, j]): i receives from j with weight W[i, j]


class Topology(abc.ABC):
    """A sequence of mixing matrices ``W(k, r)`` over ``size`` peers (ranks ``0 .. size-1``).

    Subclasses implement :meth:`edges`. Static graphs set ``time_varying = False`` and ignore
    ``(step, round)``; ``directed`` graphs are doubly stochastic but not symmetric.
    """

    name: str = "abstract"
    time_varying: bool = False
    directed: bool = False
    #: True when W depends on the global round index ``n = step * rounds + round`` (so the topology
    #: must know the rounds per step, and a mixer must run exactly that many)
    round_indexed: bool = False

    def __init__(self, size: int, *, seed: int = 0, rounds: int = 1) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise TopologyError(f"{self.name}: the number of peers must be an integer >= 1, got {size!r}")
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise TopologyError(f"{self.name}: rounds per step must be an integer >= 0, got {rounds!r}")
        self.size = size
        self.seed = int(seed)
        self.rounds = rounds
        self._static_cache: list[Edge] | None = None

    def global_round(self, step: int, round: int) -> int:
        """The federation-wide round index ``n = step * rounds + round`` of round ``round`` of step ``step``."""
        return step * self.rounds + round

    def check_rounds(self, rounds: int) -> None:
        """Raise :class:`TopologyError` if a mixer running ``rounds`` rounds per step would break this topology.

        Only round-indexed topologies care: their schedule counts rounds across steps.
        """
        if self.round_indexed and rounds not in (0, self.rounds):
            raise TopologyError(
                f"{self.name}: built for {self.rounds} round(s) per step but the mixer runs {rounds}; "
                f"build it with make_topology(..., rounds={rounds})"
            )

    # -- what subclasses provide -------------------------------------------------------------------
    @abc.abstractmethod
    def _edges(self, step: int, round: int) -> list[Edge]:
        """All non-zero entries (i, j, w) of W(step, round), self loops included; duplicates add up."""

    # -- derived views -----------------------------------------------------------------------------
    def edges(self, step: int = 0, round: int = 0) -> list[Edge]:
        """Non-zero entries of ``W(step, round)`` with duplicates merged."""
        if not self.time_varying:
            if self._static_cache is None:
                self._static_cache = _merge(self._edges(0, 0))
            return self._static_cache
        return _merge(self._edges(step, round))

    def in_weights(self, rank: int, step: int = 0, round: int = 0) -> dict[int, float]:
        """Row ``rank`` of ``W(step, round)``: ``{sender rank: weight}``, the self weight included."""
        self._check_rank(rank)
        return {j: w for i, j, w in self.edges(step, round) if i == rank}

    def out_neighbours(self, rank: int, step: int = 0, round: int = 0) -> list[int]:
        """The ranks that need ``rank``'s vector in this round (column ``rank``), self excluded, sorted."""
        self._check_rank(rank)
        return sorted({i for i, j, _ in self.edges(step, round) if j == rank and i != rank})

    def in_neighbours(self, rank: int, step: int = 0, round: int = 0) -> list[int]:
        """The ranks whose vectors ``rank`` needs in this round, self excluded, sorted."""
        return sorted(j for j in self.in_weights(rank, step, round) if j != rank)

    def dense(self, step: int = 0, round: int = 0) -> np.ndarray:
        """Dense ``W(step, round)`` as a float64 numpy array (torch-free: ``p2pgan topology`` stays light)."""
        w = np.zeros((self.size, self.size), dtype=np.float64)
        for i, j, v in self.edges(step, round):
            w[i, j] = v  # edges are merged: no duplicate (i, j)
        return w

    def matrix(self, step: int = 0, round: int = 0, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``W(step, round)`` of shape ``[size, size]`` (float64 unless ``dtype`` says otherwise)."""
        import torch

        w = torch.from_numpy(self.dense(step, round))
        return w if dtype is None else w.to(dtype)

    def sparse_matrix(self, step: int = 0, round: int = 0, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W(step, round)`` as a sparse CSR tensor (for fast in-process mixing of many peers; float32 default)."""
        return self.sparse_coo(step, round, dtype=dtype).to_sparse_csr()

    def sparse_coo(self, step: int = 0, round: int = 0, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W(step, round)`` as a coalesced sparse COO tensor (float64 weights rounded once to ``dtype``, float32)."""
        import torch

        rows, cols, vals = _edge_tensors(self.edges(step, round))
        coo = torch.sparse_coo_tensor(
            torch.stack((rows, cols)), vals.to(dtype or torch.float32), (self.size, self.size), check_invariants=True
        )
        return coo.coalesce()

    def product(self, step: int, rounds: int) -> torch.Tensor:
        """``W(step, rounds-1) ... W(step, 0)``: what ``rounds`` rounds of step ``step`` do (float64)."""
        import torch

        return torch.from_numpy(self.dense_product(step, rounds))

    def dense_product(self, step: int, rounds: int) -> np.ndarray:
        """:meth:`product` as a float64 numpy array."""
        p = np.eye(self.size, dtype=np.float64)
        for r in range(rounds):
            p = self.dense(step, r) @ p
        return p

    def degree(self) -> int:
        """Largest number of distinct in-neighbours (self excluded) of any peer in any round."""
        rows: dict[int, set[int]] = defaultdict(set)
        for i, j, _ in self.edges(0, 0):
            if i != j:
                rows[i].add(j)
        return max((len(s) for s in rows.values()), default=0)

    def rho(self) -> float:
        """Per-round consensus contraction factor (0 = exact averaging, 1 = none).

        Static graphs: ``||W - J||_2``, which for symmetric W is the second largest eigenvalue modulus.
        Time-varying graphs override this (see their docstrings).
        """
        return spectral_rho(self.dense())

    def suggested_rounds(self, target: float = 0.01) -> int:
        """Rounds t per step such that ``rho^t <= target`` (at least 1 when there is anyone to mix with)."""
        if self.size == 1:
            return 0
        return rounds_for_consensus(self.rho(), target)

    def rounds_needed(self, target: float) -> int:
        """Rounds t per step whose mixing takes any disagreement to at most ``target`` of itself.

        For a static graph that is ``rho^t <= target`` (:func:`rounds_for_consensus`). Schedules whose
        ``rho`` is an average over a period (one-peer exponential) override it with what their rounds
        really do.
        """
        if self.size == 1:
            return 0
        return rounds_for_consensus(self.rho(), target)

    def validate(self, step: int = 0, round: int = 0) -> None:
        """Raise :class:`TopologyError` unless ``W(step, round)`` is a valid mixing matrix."""
        validate_mixing_matrix(
            self.dense(step, round),
            require_symmetric=not self.directed,
            require_connected=not self.time_varying,
            name=self.name,
        )

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.size:
            raise TopologyError(f"{self.name}: rank {rank} is outside 0..{self.size - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, seed={self.seed})"


def _edge_tensors(edges: list[Edge]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices, column indices (int64) and weights (float64) of an edge list."""
    import torch

    if not edges:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0, dtype=torch.float64)
    rows, cols, vals = zip(*edges)
    return (
        torch.tensor(rows, dtype=torch.int64),
        torch.tensor(cols, dtype=torch.int64),
        torch.tensor(vals, dtype=torch.float64),
    )


def _merge(edges: list[Edge]) -> list[Edge]:
    acc: dict[tuple[int, int], float] = defaultdict(float)
    for i, j, w in edges:
        acc[(i, j)] += w
    return [(i, j, w) for (i, j), w in sorted(acc.items()) if w != 0.0]


def as_array(w: Any) -> np.ndarray:
    """A matrix given as a numpy array or a torch tensor, as a float64 numpy array."""
    if hasattr(w, "detach"):  # a torch tensor: no torch import needed to read one
        w = w.detach().cpu().double().numpy()
    return np.asarray(w, dtype=np.float64)


def spectral_rho(w: Any) -> float:
    """``||W - J||_2`` for a doubly stochastic ``W`` (J = 11^T / M), given as a numpy array or torch tensor.

    Symmetric matrices use the eigenvalues (largest modulus; several times faster than an SVD).
    """
    w = as_array(w)
    m = w.shape[0]
    a = w - 1.0 / m
    if np.array_equal(a, a.T):
        return float(np.abs(np.linalg.eigvalsh(a)).max())
    return float(np.linalg.norm(a, ord=2))


def validate_mixing_matrix(
    w: Any,
    *,
    require_symmetric: bool = True,
    require_connected: bool = True,
    name: str = "W",
    tol: float = MATRIX_TOL,
) -> None:
    """Check that ``w`` is a mixing matrix: square, non-negative, doubly stochastic, (symmetric), (connected).

    ``w`` is a numpy array or a torch tensor. Raises :class:`TopologyError` naming the first violated
    property and where.
    """
    w = as_array(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise TopologyError(f"{name}: mixing matrix must be square, got shape {tuple(w.shape)}")
    m = w.shape[0]
    if not np.isfinite(w).all():
        raise TopologyError(f"{name}: mixing matrix has non-finite entries")
    if (w < -tol).any():
        i, j = (int(v) for v in np.argwhere(w < -tol)[0])
        raise TopologyError(f"{name}: negative weight W[{i}, {j}] = {w[i, j]:.6g}; weights must be >= 0")
    if require_symmetric and not np.allclose(w, w.T, atol=tol, rtol=0):
        i, j = (int(v) for v in np.argwhere(np.abs(w - w.T) > tol)[0])
        raise TopologyError(
            f"{name}: not symmetric: W[{i}, {j}] = {w[i, j]:.6g} but W[{j}, {i}] = {w[j, i]:.6g}"
        )
    rows, cols = w.sum(1), w.sum(0)
    for axis, sums in (("row", rows), ("column", cols)):
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
        if len(bad):
            k = int(bad[0])
            raise TopologyError(f"{name}: not doubly stochastic: {axis} {k} sums to {sums[k]:.6g}, must be 1")
    if require_connected and m > 1:
        adj = (w + w.T) > tol
        seen = {0}
        frontier = [0]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(adj[i]).tolist():
                if j not in seen:
                    seen.add(j)
                    frontier.append(j)
        if len(seen) != m:
            missing = sorted(set(range(m)) - seen)
            raise TopologyError(
                f"{name}: graph is disconnected: peers {missing[:8]}{'...' if len(missing) > 8 else ''} "
                "cannot be reached from peer 0, so the peers would never agree"
            )


def rounds_for_consensus(rho: float, target: float) -> int:
    """Smallest t >= 1 with ``rho**t <= target``."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target consensus factor must be in (0, 1), got {target}")
    if rho < 0.0 or rho >= 1.0 or math.isnan(rho):
        raise TopologyError(f"rho = {rho} is not in [0, 1): the graph does not mix")
    if rho <= target:
        return 1
    return max(1, math.ceil(math.log(target) / math.log(rho) - 1e-12))


def theorem1_contraction(*, peers: int, batch_size: int, grad_bound: float, sigma: float) -> float:
    """What Theorem 1 asks t rounds of mixing to reach: ``rho^t <= 1 / (1 + (M sqrt(m) M G^2 + sigma^2) / (4 sigma))``.

    See :func:`theorem1_rounds` for the symbols; the value is in (0, 1).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size (m, the minibatch size per peer) must be an integer >= 1, got {batch_size!r}")
    return 1.0 / (1.0 + (peers * math.sqrt(batch_size) * peers * grad_bound**2 + sigma**2) / (4.0 * sigma))


def theorem1_rounds(rho: float, *, peers: int, batch_size: int, grad_bound: float, sigma: float) -> int:
    """Rounds t per step required by Theorem 1 of Liu et al. (NeurIPS 2020).

    ``t >= log_{1/rho}(1 + (M sqrt(m) M G^2 + sigma^2) / (4 sigma))`` with M peers, m the minibatch
    size per peer ("Denote m by the size of minibatch used in each machine", Theorem 1; not the
    parameter count), G the gradient bound and sigma the gradient-noise standard deviation. Returns
    the smallest integer t >= 1 that satisfies it (1 when rho = 0: one round already averages exactly).
    """
    contraction = theorem1_contraction(peers=peers, batch_size=batch_size, grad_bound=grad_bound, sigma=sigma)
    if rho <= 0.0:
        return 1
    if rho >= 1.0:
        raise TopologyError(f"rho = {rho} is not in [0, 1): the graph does not mix")
    return max(1, math.ceil(math.log(1.0 / contraction) / math.log(1.0 / rho) - 1e-12))
