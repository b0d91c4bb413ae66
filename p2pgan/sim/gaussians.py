"""The 8-Gaussians ring (radius 2, std 0.02) learned by small MLPs with WGAN-GP, vectorised over peers.

Every peer's generator and critic live in one row of ``z``; the M networks run together as batched
matrix products (``torch.baddbmm`` over a leading peer dimension), and one backward pass gives every
peer's gradient because the peers' losses are independent terms of one sum. The field at a row is
``[grad_u L_G, grad_v L_D]`` at that same row (simultaneous update) with the WGAN-GP losses
``L_G = -E D(G(n))`` and ``L_D = E D(G(n)) - E D(x) + lambda E (||grad D(xhat)|| - 1)^2``.

Quality (PacGAN's convention): a sample is high quality when it lies within 3 std of its nearest
mode; a mode is covered when at least :data:`COVER_FRACTION` of the samples are high-quality
samples of that mode.
"""

from __future__ import annotations

import math

import torch

from p2pgan.errors import config_error
from p2pgan.sim.base import Problem, ProblemConfig
from p2pgan.trainer.evaluation import GaussiansEvaluator

MODES = 8
RADIUS = 2.0
STD = 0.02
LATENT = 2
HIDDEN = 64
GP_WEIGHT = 1.0
EVAL_SAMPLES = 2500
#: 20 of 2500 samples, PacGAN's threshold for the 2-D ring
COVER_FRACTION = 20 / 2500


def _layer_shapes(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    return list(zip(sizes[:-1], sizes[1:]))


class _BatchedMLP:
    """An MLP whose weights for all peers are views into rows of a flat ``[M, n]`` tensor."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.shapes = _layer_shapes(sizes)
        self.numel = sum(i * o + o for i, o in self.shapes)

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``flat [M, numel]``, ``x [M, B, in]`` -> ``[M, B, out]`` (ReLU between layers)."""
        m = flat.shape[0]
        pos = 0
        for k, (i, o) in enumerate(self.shapes):
            w = flat[:, pos : pos + i * o].reshape(m, i, o)
            pos += i * o
            b = flat[:, pos : pos + o].unsqueeze(1)
            pos += o
            x = torch.baddbmm(b, x, w)
            if k < len(self.shapes) - 1:
                x = torch.relu(x)
        return x

    def init(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """One flat row with PyTorch's default Linear initialisation (uniform, bound 1/sqrt(fan_in))."""
        parts = []
        for i, o in self.shapes:
            bound = 1.0 / math.sqrt(i)
            parts.append((torch.rand(i * o, generator=generator, device=device) * 2 - 1) * bound)
            parts.append((torch.rand(o, generator=generator, device=device) * 2 - 1) * bound)
        return torch.cat(parts)


class Gaussians(Problem):
    """WGAN-GP on the 8-Gaussians ring; all peers start from the same networks (common initialisation)."""

    name = "gaussians"
    # two time scales (the critic 10x faster) stand in for the usual 5 critic steps per generator step,
    # which a simultaneous one-gradient-per-iteration method cannot take
    default_lr = 2e-4
    default_lr_v = 2e-3
    default_optimizer = "oadam"

    def __init__(self, config: ProblemConfig) -> None:
        super().__init__(config)
        if config.dim is not None:
            raise config_error("--dim", "", "gaussians has a fixed architecture; leave --dim out")
        if config.sigma:
            raise config_error("--sigma", "", "applies to bilinear and linear-wgan only")
        if config.hetero > 1:
            raise config_error("--hetero", "", f"for gaussians is a probability in [0, 1], got {config.hetero}")
        self.gen = _BatchedMLP((LATENT, HIDDEN, HIDDEN, 2))
        self.critic = _BatchedMLP((2, HIDDEN, HIDDEN, 1))
        self.dim_u, self.dim_v = self.gen.numel, self.critic.numel
        angles = torch.arange(MODES, dtype=torch.float32) * (2 * math.pi / MODES)
        self.centres = (torch.stack((angles.cos(), angles.sin()), dim=1) * RADIUS).to(self.device)
        self.evaluator = GaussiansEvaluator(MODES, RADIUS, STD, min_fraction=COVER_FRACTION)
        # peer i draws a fraction `hetero` of its data from its home mode i mod 8 (0 = iid peers)
        self.home = torch.arange(config.peers, device=self.device) % MODES

    def initial(self) -> torch.Tensor:
        row = torch.cat((self.gen.init(self.generator, self.device), self.critic.init(self.generator, self.device)))
        return row.unsqueeze(0).repeat(self.config.peers, 1)

    def sample_data(self, batch: int) -> torch.Tensor:
        """Each peer's private minibatch ``[M, batch, 2]``."""
        m = self.config.peers
        mode = torch.randint(MODES, (m, batch), generator=self.generator, device=self.device)
        if self.config.hetero > 0:
            at_home = torch.rand(m, batch, generator=self.generator, device=self.device) < self.config.hetero
            mode = torch.where(at_home, self.home.unsqueeze(1).expand(m, batch), mode)
        return self.centres[mode] + STD * self._randn(m, batch, 2)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        m, b = z.shape[0], self.config.batch
        with torch.enable_grad():
            u = z[:, : self.dim_u].detach().float().requires_grad_(True)
            v = z[:, self.dim_u :].detach().float().requires_grad_(True)
            fake = self.gen.forward(u, self._randn(m, b, LATENT))
            loss_g = -self.critic.forward(v.detach(), fake).mean(dim=(1, 2)).sum()
            (g_u,) = torch.autograd.grad(loss_g, u)
            real = self.sample_data(b)
            fake = fake.detach()
            mix = torch.rand(m, b, 1, generator=self.generator, device=self.device)
            xhat = (mix * real + (1 - mix) * fake).requires_grad_(True)
            (dx,) = torch.autograd.grad(self.critic.forward(v, xhat).sum(), xhat, create_graph=True)
            gp = (dx.norm(dim=2) - 1).pow(2).mean(dim=1)
            loss_d = self.critic.forward(v, fake).mean(dim=(1, 2)) - self.critic.forward(v, real).mean(dim=(1, 2))
            (g_v,) = torch.autograd.grad((loss_d + GP_WEIGHT * gp).sum(), v)
        return torch.cat((g_u, g_v), dim=1).to(z.dtype)

    @torch.no_grad()
    def samples(self, model: torch.Tensor, n: int = EVAL_SAMPLES) -> torch.Tensor:
        """``n`` generator samples ``[n, 2]`` of one model row."""
        u = model[: self.dim_u].float().unsqueeze(0)
        return self.gen.forward(u, self._randn(1, n, LATENT))[0]

    def evaluate(self, model: torch.Tensor) -> dict[str, float]:
        return self.evaluator.scores(self.samples(model))
