"""DPOSG (Liu et al., NeurIPS 2020, Algorithm 1), its overlap schedule, and the DGDA baseline.

The algorithms hold the rows ``X`` of the peers a mixer hosts (``[M, d]`` in the simulator, ``[1, d]``
in a network peer) and never know which mixer they run on. Per iteration ``k`` (``exact`` schedule)::

    Xbar = mix(X)               # t gossip rounds of step k
    Z    = Xbar - lr * d_prev   # reuse the previous direction: no second gradient
    g    = field(Z)             # ONE stochastic gradient per iteration
    d    = direction(g)         # OSG / OAdam / OAdagrad, moments updated once
    X    = Xbar - lr * d

The first step follows Algorithm 1 by default (``first_step="gradient"``): its line 3 needs
``g(Z_0)`` at ``Z_0 = X_0``, so step 0 takes one extra gradient there to seed ``d_prev``
(``Z_1 = mix(X_0) - lr P(g(X_0))``); ``first_step="zero"`` starts from ``d_prev = 0`` instead
(``Z_1 = mix(X_0)``, no extra gradient).

The ``overlap`` schedule (the paper's practical implementation, its Section 5.1) mixes ``z_k`` while
the gradient at ``z_k`` is computed, then ``z_{k+1} = mixed - 2 lr d_k + lr d_{k-1}``; its Algorithm-1
start is ``z_1 = mix(z_0) - lr d_0`` (that is, ``d_{-1} = d_0``: no extra gradient needed). With one
peer and no mixing both schedules follow Algorithm 1's ``z`` sequence exactly, which after the first
step is the one-line optimistic update ``z <- z - 2 lr d_k + lr d_{k-1}``.

DGDA (decentralized gradient descent-ascent, ``X = mix(X) - lr d(g(X))``) is the baseline that fails
on bilinear games; ``cp`` is DPOSG on the complete graph with one round (W = J, the centralized case).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from p2pgan.algorithm.directions import Direction, make_direction
from p2pgan.algorithm.game import LearningRate, MinMaxGame, check_lr
from p2pgan.algorithm.names import FIRST_STEPS, SCHEDULES  # noqa: F401  (re-exported; the config reads them there)
from p2pgan.errors import CheckpointError, ConfigError, P2PGANError
from p2pgan.mixing.base import Mixer

#: names accepted by :func:`make_algorithm` (``--algorithm`` on the command line)
ALGORITHM_NAMES = ("dposg", "dgda", "cp")

Field = Callable[[torch.Tensor], torch.Tensor] | MinMaxGame


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What one iteration did.

    Attributes:
        step: iterations completed, this one included.
        grad: the gradient rows ``g`` taken in this iteration.
        direction: the direction rows ``d = P(g)``.
        mix_seconds: wall time spent waiting for the mixer (exposed communication).
        field_seconds: wall time of the gradient computation (asynchronous devices: launch time only).
    """

    step: int
    grad: torch.Tensor
    direction: torch.Tensor
    mix_seconds: float
    field_seconds: float


def _field_fn(field: Field) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = getattr(field, "field", None)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    if callable(field):
        return field  # type: ignore[return-value]
    raise TypeError(f"field must be a MinMaxGame or a callable z -> g, got {type(field).__name__}")


def _minus_lr(base: torch.Tensor, lr: LearningRate, d: torch.Tensor) -> torch.Tensor:
    """``base - lr * d`` as a new tensor (one fused kernel)."""
    if isinstance(lr, torch.Tensor):
        return torch.addcmul(base, lr, d, value=-1.0)
    return torch.add(base, d, alpha=-lr)


class DecentralizedAlgorithm(abc.ABC):
    """State and bookkeeping shared by the decentralized algorithms (rows of the hosted peers).

    Args:
        x0: initial rows ``[n, d]`` with ``n = len(mixer.ranks)``; copied.
        mixer: any :class:`p2pgan.mixing.Mixer` hosting those ``n`` peers.
        direction: a :class:`Direction` or its name (``"osg"``, ``"oadam"``, ``"oadagrad"``).
        lr: a positive number, or a tensor ``[d]`` (see :func:`p2pgan.algorithm.lr_vector`).
    """

    name = "abstract"

    def __init__(
        self,
        x0: torch.Tensor,
        mixer: Mixer,
        direction: Direction | str = "oadam",
        lr: LearningRate = 1e-3,
        **direction_kwargs: Any,
    ) -> None:
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2:
            raise ConfigError(f"{self.name}: x0 must be a tensor of shape [peers, d], got {getattr(x0, 'shape', x0)!r}")
        if x0.shape[0] != len(mixer.ranks):
            raise ConfigError(
                f"{self.name}: x0 has {x0.shape[0]} rows but the mixer hosts {len(mixer.ranks)} peers {mixer.ranks}"
            )
        if not x0.is_floating_point():
            raise ConfigError(f"{self.name}: x0 must be floating point, got {x0.dtype}")
        self.mixer = mixer
        self.direction = make_direction(direction, **direction_kwargs)
        self._step = 0
        # the primary sequence (X for exact / dgda, z for overlap) and the previous direction d_{k-1}
        self._rows = x0.detach().clone()
        self._d_prev = torch.zeros_like(self._rows)
        self._lr: LearningRate = 1.0
        self.lr = lr

    # -- learning rate ----------------------------------------------------------------------------
    @property
    def lr(self) -> LearningRate:
        """The step size (a float, or a tensor ``[d]`` on the rows' device)."""
        return self._lr

    @lr.setter
    def lr(self, lr: LearningRate) -> None:
        lr = check_lr(lr, f"{self.name}: lr", self._rows.shape[1])
        if isinstance(lr, torch.Tensor):
            lr = lr.detach().to(dtype=self._rows.dtype, device=self._rows.device)
        self._lr = lr

    # -- views ------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Number of iterations completed (the next iteration's index k, passed to the mixer)."""
        return self._step

    @property
    def d_prev(self) -> torch.Tensor:
        """The last direction ``d_{k-1}`` (zeros before the first step)."""
        return self._d_prev

    @property
    @abc.abstractmethod
    def x(self) -> torch.Tensor:
        """The ``X`` sequence (the anchor points after each update)."""

    @property
    @abc.abstractmethod
    def z(self) -> torch.Tensor:
        """Where the next gradient is taken, before that step's mixing: the model to evaluate."""

    def step(self, field: Field) -> StepInfo:
        """Run one iteration (one evaluation of ``field``; two in the first step of the exact schedule
        with ``first_step="gradient"``) and return its :class:`StepInfo`.

        ``field`` is a :class:`MinMaxGame` or a callable ``z -> g`` on rows ``[n, d]``.
        """
        return self._iterate(_field_fn(field))

    @abc.abstractmethod
    def _iterate(self, field: Callable[[torch.Tensor], torch.Tensor]) -> StepInfo: ...

    def _mix_while_computing(
        self, x: torch.Tensor, field: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
        """Start mixing ``x``, take the gradient and direction at ``x`` meanwhile, then wait for the mix.

        Returns ``(g, d, mixed, mix_seconds, field_seconds)``; mix seconds count only the time the
        mixing was not hidden behind the gradient computation.
        """
        t0 = time.perf_counter()
        handle = self.mixer.start(x, self._step)
        t1 = time.perf_counter()
        g = field(x)
        self._check_grad(g, x)
        d = self.direction(g)
        t2 = time.perf_counter()
        mixed = handle.wait()
        t3 = time.perf_counter()
        return g, d, mixed, (t1 - t0) + (t3 - t2), t2 - t1

    def _check_grad(self, g: torch.Tensor, z: torch.Tensor) -> None:
        if not isinstance(g, torch.Tensor) or g.shape != z.shape:
            raise P2PGANError(
                f"{self.name}: the game's field returned {getattr(g, 'shape', type(g).__name__)} "
                f"for a point of shape {tuple(z.shape)}; it must return one gradient row per row"
            )

    def skip_to(self, step: int, *, back: bool = False) -> None:
        """Continue at iteration ``step`` (>= the current one) without taking the iterations in between.

        What a network peer does when it finds the federation ahead of it (elastic membership): it keeps
        its rows and direction state and rejoins the mixing at the federation's step. ``back``: the
        federation agreed on an earlier step than ours (a federation-wide restart): count from there.
        """
        if step < 0 or (step < self._step and not back):
            raise ValueError(f"{self.name}: cannot skip back from step {self._step} to {step}")
        self._step = step

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit: ``x``, ``z``, ``d_prev``, ``step``, direction moments."""
        return {
            "x": self.x.clone(),
            "z": self.z.clone(),
            "d_prev": self._d_prev.clone(),
            "step": self._step,
            "direction": self.direction.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; raises :class:`CheckpointError` if it does not fit this run."""
        missing = {"x", "z", "d_prev", "step", "direction"} - set(state)
        if missing:
            raise CheckpointError(f"{self.name}: checkpoint state lacks {sorted(missing)}")
        for key in ("x", "z", "d_prev"):
            t = state[key]
            if not isinstance(t, torch.Tensor) or t.shape != self._rows.shape:
                raise CheckpointError(
                    f"{self.name}: checkpoint {key!r} has shape {tuple(getattr(t, 'shape', ()))}, "
                    f"this run needs {tuple(self._rows.shape)}"
                )
        step = state["step"]
        if isinstance(step, torch.Tensor):
            step = int(step.item())
        if not isinstance(step, int) or step < 0:
            raise CheckpointError(f"{self.name}: checkpoint 'step' must be an integer >= 0, got {step!r}")
        dev, dt = self._rows.device, self._rows.dtype
        moments = dict(state["direction"])
        for key, value in moments.items():
            if isinstance(value, torch.Tensor):
                if value.shape != self._rows.shape:
                    raise CheckpointError(
                        f"{self.name}: checkpoint direction moment {key!r} has shape {tuple(value.shape)}, "
                        f"this run needs {tuple(self._rows.shape)}"
                    )
                moments[key] = value.to(device=dev, dtype=dt)
        try:
            self.direction.load_state_dict(moments)
        except ValueError as exc:
            raise CheckpointError(f"{self.name}: checkpoint direction state: {exc}") from None
        self._rows = state[self._primary].detach().to(device=dev, dtype=dt).clone()
        self._d_prev = state["d_prev"].detach().to(device=dev, dtype=dt).clone()
        self._step = step

    _primary = "x"

    def __repr__(self) -> str:
        lr = self._lr if not isinstance(self._lr, torch.Tensor) else f"tensor[{self._lr.numel()}]"
        return (
            f"{type(self).__name__}(rows={tuple(self._rows.shape)}, direction={self.direction!r}, lr={lr}, "
            f"step={self._step}, mixer={type(self.mixer).__name__})"
        )


class DPOSG(DecentralizedAlgorithm):
    """Decentralized Parallel Optimistic Stochastic Gradient with a pluggable direction.

    ``schedule="exact"`` is Algorithm 1 (mix, extrapolate with ``d_prev``, one gradient, update);
    ``schedule="overlap"`` mixes ``z_k`` concurrently with the gradient at ``z_k`` (``Mixer.start``)
    and sets ``z_{k+1} = mix(z_k) - 2 lr d_k + lr d_{k-1}``. ``first_step`` (:data:`FIRST_STEPS`)
    chooses how ``d_prev`` is seeded at step 0 (see the module docstring).

    Call ``info = algo.step(field)`` once per iteration, where ``field`` is a :class:`MinMaxGame`
    or a callable ``z -> g`` on rows ``[n, d]``.
    """

    name = "dposg"

    def __init__(
        self,
        x0: torch.Tensor,
        mixer: Mixer,
        direction: Direction | str = "oadam",
        lr: LearningRate = 1e-3,
        schedule: str = "exact",
        first_step: str = "gradient",
        **direction_kwargs: Any,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ConfigError(f"dposg: unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if first_step not in FIRST_STEPS:
            raise ConfigError(f"dposg: unknown first_step {first_step!r}; allowed: {', '.join(FIRST_STEPS)}")
        self.schedule = schedule
        self.first_step = first_step
        self.name = "dposg" if schedule == "exact" else "dposg-overlap"
        super().__init__(x0, mixer, direction, lr, **direction_kwargs)
        self._primary = "x" if schedule == "exact" else "z"

    @property
    def mixed_part(self) -> str:
        """The name of the sequence this algorithm mixes (what its gossip messages carry): ``x`` or ``z``."""
        return self._primary

    def adopt(self, point: torch.Tensor, step: int, field: Field) -> None:
        """Continue at ``step`` from ``point``, a value of the mixed sequence agreed with other members
        (state transfer): the previous direction is seeded as at Algorithm 1's start, with one gradient at
        ``point`` (``first_step="gradient"``; zero otherwise). The direction's moments stay this peer's own
        (from its checkpoint, or fresh): no member hands out its optimizer state."""
        if point.numel() != self._rows.numel():
            raise ValueError(f"{self.name}: adopted point has {point.numel()} elements, ours {self._rows.numel()}")
        if step < 0:
            raise ValueError(f"{self.name}: cannot adopt negative step {step}")
        self._rows = point.detach().reshape(self._rows.shape).to(device=self._rows.device, dtype=self._rows.dtype)
        self._rows = self._rows.clone()
        self._d_prev = torch.zeros_like(self._rows)
        if self.first_step == "gradient":
            g = _field_fn(field)(self._rows)
            self._check_grad(g, self._rows)
            d = self.direction(g)
            if bool(torch.isfinite(d).all()):  # else start from zero: a non-finite direction is never kept
                self._d_prev = d
        self._step = step

    @property
    def x(self) -> torch.Tensor:
        if self.schedule == "exact":
            return self._rows
        return _minus_lr(self._rows, self._lr, -self._d_prev)  # X_k = z_{k+1} + lr d_k

    @property
    def z(self) -> torch.Tensor:
        if self.schedule == "overlap":
            return self._rows
        return _minus_lr(self._rows, self._lr, self._d_prev)  # before mixing: X_k - lr d_k

    def _iterate(self, field: Callable[[torch.Tensor], torch.Tensor]) -> StepInfo:
        k = self._step
        seed = k == 0 and self.first_step == "gradient"
        if self.schedule == "exact":
            seed_s = 0.0
            if seed:  # Algorithm 1, line 3 at k = 1: g(Z_0) with Z_0 = X_0, before any mixing
                t = time.perf_counter()
                g0 = field(self._rows)
                self._check_grad(g0, self._rows)
                self._d_prev = self.direction.seed(g0)
                seed_s = time.perf_counter() - t
            t0 = time.perf_counter()
            xbar = self.mixer.mix(self._rows, k)
            t1 = time.perf_counter()
            z = _minus_lr(xbar, self._lr, self._d_prev)
            g = field(z)
            self._check_grad(g, z)
            d = self.direction(g)
            t2 = time.perf_counter()
            self._rows = _minus_lr(xbar, self._lr, d)
            mix_s, field_s = t1 - t0, t2 - t1 + seed_s
        else:
            g, d, mixed, mix_s, field_s = self._mix_while_computing(self._rows, field)
            if seed:  # z_1 = mix(z_0) - lr d_0, the overlap form of Algorithm 1's first step
                self._d_prev = d
            self._rows = _minus_lr(mixed, self._lr, d.mul(2.0).sub_(self._d_prev))
        self._d_prev = d
        self._step = k + 1
        return StepInfo(self._step, g, d, mix_s, field_s)


class DGDA(DecentralizedAlgorithm):
    """Decentralized gradient descent-ascent: ``X = mix(X) - lr * d(g(X))`` (mixing overlaps the gradient).

    The baseline that fails: on bilinear games its iterates spiral outwards. With ``direction="oadam"``
    it is decentralized (non-optimistic) Adam.
    """

    name = "dgda"

    @property
    def x(self) -> torch.Tensor:
        return self._rows

    @property
    def z(self) -> torch.Tensor:
        return self._rows

    def _iterate(self, field: Callable[[torch.Tensor], torch.Tensor]) -> StepInfo:
        g, d, mixed, mix_s, field_s = self._mix_while_computing(self._rows, field)
        self._rows = _minus_lr(mixed, self._lr, d)
        self._d_prev = d
        self._step += 1
        return StepInfo(self._step, g, d, mix_s, field_s)


def check_centralized(mixer: Mixer) -> None:
    """Raise :class:`ConfigError` if ``mixer`` is an in-process mixer that is not W = J with one round.

    Network mixers (no ``topology`` attribute) are trusted: the all-reduce mixer is the CP case.
    """
    topo = getattr(mixer, "topology", None)
    if topo is None or mixer.size == 1:
        return
    from p2pgan.topology import Complete

    if not isinstance(topo, Complete) or mixer.rounds != 1:
        raise ConfigError(
            f"cp: the centralized baseline needs the complete topology with 1 round, "
            f"got {topo.name!r} with {mixer.rounds} rounds"
        )


def make_algorithm(
    name: str,
    x0: torch.Tensor,
    mixer: Mixer,
    direction: Direction | str = "oadam",
    lr: LearningRate = 1e-3,
    first_step: str = "gradient",
    schedule: str = "exact",
    **direction_kwargs: Any,
) -> DecentralizedAlgorithm:
    """Build an algorithm by name (:data:`ALGORITHM_NAMES`).

    ``dposg``: DPOSG (``schedule`` :data:`SCHEDULES`: ``exact`` is Algorithm 1, ``overlap`` the paper's
    implementation); ``dgda``: decentralized gradient descent-ascent (no schedule: it takes only
    ``exact``); ``cp``: DPOSG on W = J with one round (the mixer must be the complete graph, e.g.
    ``InProcessMixer(Complete(M), 1)`` or an all-reduce mixer).
    ``first_step`` (:data:`FIRST_STEPS`) applies to the DPOSG forms; DGDA has no previous direction.
    The overlap schedule is not an algorithm of its own: ``make_algorithm("dposg", ..., schedule="overlap")``.
    """
    if name in ("dposg", "cp"):
        if name == "cp":
            check_centralized(mixer)
        return DPOSG(x0, mixer, direction, lr, schedule=schedule, first_step=first_step, **direction_kwargs)
    if name == "overlap":
        raise ConfigError("'overlap' is no longer an algorithm; it is a schedule: "
                          "use name 'dposg' with schedule='overlap'")
    if name == "dgda":
        if schedule != "exact":
            raise ConfigError(f"dgda has no schedule (it mixes, then steps); got schedule={schedule!r}")
        return DGDA(x0, mixer, direction, lr, **direction_kwargs)
    raise ConfigError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHM_NAMES)}")
