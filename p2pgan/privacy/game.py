"""DP-DPOSG at one site: the GAN game with a differentially private discriminator real-data term.

:class:`DPGANGame` is a :class:`p2pgan.trainer.game.GANGame` whose ``field(z)`` differs in one place,
:meth:`~DPGANGame.discriminator_gradient`: the real minibatch is Poisson-sampled (rate ``q = batch / n``)
and its gradient passes the :class:`~p2pgan.privacy.mechanism.GaussianMechanism` (per-example clipping to
C, Gaussian noise ``N(0, sigma^2 C^2)`` from the OS, divided by ``q n``); the fake-data term (with the
WGAN-GP penalty on generated samples only, see :meth:`p2pgan.trainer.losses.WGANGPLoss.fake_term`) and
the generator's gradient stay exact. Everything downstream (the optimistic reuse of the noisy direction,
the optimizer's moments, gossip) is post-processing of the mechanism's output and costs no privacy.

Every ``field`` call runs the mechanism once and composes it in the site's
:class:`~p2pgan.privacy.accountant.PrivacyAccountant`: the accountant counts mechanisms, not steps, so
the extra gradient of Algorithm 1's first step, or of a rejoin, is accounted as well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from p2pgan.privacy.accountant import PrivacyAccountant
from p2pgan.privacy.mechanism import GaussianMechanism, check_per_example
from p2pgan.privacy.sampling import PoissonSampler
from p2pgan.trainer.data import Dataset
from p2pgan.trainer.game import GANGame, _flat
from p2pgan.trainer.losses import GANLoss


class DPGANGame(GANGame):
    """A :class:`GANGame` whose discriminator sees its private data only through the Gaussian mechanism."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: GANLoss | str,
        data: Dataset | torch.Tensor,
        *,
        latent_dim: int,
        batch_size: int,
        seed: int,
        clip: float,
        noise_multiplier: float,
        delta: float,
        target_epsilon: float | None = None,
        device: str | torch.device = "cpu",
        noise: torch.Generator | None = None,
    ) -> None:
        check_per_example(discriminator)
        super().__init__(generator, discriminator, loss, data, latent_dim=latent_dim, batch_size=batch_size,
                         seed=seed, device=device)
        n = len(self.sampler.data)
        self.n = n
        self.q = min(1.0, self.batch_size / n)
        self.sampler = PoissonSampler(self.sampler.data, self.q, seed)  # type: ignore[assignment]
        self.mechanism = GaussianMechanism(clip, noise_multiplier, self.q * n, noise)
        self.accountant = PrivacyAccountant(self.q, noise_multiplier, delta, target_epsilon)
        self.canary: torch.Tensor | None = None  # the canary audit's public canary (p2pgan.privacy.audit.canary)
        self.last_canary: bool | None = None  # whether the last mechanism carried it (the audit's ground truth)

    def discriminator_gradient(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.canary is not None:
            from p2pgan.privacy.audit.canary import coin

            self.last_canary = coin()
            self.mechanism.canary = self.canary if self.last_canary else None
        g_real = self.mechanism(self.D, self.loss.real_term, real)
        self.accountant.compose()
        fake_loss = self.loss.fake_term(self.D, fake, self._noise)
        g_fake = _flat(torch.autograd.grad(fake_loss, self._params_v))
        stats = self.mechanism.last
        loss_real = stats.loss_real if stats is not None and stats.batch else 0.0
        return g_real + g_fake, fake_loss.detach() + loss_real

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "accountant" not in state:
            raise ValueError("the checkpoint was written without privacy.mode: dp; its steps carry no guarantee, "
                             "so a DP run cannot continue it (start in a new checkpoint.dir)")
        super().load_state_dict(state)
        self.accountant.load_state_dict(state["accountant"])


def build_private_game(
    model: str,
    loss: str,
    data: Dataset,
    *,
    batch_size: int,
    init_seed: int,
    seed: int,
    clip: float,
    noise_multiplier: float,
    delta: float,
    target_epsilon: float | None = None,
    device: str | torch.device = "cpu",
    latent_dim: int | None = None,
    width: int | None = None,
    noise: torch.Generator | None = None,
) -> DPGANGame:
    """:func:`p2pgan.trainer.game.build_game`'s models and data, as a :class:`DPGANGame`."""
    from p2pgan.trainer.game import build_game

    plain = build_game(model, loss, data, batch_size=batch_size, init_seed=init_seed, seed=seed, device=device,
                       latent_dim=latent_dim, width=width)
    return DPGANGame(plain.G, plain.D, plain.loss, data, latent_dim=plain.latent_dim, batch_size=batch_size,
                     seed=seed, clip=clip, noise_multiplier=noise_multiplier, delta=delta,
                     target_epsilon=target_epsilon, device=device, noise=noise)
