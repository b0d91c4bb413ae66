"""Toy min-max problems over M virtual peers: each a :class:`p2pgan.algorithm.MinMaxGame` on ``[M, d]`` rows.

- ``bilinear``: ``f_i(x, y) = x^T A_i y`` with ``A_i = I + hetero * diag(s_i)`` (``s_i`` standard normal,
  centred over the peers so the average game is exactly ``x^T y``); equilibrium 0. Diagonal ``A_i``
  keep M = 1024 peers at d = 1000 in a few MB.
- ``linear-wgan``: the mean-learning WGAN of Daskalakis et al. (ICLR 2018): data ``N(v, I)`` with
  ``v = [3, 4]``, ``D(x) = <w, x>``, ``G(z) = z + theta``, so ``f = <w, v_i - theta>``; start
  ``theta = 1.7``, ``w = 1.4``; equilibrium ``theta = v``, ``w = 0``. ``hetero`` spreads the peers'
  data means around ``v`` (centred, so the equilibrium of the average game stays ``v``).
- ``gaussians``: see :mod:`p2pgan.sim.gaussians`.

``sigma`` adds Gaussian noise of that standard deviation to every gradient entry (a stochastic oracle).
"""

from __future__ import annotations

import torch

from p2pgan.errors import config_error
from p2pgan.sim.base import Problem, ProblemConfig, centred
from p2pgan.sim.gaussians import Gaussians

#: names accepted by ``p2pgan simulate --problem``
PROBLEM_NAMES = ("bilinear", "linear-wgan", "gaussians")


class Bilinear(Problem):
    """``f_i(x, y) = x^T A_i y``, ``A_i = I + hetero * diag(s_i)``; the field is ``[A_i y, -A_i x]``."""

    name = "bilinear"
    default_lr = 0.1
    default_optimizer = "osg"
    DEFAULT_DIM = 10

    def __init__(self, config: ProblemConfig) -> None:
        super().__init__(config)
        n = config.dim or self.DEFAULT_DIM
        self.dim_u = self.dim_v = n
        self.a = 1.0 + config.hetero * centred(self._randn(config.peers, n))  # diagonals of the A_i

    def initial(self) -> torch.Tensor:
        return self._randn(self.config.peers, self.dim)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        n = self.dim_u
        a = self.a.to(z.dtype)
        g = torch.cat((a * z[:, n:], -a * z[:, :n]), dim=1)
        return self._noisy(g)

    def equilibrium(self) -> torch.Tensor:
        return torch.zeros(self.dim, device=self.device)


class LinearWGAN(Problem):
    """Daskalakis et al.'s linear WGAN: ``u = theta`` (generator shift), ``v = w`` (linear critic)."""

    name = "linear-wgan"
    default_lr = 0.02
    default_optimizer = "oadam"
    DATA_MEAN = (3.0, 4.0)
    THETA0 = 1.7
    W0 = 1.4

    def __init__(self, config: ProblemConfig) -> None:
        super().__init__(config)
        if config.dim not in (None, len(self.DATA_MEAN)):
            raise config_error("--dim", "", f"linear-wgan is 2-dimensional, got {config.dim}")
        self.dim_u = self.dim_v = len(self.DATA_MEAN)
        v = torch.tensor(self.DATA_MEAN, device=self.device)
        self.means = v + config.hetero * centred(self._randn(config.peers, self.dim_u))  # peers' data means

    def initial(self) -> torch.Tensor:
        m = self.config.peers
        theta = torch.full((m, self.dim_u), self.THETA0, device=self.device)
        w = torch.full((m, self.dim_v), self.W0, device=self.device)
        return torch.cat((theta, w), dim=1)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        n = self.dim_u
        theta, w = z[:, :n], z[:, n:]
        # f = <w, v_i - theta>: grad_theta f = -w, -grad_w f = theta - v_i
        g = torch.cat((-w, theta - self.means.to(z.dtype)), dim=1)
        return self._noisy(g)

    def equilibrium(self) -> torch.Tensor:
        return torch.cat((torch.tensor(self.DATA_MEAN, device=self.device), torch.zeros(self.dim_v, device=self.device)))

    def evaluate(self, model: torch.Tensor) -> dict[str, float]:
        n = self.dim_u
        v = torch.tensor(self.DATA_MEAN, device=model.device, dtype=model.dtype)
        return {"theta_error": float((model[:n] - v).norm()), "w_norm": float(model[n:].norm())}


def make_problem(name: str, config: ProblemConfig) -> Problem:
    """Build a problem by name (:data:`PROBLEM_NAMES`)."""
    if name == "bilinear":
        return Bilinear(config)
    if name == "linear-wgan":
        return LinearWGAN(config)
    if name == "gaussians":
        return Gaussians(config)
    raise config_error("--problem", "", f"unknown problem {name!r}; allowed: {', '.join(PROBLEM_NAMES)}")
