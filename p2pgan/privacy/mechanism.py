"""The Gaussian mechanism on the discriminator's real-data gradient (DP-SGD's step, one per DPOSG step).

Given a Poisson-sampled batch of real examples, :class:`GaussianMechanism` returns::

    g_real = ( sum_i clip_C( grad_v l(D(x_i)) )  +  N(0, sigma^2 C^2 I) ) / (q n)

where ``l`` is the loss's per-example real term, ``clip_C(g) = g * min(1, C / ||g||)`` and ``q n`` is the
EXPECTED batch size (dividing by the drawn size would leak it). Per-example gradients come from
``torch.func`` (``functional_call`` + ``vmap(grad)``): one batched pass, equal to a loop over examples.
The noise comes from a generator seeded from the OS (:func:`p2pgan.privacy.randomness.secure_generator`).

Anything in the discriminator that couples examples (batch statistics) would break the per-example
sensitivity bound; :func:`check_per_example` refuses it, naming the layer.

A canary (:attr:`GaussianMechanism.canary`) is an optional fixed vector of norm <= C added to the clipped
sum as if it were one more example's gradient: the privacy audit inserts it with probability 1/2 per
step to test what the noise hides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from p2pgan.errors import ConfigError

#: norms below this are treated as zero when clipping (no division by zero)
CLIP_EPS = 1e-12


def check_per_example(d: nn.Module) -> None:
    """Refuse a discriminator with layers that mix examples (batch statistics), naming the first one."""
    for name, module in d.named_modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)):
            raise ConfigError(
                f"privacy.mode: dp: discriminator layer {name or '<root>'!r} ({type(module).__name__}) normalises "
                "with batch statistics, which couple examples and void the per-example bound; use a discriminator "
                "without batch norm (LayerNorm, GroupNorm, spectral norm or none)"
            )
    if any(True for _ in d.buffers()):
        name = next(n for n, _ in d.named_buffers())
        raise ConfigError(f"privacy.mode: dp: discriminator buffer {name!r} is state outside the parameters; "
                          "DP needs a discriminator whose forward pass depends on its parameters and one example")


@dataclasses.dataclass(frozen=True)
class MechanismStats:
    """What the last private gradient did (local metrics only: they describe private data)."""

    batch: int  # examples the Poisson sampling drew
    clipped: int  # of them, how many had a gradient norm above C
    loss_real: float  # mean real-term loss of the batch (private: never leaves the site)


def per_example_gradients(d: nn.Module, real_term: Callable[[torch.Tensor], torch.Tensor],
                          real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, dim_v] gradients of real_term(D(x_i)) w.r.t. D's parameters, [B] losses)`` via vmap(grad)."""
    from torch.func import functional_call, grad_and_value, vmap

    params = {k: v.detach() for k, v in d.named_parameters()}

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        score = functional_call(d, p, (x.unsqueeze(0),))
        return real_term(score.reshape(1)).sum()

    grads, losses = vmap(grad_and_value(one), in_dims=(None, 0))(params, real)
    flat = torch.cat([grads[k].reshape(real.shape[0], -1) for k in params], dim=1)
    return flat, losses


def clip_rows(g: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``g`` scaled to norm at most ``clip``; also the mask of rows that were clipped."""
    norms = g.norm(dim=1)
    factor = (clip / norms.clamp_min(CLIP_EPS)).clamp(max=1.0)
    return g * factor[:, None], norms > clip


class GaussianMechanism:
    """Clipped per-example sum plus Gaussian noise, divided by the expected batch size ``q n``."""

    def __init__(self, clip: float, noise_multiplier: float, expected_batch: float,
                 noise: torch.Generator | None = None) -> None:
        if not clip > 0:
            raise ConfigError(f"privacy.clip must be > 0, got {clip!r}")
        if not noise_multiplier >= 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier!r}")
        if not expected_batch > 0:
            raise ValueError(f"expected batch size must be > 0, got {expected_batch!r}")
        from p2pgan.privacy.randomness import secure_generator

        self.clip = float(clip)
        self.sigma = float(noise_multiplier)
        self.expected_batch = float(expected_batch)
        self.noise = noise if noise is not None else secure_generator()
        self.canary: torch.Tensor | None = None  # set per step by the audit only
        self.last: MechanismStats | None = None

    def __call__(self, d: nn.Module, real_term: Callable[[torch.Tensor], torch.Tensor],
                 real: torch.Tensor) -> torch.Tensor:
        """The private real-data gradient ``[dim_v]`` of ``mean real_term`` (in expectation over sampling)."""
        dim = sum(p.numel() for p in d.parameters())
        device = next(d.parameters()).device
        if real.shape[0]:
            grads, losses = per_example_gradients(d, real_term, real)
            clipped, over = clip_rows(grads, self.clip)
            total = clipped.sum(0)
            self.last = MechanismStats(int(real.shape[0]), int(over.sum()), float(losses.mean()))
        else:  # Poisson sampling may draw nobody: the mechanism still runs (and is still accounted)
            total = torch.zeros(dim, device=device)
            self.last = MechanismStats(0, 0, float("nan"))
        if self.canary is not None:
            total = total + self.canary.to(total)
        if self.sigma:
            z = torch.randn(dim, generator=self.noise, dtype=total.dtype)
            total = total + z.to(device) * (self.sigma * self.clip)
        return total / self.expected_batch
