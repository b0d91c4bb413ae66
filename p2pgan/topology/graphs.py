"""The concrete graphs: ring, complete, random permuted ring, exponential, one-peer exponential,
2-D torus and custom graphs (Metropolis-Hastings weights) loaded from a YAML adjacency file.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from p2pgan.errors import TopologyError
from p2pgan.topology.base import Edge, Topology, as_array, spectral_rho

#: names accepted on the command line and in configs (besides a path to a YAML adjacency file)
TOPOLOGY_NAMES = ("ring", "complete", "random-ring", "exponential", "one-peer-exponential", "torus")


def _ring_edges(order: Sequence[int]) -> list[Edge]:
    """Each peer averages itself with its two neighbours on the cyclic ``order``, weights 1/3 each."""
    m = len(order)
    third = 1.0 / 3.0
    out: list[Edge] = []
    for pos, i in enumerate(order):
        out.append((i, i, third))
        out.append((i, order[(pos - 1) % m], third))
        out.append((i, order[(pos + 1) % m], third))
    return out


class Ring(Topology):
    """DP-OAdam's fixed ring: each peer averages with its left and right neighbour, weights 1/3.

    rho = max(1/3 + 2/3 cos(2 pi / M), 1/3) for M >= 3.
    """

    name = "ring"

    def _edges(self, step: int, round: int) -> list[Edge]:
        return _ring_edges(range(self.size))


class Complete(Topology):
    """W = J = 11^T / M: one round is the exact average (the centralized CP case)."""

    name = "complete"

    def _edges(self, step: int, round: int) -> list[Edge]:
        w = 1.0 / self.size
        return [(i, j, w) for i in range(self.size) for j in range(self.size)]


class RandomRing(Topology):
    """Rand-DP-OAdam: in every (step, round) each peer averages with two random peers.

    Every peer derives the same permutation from (seed, step, round) and takes its two neighbours on
    that permuted ring, weights 1/3, so W is symmetric and doubly stochastic with no messages.
    Every round of a step draws a new permutation. rho is ``sqrt(||E[W^T W] - J||_2)``, the
    root-mean-square per-round contraction of the consensus error (see :meth:`rho`).
    """

    name = "random-ring"
    time_varying = True

    def permutation(self, step: int, round: int) -> list[int]:
        # String seeds go through SHA-512 in ``random.Random``: stable across Python versions and
        # machines, independent of torch's generator.
        rng = random.Random(f"p2pgan-random-ring:{self.seed}:{step}:{round}")
        order = list(range(self.size))
        rng.shuffle(order)
        return order

    def _edges(self, step: int, round: int) -> list[Edge]:
        return _ring_edges(self.permutation(step, round))

    def in_weights(self, rank: int, step: int = 0, round: int = 0) -> dict[int, float]:
        # O(M) for one peer, instead of building the whole matrix.
        self._check_rank(rank)
        order = self.permutation(step, round)
        pos = order.index(rank)
        m = self.size
        out: dict[int, float] = {}
        for j in (rank, order[(pos - 1) % m], order[(pos + 1) % m]):
            out[j] = out.get(j, 0.0) + 1.0 / 3.0
        return out

    def out_neighbours(self, rank: int, step: int = 0, round: int = 0) -> list[int]:
        return self.in_neighbours(rank, step, round)

    def degree(self) -> int:
        return min(2, self.size - 1)

    def rho(self) -> float:
        """``sqrt(lambda_2(E[W^T W]))``: the root-mean-square contraction of the disagreement per round.

        For x orthogonal to 1, ``E ||W x||^2 <= rho^2 ||x||^2``. Exact, not estimated: for M >= 5 a
        uniformly random ring gives ``E[W^2] = I/3 + 2/(3(M-1)) (11^T - I)`` (a peer's 2 neighbours and
        2 second neighbours are uniform among the other M-1), so ``rho^2 = (M-3) / (3(M-1))``, below
        1/3; hence the paper's ``E||W_1...W_t - J||_2 <= sqrt(M-1) / sqrt(3)^t`` (Remark 2). For
        M <= 4 the expectation is enumerated over all M! orders.
        """
        m = self.size
        if m >= 5:
            return math.sqrt((m - 3) / (3 * (m - 1)))
        if m == 1:
            return 0.0
        acc = np.zeros((m, m), dtype=np.float64)
        orders = list(itertools.permutations(range(m)))
        for order in orders:
            w = np.zeros((m, m), dtype=np.float64)
            for i, j, v in _ring_edges(order):
                w[i, j] += v
            acc += w.T @ w
        return math.sqrt(max(0.0, spectral_rho(acc / len(orders))))


def _log2_ceil(m: int) -> int:
    """tau = ceil(log2 M), the number of hops of the exponential graphs (0 for a single peer)."""
    return max(1, math.ceil(math.log2(m))) if m > 1 else 0


class Exponential(Topology):
    """Static exponential graph (Ying et al. 2021): peer i receives from i - 2^j (mod M), j < ceil(log2 M).

    Uniform weights 1/(tau + 1). Directed but doubly stochastic (a circulant); for M a power of two
    rho = 1 - 2 / (1 + log2 M).
    """

    name = "exponential"
    directed = True

    def _edges(self, step: int, round: int) -> list[Edge]:
        m = self.size
        tau = _log2_ceil(m)
        w = 1.0 / (tau + 1)
        out: list[Edge] = []
        for i in range(m):
            out.append((i, i, w))
            for j in range(tau):
                out.append((i, (i - 2**j) % m, w))
        return out


class OnePeerExponential(Topology):
    """One-peer exponential graph (Assran et al. SGP; Ying et al., NeurIPS 2021): one neighbour per round.

    In the federation-wide round ``n = step * t + round`` (t = ``rounds``, the rounds per step) peer i
    averages with peer ``i - 2^(n mod tau)`` (mod M), tau = ceil(log2 M), weights 1/2. The hop runs on
    over step boundaries, so for M a power of two ANY tau consecutive rounds, within a step or across
    steps, multiply to exactly J. ``rho`` is the per-round contraction over one period,
    ``||W_{tau-1} ... W_0 - J||_2^(1/tau)`` (0 for M a power of two); t = tau rounds per step average
    exactly at every step, and with fewer rounds the peers agree exactly every ceil(tau / t) steps.
    """

    name = "one-peer-exponential"
    time_varying = True
    directed = True
    round_indexed = True

    def _tau(self) -> int:
        return _log2_ceil(self.size)

    def hop(self, step: int, round: int) -> int:
        """In round ``round`` of step ``step``, peer i averages with peer ``(i - hop) mod M`` (0: alone)."""
        return self._hop_at(self.global_round(step, round))

    def _hop_at(self, n: int) -> int:
        tau = self._tau()
        return 2 ** (n % tau) if tau else 0

    def _edges(self, step: int, round: int) -> list[Edge]:
        return self._edges_at(self.global_round(step, round))

    def _edges_at(self, n: int) -> list[Edge]:
        m = self.size
        if m == 1:
            return [(0, 0, 1.0)]
        hop = self._hop_at(n)
        return [e for i in range(m) for e in ((i, i, 0.5), (i, (i - hop) % m, 0.5))]

    def degree(self) -> int:
        return min(1, self.size - 1)

    def rho(self) -> float:
        tau = self._tau()
        if tau == 0:
            return 0.0
        period = np.eye(self.size, dtype=np.float64)
        for n in range(tau):
            w = np.zeros((self.size, self.size), dtype=np.float64)
            for i, j, v in self._edges_at(n):
                w[i, j] += v
            period = w @ period
        return spectral_rho(period) ** (1.0 / tau)

    def suggested_rounds(self, target: float = 0.01) -> int:
        if self.size == 1:
            return 0
        return self.rounds_needed(target)  # tau for M a power of two (rho = 0, yet one round is far from J)

    def one_round_rho(self) -> float:
        """``||W - J||_2`` of the schedule's first round (hop 1): cos(pi / M), 0.98 at M = 16.

        Later rounds alone do even less (a round of hop M/2 leaves some disagreement untouched); only
        tau consecutive rounds together make J.
        """
        return spectral_rho(self._dense_at(0)) if self.size > 1 else 0.0

    def rounds_needed(self, target: float) -> int:
        """The smallest t such that ANY t consecutive rounds reach ``||W_{n+t-1} ... W_n - J||_2 <= target``.

        ``rho`` here is an average over the period of tau rounds (0 for M a power of two), which says
        nothing about fewer rounds: one round is only cos(pi / M) from J. So this is computed from the
        rounds themselves (at most a few periods; tau rounds suffice for M a power of two).
        """
        if self.size == 1:
            return 0
        tau = self._tau()
        rounds = [self._dense_at(n) for n in range(tau)]
        for t in range(1, 64 * tau + 1):
            worst = 0.0
            for start in range(tau):
                p = np.eye(self.size, dtype=np.float64)
                for n in range(start, start + t):
                    p = rounds[n % tau] @ p
                worst = max(worst, spectral_rho(p))
            if worst <= target:
                return t
        raise TopologyError(f"{self.name}: {self.size} peers do not reach {target:g} within {64 * tau} rounds")

    def _dense_at(self, n: int) -> np.ndarray:
        w = np.zeros((self.size, self.size), dtype=np.float64)
        for i, j, v in self._edges_at(n):
            w[i, j] += v
        return w


def torus_shape(m: int) -> tuple[int, int]:
    """Rows x columns of the most square 2-D grid with ``m`` nodes."""
    a = int(math.isqrt(m))
    while m % a:
        a -= 1
    return a, m // a


class Torus(Topology):
    """2-D torus (most square grid of M nodes, wrapped): each peer averages with its 4 neighbours, 1/5 each."""

    name = "torus"

    def _edges(self, step: int, round: int) -> list[Edge]:
        rows, cols = torus_shape(self.size)
        w = 1.0 / 5.0
        out: list[Edge] = []
        for i in range(self.size):
            r, c = divmod(i, cols)
            out.append((i, i, w))
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                out.append((i, ((r + dr) % rows) * cols + (c + dc) % cols, w))
        return out


class Custom(Topology):
    """A custom undirected graph with Metropolis-Hastings weights W_ij = 1 / (1 + max(deg_i, deg_j)).

    Build it with :meth:`from_yaml` (a file with ``edges: [[a, b], ...]`` or ``neighbors: {a: [b, ...]}``;
    nodes are ranks 0..M-1 or peer ids from the membership list).
    """

    name = "custom"

    def __init__(
        self,
        size: int,
        adjacency: dict[int, set[int]],
        *,
        seed: int = 0,
        name: str = "custom",
        weights: Any = None,
    ) -> None:
        self.name = name
        super().__init__(size, seed=seed)
        #: explicit weights (a float64 numpy array), or None for Metropolis-Hastings weights
        self.weights = None if weights is None else as_array(weights)
        if self.weights is not None:
            # explicit weights: the graph is whatever they connect; validate() judges them
            if tuple(self.weights.shape) != (size, size):
                raise TopologyError(f"{name}: weights must be a {size} x {size} matrix, got {tuple(self.weights.shape)}")
            nz = (self.weights != 0) | (self.weights.T != 0)
            adjacency = {i: set(np.flatnonzero(nz[i]).tolist()) for i in range(size)}
        for i, nbrs in adjacency.items():
            for j in nbrs:
                if i == j:
                    continue
                if i not in adjacency.get(j, set()):
                    raise TopologyError(f"{name}: edge {i} -> {j} has no reverse edge; the graph must be undirected")
        self.adjacency = {i: set(adjacency.get(i, set())) - {i} for i in range(size)}
        self.validate()

    def _edges(self, step: int, round: int) -> list[Edge]:
        if self.weights is not None:
            idx = np.argwhere(self.weights != 0).tolist()
            return [(i, j, float(self.weights[i, j])) for i, j in idx]
        deg = {i: len(n) for i, n in self.adjacency.items()}
        out: list[Edge] = []
        for i, nbrs in self.adjacency.items():
            total = 0.0
            for j in sorted(nbrs):
                w = 1.0 / (1 + max(deg[i], deg[j]))
                out.append((i, j, w))
                total += w
            out.append((i, i, 1.0 - total))
        return out

    @classmethod
    def from_yaml(cls, path: str | Path, size: int, *, members: Sequence[str] | None = None, seed: int = 0) -> Custom:
        """Load an adjacency file. ``members`` (sorted peer ids) lets the file name nodes by peer id.

        Instead of ``edges`` / ``neighbors`` the file may give ``weights: [[w00, w01, ...], ...]``, an
        explicit M x M mixing matrix (rows = in-weights); it must be symmetric, non-negative, doubly
        stochastic and connected.
        """
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise TopologyError(f"{p}: cannot read topology file: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise TopologyError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict) or not ({"edges", "neighbors", "weights"} & data.keys()):
            raise TopologyError(
                f"{p}: expected a mapping with 'edges: [[a, b], ...]', 'neighbors: {{a: [b, ...]}}' "
                "or 'weights: [[w00, w01, ...], ...]'"
            )
        if "weights" in data:
            return cls(size, {}, seed=seed, name=str(p), weights=_weights_from_yaml(p, data["weights"], size))
        index = {m: k for k, m in enumerate(members or ())}

        def node(v: object, field: str) -> int:
            if isinstance(v, bool):
                pass
            elif isinstance(v, int) and 0 <= v < size:
                return v
            elif isinstance(v, str) and v in index:
                return index[v]
            allowed = f"a rank 0..{size - 1}" + (" or a peer id of the membership" if members else "")
            raise TopologyError(f"{p}: {field}: node {v!r} is not {allowed}")

        adj: dict[int, set[int]] = {i: set() for i in range(size)}
        if "edges" in data:
            edges = data["edges"]
            if not isinstance(edges, list):
                raise TopologyError(f"{p}: edges: must be a list of [a, b] pairs")
            for n, e in enumerate(edges):
                if not isinstance(e, (list, tuple)) or len(e) != 2:
                    raise TopologyError(f"{p}: edges[{n}]: must be a pair [a, b], got {e!r}")
                a, b = node(e[0], f"edges[{n}]"), node(e[1], f"edges[{n}]")
                adj[a].add(b)
                adj[b].add(a)
        if "neighbors" in data:
            nb = data["neighbors"]
            if not isinstance(nb, dict):
                raise TopologyError(f"{p}: neighbors: must map a node to a list of nodes")
            for k, vs in nb.items():
                a = node(k, f"neighbors.{k}")
                if not isinstance(vs, list):
                    raise TopologyError(f"{p}: neighbors.{k}: must be a list of nodes")
                for v in vs:
                    b = node(v, f"neighbors.{k}")
                    adj[a].add(b)
                    adj[b].add(a)
        return cls(size, adj, seed=seed, name=str(p))


def _weights_from_yaml(path: Path, rows: object, size: int) -> np.ndarray:
    """An explicit ``size x size`` matrix from a YAML list of rows, with errors naming the file and row."""
    if not isinstance(rows, list) or len(rows) != size:
        raise TopologyError(f"{path}: weights: must be a list of {size} rows (one per peer)")
    out = np.zeros((size, size), dtype=np.float64)
    for i, row in enumerate(rows):
        if (
            not isinstance(row, list)
            or len(row) != size
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        ):
            raise TopologyError(f"{path}: weights[{i}]: must be a list of {size} numbers, got {row!r}")
        out[i] = [float(v) for v in row]
    return out


_CLASSES: dict[str, type[Topology]] = {
    "ring": Ring,
    "complete": Complete,
    "random-ring": RandomRing,
    "exponential": Exponential,
    "one-peer-exponential": OnePeerExponential,
    "torus": Torus,
}


def make_topology(
    spec: str, size: int, *, seed: int = 0, members: Sequence[str] | None = None, rounds: int = 1
) -> Topology:
    """Build a topology from a name in :data:`TOPOLOGY_NAMES` or a path to a YAML adjacency file.

    ``rounds`` is t, the mixing rounds per step the mixer will run (the one-peer exponential graph
    counts its hops over the global round index ``step * t + round``).
    """
    cls = _CLASSES.get(spec)
    if cls is not None:
        return cls(size, seed=seed, rounds=rounds)
    if spec.endswith((".yaml", ".yml")) or Path(spec).exists():
        return Custom.from_yaml(spec, size, members=members, seed=seed)
    raise TopologyError(
        f"unknown topology {spec!r}; allowed: {', '.join(TOPOLOGY_NAMES)}, or a path to a YAML adjacency file"
    )
