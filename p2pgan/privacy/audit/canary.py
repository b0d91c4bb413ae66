"""The gradient canary of the canary audit: a PUBLIC random direction of norm C in the discriminator's
parameter space, inserted into the clipped sum (as one more example's clipped gradient) with probability
1/2 per step from a secret coin. The audit tests on a neighbour's messages whether it was there."""

from __future__ import annotations

import secrets

import torch

#: the canary's public seed: the auditor knows the canary, never the coin
CANARY_SEED = 20_251_206


def canary_vector(dim_v: int, clip: float) -> torch.Tensor:
    """The canary: a fixed random unit direction of ``dim_v`` entries, scaled to norm ``clip``."""
    c = torch.randn(dim_v, generator=torch.Generator().manual_seed(CANARY_SEED), dtype=torch.float64)
    return (c / c.norm() * clip).to(torch.float32)


def coin() -> bool:
    """A fair secret coin (the OS's randomness): whether this step carries the canary."""
    return bool(secrets.randbits(1))
