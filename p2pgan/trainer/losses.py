"""GAN losses: each player's objective, evaluated on one minibatch.

A :class:`GANLoss` gives the discriminator loss ``L_D(D; real, fake)`` and the generator loss
``L_G(D; fake)``. Both players minimise their own loss; the game's field is
``[grad_u L_G, grad_v L_D]`` (see :mod:`p2pgan.trainer.game`). Names used in configs: ``wgan-gp``
(Gulrajani et al. 2017, gradient penalty lambda = 10) and ``ns`` (the non-saturating loss of Goodfellow
et al. 2014).
"""

from __future__ import annotations

import abc

import torch
from torch import nn
from torch.nn import functional as F

from p2pgan.errors import ConfigError
from p2pgan.trainer.catalog import LOSS_NAMES  # the names make_loss accepts



class GANLoss(abc.ABC):
    """The two players' losses. ``generator`` is a ``torch.Generator`` for any randomness the loss needs."""

    name: str

    @abc.abstractmethod
    def discriminator(
        self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scalar loss the discriminator minimises (``fake`` must be detached from G)."""

    @abc.abstractmethod
    def generator(self, d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        """Scalar loss the generator minimises."""

    # -- the split differential privacy needs (p2pgan.privacy) ---------------------------------------
    @abc.abstractmethod
    def real_term(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-example discriminator loss on real examples' scores ``[n] -> [n]``: the only term that touches
        private data."""

    @abc.abstractmethod
    def fake_term(self, d: nn.Module, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The rest of the discriminator loss, computed from generated samples alone (scalar)."""


class WGANGPLoss(GANLoss):
    """Wasserstein loss with a gradient penalty on random interpolates (critic gradient norm pushed to 1)."""

    name = "wgan-gp"

    def __init__(self, gp_weight: float = 10.0) -> None:
        if not gp_weight >= 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight!r}")
        self.gp_weight = float(gp_weight)

    def gradient_penalty(
        self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``E[(||grad_x D(x_hat)|| - 1)^2]`` with ``x_hat`` uniform on segments between real and fake."""
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, generator=generator, dtype=real.dtype).to(real.device)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def discriminator(
        self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        loss = d(fake).mean() - d(real).mean()
        if self.gp_weight:
            loss = loss + self.gp_weight * self.gradient_penalty(d, real, fake, generator)
        return loss

    def generator(self, d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        return -d(fake).mean()

    def real_term(self, scores: torch.Tensor) -> torch.Tensor:
        return -scores

    def fake_term(self, d: nn.Module, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``E[D(fake)]`` plus the gradient penalty on interpolates between two halves of the fake batch.

        Under differential privacy the penalty is taken on generated samples only: it then touches no
        private data, stays exact (no clipping bends it) and costs no privacy; real samples would have
        to enter each example's clipped unit, where the penalty's large weight eats the clipping budget.
        """
        loss = d(fake).mean()
        if self.gp_weight and len(fake) > 1:
            other = fake.roll(1, dims=0)
            loss = loss + self.gp_weight * self.gradient_penalty(d, other, fake, generator)
        return loss


class NonSaturatingLoss(GANLoss):
    """Logistic discriminator loss; the generator maximises ``log D(G(z))`` instead of minimising ``log(1 - D)``."""

    name = "ns"

    def discriminator(
        self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()

    def generator(self, d: nn.Module, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d(fake)).mean()

    def real_term(self, scores: torch.Tensor) -> torch.Tensor:
        return F.softplus(-scores)

    def fake_term(self, d: nn.Module, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.softplus(d(fake)).mean()


def make_loss(name: str, *, gp_weight: float = 10.0) -> GANLoss:
    """The loss called ``name`` (one of :data:`LOSS_NAMES`)."""
    if name == "wgan-gp":
        return WGANGPLoss(gp_weight)
    if name == "ns":
        return NonSaturatingLoss()
    raise ConfigError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
