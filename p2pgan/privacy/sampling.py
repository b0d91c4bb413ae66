"""Poisson sampling: each example joins a minibatch independently with probability ``q`` (batch size varies).

The privacy amplification the accountant assumes (a Poisson-subsampled Gaussian) needs exactly this
sampling: shuffled fixed-size batches would make the accounting under-report epsilon.
"""

from __future__ import annotations

from typing import Any

import torch


class PoissonSampler:
    """Minibatches of ``data`` where each row is drawn with probability ``rate`` (seeded, private generator)."""

    def __init__(self, data: torch.Tensor, rate: float, seed: int) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"Poisson sampling rate must be in (0, 1], got {rate!r}")
        self.data = data
        self.rate = float(rate)
        self._rng = torch.Generator().manual_seed(int(seed))
        self.samples_drawn = 0
        self.last_size = 0
        self.last_indices = torch.zeros(0, dtype=torch.long)  # local: the privacy audit's ground truth

    @property
    def epoch(self) -> float:
        """Passes over the data so far (fractional; expected examples seen / n)."""
        return self.samples_drawn / len(self.data)

    def next(self) -> torch.Tensor:
        mask = torch.rand(len(self.data), generator=self._rng) < self.rate
        idx = mask.nonzero().view(-1).to(self.data.device)
        self.last_size = int(idx.numel())
        self.last_indices = idx
        self.samples_drawn += self.last_size
        return self.data.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.get_state(), "samples_drawn": self.samples_drawn, "rate": self.rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "perm" in state:
            raise ValueError("the checkpoint's minibatch state is a shuffled sampler's (written without privacy.mode: "
                             "dp); its earlier steps carry no guarantee, so a DP run cannot continue it")
        self._rng.set_state(state["rng"])
        self.samples_drawn = int(state["samples_drawn"])
