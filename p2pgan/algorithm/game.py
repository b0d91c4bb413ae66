"""The min-max game interface the algorithms optimise.

A game over a flat parameter vector ``theta = [u, v]`` (``u``: the minimising player, e.g. the
generator, ``dim_u`` entries first; ``v``: the maximising player, e.g. the discriminator) exposes its
gradient *field*

    g(z) = [ grad_u f(u, v),  - grad_v f(u, v) ]

evaluated at the same point ``z`` for both players (a simultaneous update), so that every algorithm
moves *against* ``g``. Games are batched over rows: ``field(z)`` takes ``z`` of shape ``[n, d]`` with
``d = dim_u + dim_v`` (``n = M`` virtual peers in the simulator, ``n = 1`` in a network peer) and returns
one gradient row per row of ``z``, each on that row's peer's private data.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from p2pgan.errors import ConfigError

#: a learning rate: one number, or a tensor ``[d]`` with one rate per coordinate (see :func:`lr_vector`)
LearningRate = float | torch.Tensor


@runtime_checkable
class MinMaxGame(Protocol):
    """What an algorithm needs from a game: its split ``dim_u + dim_v`` and its gradient field."""

    dim_u: int
    dim_v: int

    def field(self, z: torch.Tensor) -> torch.Tensor:
        """``[grad_u f, -grad_v f]`` at each row of ``z`` (shape ``[n, dim_u + dim_v]``), same shape out.

        Must not modify ``z`` (with the overlap schedule the mixer may be sending it meanwhile).
        """
        ...


def lr_vector(
    dim_u: int,
    dim_v: int,
    lr_u: float,
    lr_v: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A per-coordinate learning rate ``[lr_u] * dim_u + [lr_v] * dim_v`` for separate G / D rates.

    The result can be passed wherever a learning rate is accepted; it broadcasts over rows.
    """
    for name, n in (("dim_u", dim_u), ("dim_v", dim_v)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {n!r}")
    for name, lr in (("lr_u", lr_u), ("lr_v", lr_v)):
        check_lr(lr, name)
    out = torch.empty(dim_u + dim_v, dtype=dtype, device=device)
    out[:dim_u] = float(lr_u)
    out[dim_u:] = float(lr_v)
    return out


def check_lr(lr: LearningRate, name: str = "lr", dim: int | None = None) -> LearningRate:
    """Validate a learning rate (a positive finite number, or such a tensor of shape ``[dim]``)."""
    if isinstance(lr, torch.Tensor):
        if lr.ndim > 1 or (dim is not None and lr.ndim == 1 and lr.numel() != dim):
            raise ConfigError(f"{name}: a learning-rate tensor must have shape [{dim or 'd'}], got {tuple(lr.shape)}")
        if not bool(torch.isfinite(lr).all()) or not bool((lr > 0).all()):
            raise ConfigError(f"{name}: every learning rate must be a finite number > 0, got {lr}")
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {lr!r}")
    return float(lr)
