"""In-process mixers: all M peers of a federation as the rows of one ``[M, d]`` tensor.

:class:`InProcessMixer` applies ``t`` rounds of a topology's ``W(k, r)`` with the cheapest exact form:
an index gather for the ring, the random ring and the one-peer exponential graph (no loop over peers),
the row mean for the complete graph, and a cached sparse matrix for the other static graphs. It is
the simulator's mixer and the reference the network mixers are tested against.
:class:`IdentityMixer` is "no mixing" (one peer, or t = 0).
"""

from __future__ import annotations

import time

import torch

from p2pgan.errors import ConfigError
from p2pgan.mixing.base import DoneHandle, MixHandle, Mixer
from p2pgan.topology import Complete, OnePeerExponential, RandomRing, Ring, Topology


def _check_rows(x: torch.Tensor, n: int, who: str) -> None:
    if x.ndim != 2 or x.shape[0] != n:
        raise ConfigError(f"{who}: expected rows of shape [{n}, d], got {tuple(x.shape)}")


class IdentityMixer(Mixer):
    """No mixing: ``size`` hosted peers that keep their own rows (M = 1, or t = 0)."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"IdentityMixer: size must be an integer >= 1, got {size!r}")
        self.rounds = 0
        self.size = size
        self.ranks = tuple(range(size))

    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        _check_rows(x, self.size, "IdentityMixer")
        return DoneHandle(x.clone())

    def __repr__(self) -> str:
        return f"IdentityMixer(size={self.size})"


class InProcessMixer(Mixer):
    """All ``topology.size`` peers in one process: ``x [M, d] -> W(k, t-1) ... W(k, 0) x``.

    Args:
        topology: any :class:`p2pgan.topology.Topology`.
        rounds: t >= 0 gossip rounds per step (0 = no mixing).
    """

    def __init__(self, topology: Topology, rounds: int = 1) -> None:
        super().__init__()
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise ConfigError(f"InProcessMixer: rounds must be an integer >= 0, got {rounds!r}")
        topology.check_rounds(rounds)
        self.topology = topology
        self.rounds = rounds
        self.size = topology.size
        self.ranks = tuple(range(self.size))
        self._index_cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._sparse_cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        _check_rows(x, self.size, "InProcessMixer")
        t0 = time.perf_counter()
        out = self._mix(x, step)
        self.stats.rounds += self.rounds
        self.stats.seconds += time.perf_counter() - t0
        return DoneHandle(out)

    # -- the rounds ---------------------------------------------------------------------------------
    def _mix(self, x: torch.Tensor, step: int) -> torch.Tensor:
        topo = self.topology
        if self.rounds == 0 or self.size == 1:
            return x.clone()
        if isinstance(topo, Complete):
            # J^t = J: one exact average, whatever t is
            return x.mean(dim=0, keepdim=True).expand_as(x).clone()
        y = x
        for r in range(self.rounds):
            y = self._round(y, step, r)
        return y

    def _round(self, x: torch.Tensor, step: int, r: int) -> torch.Tensor:
        topo = self.topology
        if isinstance(topo, Ring):
            left, right = self._cached("ring-left", x.device), self._cached("ring-right", x.device)
            return _three_way(x, left, right)
        if isinstance(topo, RandomRing):
            order = torch.tensor(topo.permutation(step, r), dtype=torch.int64, device=x.device)
            left = torch.empty_like(order)
            right = torch.empty_like(order)
            left[order] = order.roll(1)  # the peer before each one on the permuted ring
            right[order] = order.roll(-1)
            return _three_way(x, left, right)
        if isinstance(topo, OnePeerExponential):
            src = (torch.arange(self.size, device=x.device) - topo.hop(step, r)) % self.size
            return (x + x.index_select(0, src)).mul_(0.5)
        if not topo.time_varying:
            w = self._sparse_cache.get((x.dtype, x.device))
            if w is None:
                w = topo.sparse_coo(dtype=x.dtype).to(x.device)
                self._sparse_cache[(x.dtype, x.device)] = w
            return torch.sparse.mm(w, x)
        return torch.sparse.mm(topo.sparse_coo(step, r, dtype=x.dtype).to(x.device), x)

    def _cached(self, key: str, device: torch.device) -> torch.Tensor:
        idx = self._index_cache.get((key, device))
        if idx is None:
            ar = torch.arange(self.size, device=device)
            idx = (ar - 1) % self.size if key == "ring-left" else (ar + 1) % self.size
            self._index_cache[(key, device)] = idx
        return idx

    def __repr__(self) -> str:
        return f"InProcessMixer({self.topology!r}, rounds={self.rounds})"


def _three_way(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``(x_i + x_left(i) + x_right(i)) / 3`` for every row (ring weights 1/3; duplicates add up)."""
    out = x.index_select(0, left)
    out.add_(x).add_(x.index_select(0, right))
    return out.mul_(1.0 / 3.0)
