"""The CHOCO-SGD consensus step (Koloskova, Stich, Jaggi, ICML 2019) on public copies.

With ``x_hat`` the public copies (updated first, :mod:`p2pgan.compression.copies`) and ``W`` the round's
mixing weights, peer ``i`` moves by ``gamma`` (``mixing.consensus_step``) toward the weighted mean of the
copies::

    x_i <- x_i + gamma * sum_j w_ij (x_hat_j - x_hat_i)  =  x_i + gamma * (y_i - x_hat_i),
    y_i  = w_ii x_hat_i + sum_{j != i} w_ij x_hat_j            (today's mixing, applied to the copies)

so robust mixing bounds each neighbour's pull on the reconstructed copies, as it does on raw vectors.
With ``gamma = 1`` this is ``y_i + (x_i - x_hat_i)``, and with exact copies (``x_hat = x``: the identity
compressor) it is ``y_i`` bit for bit, today's mixing (tested). :class:`ChocoMixer` runs it in process
for the simulator.
"""

from __future__ import annotations

import torch

from p2pgan.compression.compressors import CHUNK, Compressor, apply, self_decode
from p2pgan.mixing.base import DoneHandle, MixHandle, Mixer
from p2pgan.mixing.inprocess import InProcessMixer
from p2pgan.topology import Topology


def consensus_step(x: torch.Tensor, own_copy: torch.Tensor, mixed_copies: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x + gamma * (mixed_copies - own_copy)``, written so that gamma = 1 with ``own_copy == x`` returns
    ``mixed_copies`` exactly. Computed in place in ``mixed_copies`` (contiguous, the caller's to give), a
    cache-sized chunk at a time: no temporary vector."""
    out, xs, own = mixed_copies.view(-1), x.reshape(-1), own_copy.reshape(-1)
    for lo in range(0, out.numel(), CHUNK):
        hi = lo + CHUNK
        if gamma == 1.0:
            out[lo:hi].add_(xs[lo:hi] - own[lo:hi])
        else:
            out[lo:hi].sub_(own[lo:hi]).mul_(gamma).add_(xs[lo:hi])
    return mixed_copies


class ChocoMixer(Mixer):
    """In-process compressed gossip for all ``M`` rows (the simulator's mixer, with CHOCO copies).

    Every peer keeps one public copy (the rows of :attr:`copies`), seen identically by all its neighbours:
    in process no message is lost, so no key is needed after the first round for the copies to stay in
    step. ``key_interval`` > 0 sends the keys the wire path sends anyway (the copies in full in the first
    round of every ``key_interval``-th step, :class:`p2pgan.wire.compressed.CompressedGossip`), so that a
    run in process mixes as the daemon does with the same ``mixing.key_interval``; 0 sends none.
    """

    def __init__(self, topology: Topology, rounds: int, compressor: Compressor, gamma: float = 1.0,
                 key_interval: int = 0) -> None:
        super().__init__()
        if not 0 < gamma <= 1:
            raise ValueError(f"consensus step gamma must be in (0, 1], got {gamma}")
        if key_interval < 0:
            raise ValueError(f"key_interval must be >= 0, got {key_interval}")
        self.key_interval = key_interval
        self.topology = topology
        self.rounds = rounds
        self.size = topology.size
        self.ranks = tuple(range(self.size))
        self.compressor = compressor
        self.gamma = gamma
        self.copies: torch.Tensor | None = None
        self.bytes_per_round = 0  # payload bytes one peer sent to one neighbour in the last round
        self.bytes_sent = 0  # ... and in all rounds so far (keys included)
        self._plain = InProcessMixer(topology, 1)  # W applied to the copies, the simulator's arithmetic

    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        cur = x.detach().clone()
        if self.copies is None:
            self.copies = cur.clone()  # the first round's keys: every copy exact
        for r in range(self.rounds):
            key = r == 0 and self.key_interval > 0 and step % self.key_interval == 0
            for i in range(self.size):
                if self.compressor.exact or key:
                    self.copies[i].copy_(cur[i])
                    self.bytes_per_round = cur.element_size() * cur.shape[1]
                    continue
                enc = self.compressor.encode((cur[i] - self.copies[i]).to(torch.float32))
                self.bytes_per_round = enc.payload.numel() * enc.payload.element_size()
                apply(self.copies[i], self_decode(enc, cur.shape[1]))
            self.bytes_sent += self.bytes_per_round
            mixed = self._plain._round(self.copies, step, r)
            cur = torch.stack([consensus_step(cur[i], self.copies[i], mixed[i], self.gamma) for i in range(self.size)])
        self.stats.rounds += self.rounds
        return DoneHandle(cur.to(x.dtype))
