"""The simulator's problem interface: :class:`ProblemConfig` (what every problem is built from) and
:class:`Problem` (a batched min-max game plus its start, equilibrium and metrics).

The concrete problems live in :mod:`p2pgan.sim.problems` (the toy games and :func:`make_problem`)
and :mod:`p2pgan.sim.gaussians`; both import this module and nothing imports them back, so there
is no import cycle.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import torch

from p2pgan.errors import config_error


@dataclasses.dataclass(frozen=True)
class ProblemConfig:
    """What every problem is built from; validated here, once.

    Attributes:
        peers: M virtual peers (rows).
        dim: problem dimension (bilinear: size of x and of y; None = the problem's default).
        hetero: spread of the peers' local games around the common one (0 = identical games).
        sigma: standard deviation of the gradient noise (bilinear, linear-wgan).
        batch: minibatch size per peer (gaussians).
        seed: seeds the problem's data, initial points and noise.
        device: torch device of the rows.
    """

    peers: int = 8
    dim: int | None = None
    hetero: float = 0.0
    sigma: float = 0.0
    batch: int = 64
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.peers, int) or self.peers < 1:
            raise config_error("--peers", "", f"must be an integer >= 1, got {self.peers!r}")
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim < 1):
            raise config_error("--dim", "", f"must be an integer >= 1, got {self.dim!r}")
        for flag, v in (("--hetero", self.hetero), ("--sigma", self.sigma)):
            if not math.isfinite(v) or v < 0:
                raise config_error(flag, "", f"must be a finite number >= 0, got {v!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise config_error("--batch", "", f"must be an integer >= 1, got {self.batch!r}")
        try:
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as exc:
            raise config_error("--device", "", f"{self.device!r} is not usable here: {exc}") from None


class Problem(abc.ABC):
    """A batched min-max game plus what the simulator needs around it (start, equilibrium, metrics)."""

    name: str = "abstract"
    #: defaults used when ``--lr`` / ``--optimizer`` are not given (``default_lr_v``: the max player's
    #: rate when it differs, used only when ``--lr`` is not given either)
    default_lr: float = 0.1
    default_lr_v: float | None = None
    default_optimizer: str = "osg"

    dim_u: int
    dim_v: int

    def __init__(self, config: ProblemConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)

    @property
    def dim(self) -> int:
        return self.dim_u + self.dim_v

    @abc.abstractmethod
    def initial(self) -> torch.Tensor:
        """Initial rows ``[M, d]``."""

    @abc.abstractmethod
    def field(self, z: torch.Tensor) -> torch.Tensor:
        """``[grad_u f_i, -grad_v f_i]`` at each peer's row of ``z`` (one stochastic oracle call)."""

    def equilibrium(self) -> torch.Tensor | None:
        """The equilibrium of the average game (shape ``[d]``), when known."""
        return None

    def evaluate(self, model: torch.Tensor) -> dict[str, float]:
        """Problem-specific metrics of one model row ``[d]`` (the peers' average)."""
        return {}

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    def _noisy(self, g: torch.Tensor) -> torch.Tensor:
        if self.config.sigma > 0:
            g = g.add_(self._randn(*g.shape).to(g.dtype), alpha=self.config.sigma)
        return g


def centred(s: torch.Tensor) -> torch.Tensor:
    """Subtract the mean over peers (dim 0) when there is more than one peer."""
    return s - s.mean(dim=0, keepdim=True) if s.shape[0] > 1 else s
