"""Preconditioners ``d = P(g)``: the direction an optimistic step moves along.

A direction is elementwise and stateful: it turns each new stochastic gradient ``g`` (any shape, any
device) into a direction ``d`` and updates its moments exactly once per gradient, which is what the
gradient reuse of DPOSG (one gradient per iteration) requires.

- :class:`OSG`: ``d = g`` (optimistic stochastic gradient).
- :class:`OAdam`: Optimistic Adam (Daskalakis et al., ICLR 2018): bias-corrected first and second moments,
  ``d = mhat / (sqrt(vhat) + eps)``.
- :class:`OAdagrad`: Optimistic Adagrad (Liu et al., ICLR 2020, Algorithm 2): ``H_k = delta I + diag(s_k)``
  with ``s_k`` the coordinate-wise 2-norm of all gradients so far, the current one included, ``d = H_k^{-1} g``.

The math lives in :meth:`Direction.update`, which works on an explicit state dict; the object form
(``d = direction(g)``) keeps its own state, and :class:`p2pgan.algorithm.OptimisticOptimizer` keeps
one state dict per parameter. ``state_dict()`` holds tensors and ints only (checkpoint-safe).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any

import torch

from p2pgan.algorithm.names import DIRECTION_NAMES  # the names make_direction accepts (also the config's)
from p2pgan.errors import ConfigError

State = dict[str, Any]  # values: torch.Tensor or int


class Direction(abc.ABC):
    """A stateful elementwise preconditioner; ``d = direction(g)`` consumes one gradient."""

    name: str = "abstract"

    def __init__(self) -> None:
        self._state: State = self.initial_state()

    # -- the math, on an explicit state -----------------------------------------------------------
    def initial_state(self) -> State:
        """A fresh state (moments are created lazily on the first gradient, with its shape/device)."""
        return {"step": 0}

    @abc.abstractmethod
    def update(self, g: torch.Tensor, state: State) -> torch.Tensor:
        """Fold ``g`` into ``state`` (in place) and return the direction ``d`` (a new tensor)."""

    # -- the object form --------------------------------------------------------------------------
    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        return self.update(g, self._state)

    def seed(self, g: torch.Tensor) -> torch.Tensor:
        """The direction of the seeding gradient ``g(Z_0)`` (Algorithm 1's first step, exact schedule):
        the ``d_prev`` of step 1. By default it is consumed like any gradient (it enters the moments)."""
        return self(g)

    @property
    def steps(self) -> int:
        """Number of gradients consumed so far."""
        return int(self._state["step"])

    def reset(self) -> None:
        """Forget all moments."""
        self._state = self.initial_state()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Copy of the state: ints and tensors only."""
        return {k: (v.clone() if isinstance(v, torch.Tensor) else int(v)) for k, v in self._state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | int]) -> None:
        """Restore a state from :meth:`state_dict` (tensors are copied; they keep their device)."""
        expected = set(self.initial_state()) | set(self._moment_names())
        unknown = set(state) - expected
        if "step" not in state or unknown:
            raise ConfigError(
                f"{self.name}: state must have 'step' and only {sorted(expected)}, got {sorted(state)}"
            )
        self._state = {k: (v.clone() if isinstance(v, torch.Tensor) else int(v)) for k, v in state.items()}

    def _moment_names(self) -> tuple[str, ...]:
        return ()

    @property
    def moment_names(self) -> tuple[str, ...]:
        """The tensors this direction keeps once it has seen a gradient (each shaped like the rows)."""
        return self._moment_names()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class OSG(Direction):
    """Optimistic stochastic gradient: ``d = g`` (no state besides the gradient count)."""

    name = "osg"

    def update(self, g: torch.Tensor, state: State) -> torch.Tensor:
        state["step"] = int(state["step"]) + 1
        return g.clone()


def _check_eps(name: str, eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"{name}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


class OAdam(Direction):
    """Optimistic Adam's direction (Daskalakis et al., ICLR 2018).

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``d = (m / (1-b1^k)) / (sqrt(v / (1-b2^k)) + eps)``,
    moments updated once per gradient. Defaults are the paper's GAN settings (0.5, 0.9).
    """

    name = "oadam"

    def __init__(self, betas: tuple[float, float] = (0.5, 0.9), eps: float = 1e-8) -> None:
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ConfigError(f"oadam: betas must be a pair of numbers in [0, 1), got {betas!r}") from None
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ConfigError(f"oadam: betas[{i}] must be in [0, 1), got {b!r}")
        self.betas = (b1, b2)
        self.eps = _check_eps("oadam", eps)
        super().__init__()

    def _moment_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, g: torch.Tensor, state: State) -> torch.Tensor:
        b1, b2 = self.betas
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
        k = int(state["step"]) + 1
        state["step"] = k
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (v / (1.0 - b2**k)).sqrt_().add_(self.eps)
        return (m / (1.0 - b1**k)).div_(denom)

    def __repr__(self) -> str:
        return f"OAdam(betas={self.betas}, eps={self.eps})"


class OAdagrad(Direction):
    """Optimistic Adagrad: Liu et al. ICLR 2020 ("Towards better understanding of adaptive gradient
    algorithms in generative adversarial nets") Algorithm 2 with the seeding gradient in the accumulator.

    Algorithm 2 keeps ``g_{1:k} = [g_1, ..., g_k]``, ``s_{k,i} = ||g_{1:k,i}||_2`` (the 2-norm of
    coordinate i over all gradients so far) and ``H_k = delta I + diag(s_k)``; its x step is
    ``x_k = x_{k-1} - eta H_k^{-1} g_k``, so the accumulator of step k holds ``g_k`` itself, and its
    z step ``z_k = x_{k-1} - eta H_{k-1}^{-1} g_{k-1}`` reuses the previous direction, which is
    exactly the ``d_prev`` DPOSG keeps. Hence ``d = g / (delta + sqrt(sum_{j<=k} g_j^2))``, with
    ``eps`` playing delta.

    ``first_z_step`` says what happens to the seeding gradient ``g_0 = g(z_0)`` of Algorithm 1's first
    step (exact schedule, ``first_step: gradient``; the overlap schedule and ``first_step: zero`` take
    no seeding gradient, so there both forms are the same):

    - ``"accumulator"`` (the default): ``g_0`` enters the accumulator like every other gradient
      (``H_0 = delta I + diag(|g_0|)``), which keeps the first z step within eta per coordinate;
    - ``"literal"``: Algorithm 2's own ``H_0 = delta I``: the first z step is ``eta / delta`` times
      ``g_0`` and ``g_0`` stays out of ``g_{1:k}``. With the default delta = 1e-8 that step is 1e8 eta
      times the gradient, which is why it is not the default; choose delta accordingly (the paper leaves
      it a free constant > 0).

    ``tests/test_algorithm.py`` checks both against Algorithm 2 written with explicit matrices. delta's
    default 1e-8 only guards the division (every ``|d_i| <= 1`` already, because ``s_k`` includes ``g_k``).
    """

    name = "oadagrad"
    #: what the seeding gradient does (see the class docstring)
    FIRST_Z_STEPS = ("accumulator", "literal")

    def __init__(self, eps: float = 1e-8, first_z_step: str = "accumulator") -> None:
        self.eps = _check_eps("oadagrad", eps)
        if first_z_step not in self.FIRST_Z_STEPS:
            raise ConfigError(f"oadagrad: first_z_step {first_z_step!r} is not one of {', '.join(self.FIRST_Z_STEPS)}")
        if first_z_step == "literal" and self.eps == 0:
            raise ConfigError("oadagrad: first_z_step 'literal' divides the seeding gradient by eps: eps must be > 0")
        self.first_z_step = first_z_step
        super().__init__()

    def _moment_names(self) -> tuple[str, ...]:
        return ("sum_sq",)

    def update(self, g: torch.Tensor, state: State) -> torch.Tensor:
        if "sum_sq" not in state:
            state["sum_sq"] = torch.zeros_like(g)
        state["step"] = int(state["step"]) + 1
        s = state["sum_sq"]
        s.addcmul_(g, g)
        return g / s.sqrt().add_(self.eps)

    def seed(self, g: torch.Tensor) -> torch.Tensor:
        if self.first_z_step == "literal":
            return g / self.eps  # H_0^{-1} g_0 with H_0 = delta I; g_0 is not part of g_{1:k}
        return self(g)

    def __repr__(self) -> str:
        return f"OAdagrad(eps={self.eps}, first_z_step={self.first_z_step!r})"


_CLASSES: dict[str, type[Direction]] = {"osg": OSG, "oadam": OAdam, "oadagrad": OAdagrad}


def make_direction(name: str | Direction, **kwargs: Any) -> Direction:
    """Build a direction by name (:data:`DIRECTION_NAMES`); hyperparameters go to its constructor.

    A :class:`Direction` instance is returned as is (with no keyword arguments allowed).
    Bad names or hyperparameters raise :class:`ConfigError` (a ``ValueError``) naming the value.
    """
    if isinstance(name, Direction):
        if kwargs:
            raise ConfigError(f"cannot apply hyperparameters {sorted(kwargs)} to an existing {name!r}")
        return name
    cls = _CLASSES.get(name)
    if cls is None:
        raise ConfigError(f"unknown direction {name!r}; allowed: {', '.join(DIRECTION_NAMES)}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{name}: bad hyperparameters {sorted(kwargs)}: {exc}") from None
