"""Private randomness: seeds a site's neighbours cannot replay.

A site's minibatch order, latent noise and penalty weights come from a secret seed drawn from the OS at
first start and kept in its checkpoint (:func:`site_seed`); an explicit ``train.seed`` stays possible for
reproducible experiments. The DP noise always comes from the OS's secure randomness
(:func:`secure_generator`), never from any seed a config or checkpoint holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import torch

#: seeds are 31-bit non-negative integers (what ``train.seed`` accepts and torch generators take)
SEED_BITS = 31


def secret_seed() -> int:
    """A fresh seed from the OS's secure randomness."""
    return secrets.randbits(SEED_BITS)


def site_seed(configured: int | None, checkpoint_state: Mapping[str, Any] | None) -> tuple[int, str]:
    """This site's private seed and where it came from (``config``, ``checkpoint`` or ``os``)."""
    if configured is not None:
        return int(configured), "config"
    if checkpoint_state is not None:
        kept = checkpoint_state.get("secret_seed")
        if isinstance(kept, int) and not isinstance(kept, bool) and 0 <= kept < 2 ** SEED_BITS:
            return kept, "checkpoint"
    return secret_seed(), "os"


def secure_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with 64 bits from ``os.urandom`` (through :mod:`secrets`)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(secrets.randbits(63))
    return gen
