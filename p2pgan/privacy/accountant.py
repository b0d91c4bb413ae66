"""Per-site privacy accounting: (epsilon, delta) of the Poisson-subsampled Gaussian steps a site has taken.

Each site accounts for itself: every evaluation of its private gradient is one Poisson-sampled Gaussian
mechanism (sampling rate ``q = batch / n`` of THIS site, noise multiplier ``sigma``), composed over the
mechanisms it has run. Google's ``dp-accounting`` does the arithmetic: the privacy-loss-distribution (PLD)
accountant gives the reported epsilon (tight), the Renyi (RDP) accountant a cross-check (an upper bound
that is looser, never lower than PLD up to discretisation).

The state is a list of segments ``(q, sigma, count)``: a site that resumes or rejoins with other settings
appends a segment instead of restarting its budget. The state holds numbers only (checkpoint-safe).

The default delta for n examples is the largest power of ten strictly below ``1 / (10 n)``, capped at
``1e-5`` (:func:`default_delta`): well below ``1/n``, as a delta must be for a meaningful guarantee.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from p2pgan.errors import CheckpointError, ConfigError

#: the largest default delta (an upper cap on :func:`default_delta`)
DEFAULT_DELTA_CAP = 1e-5
#: PLD discretisation of the privacy-loss values: a pessimistic rounding, so epsilon is slightly over-reported
PLD_DISCRETIZATION = 1e-3
#: Renyi orders of the RDP cross-check (integers: fractional orders below 2 fail to converge at large q)
RDP_ORDERS = tuple(range(2, 64)) + (80, 128, 256, 512)
#: relative precision of :func:`calibrate_noise` (sigma found to within this factor of the boundary)
CALIBRATION_TOLERANCE = 1e-3


def default_delta(n: int) -> float:
    """The largest power of ten strictly below ``1 / (10 n)``, or :data:`DEFAULT_DELTA_CAP` if smaller."""
    if n < 1:
        raise ConfigError(f"privacy: a site needs at least one example to account for, got n = {n}")
    bound = 1.0 / (10.0 * n)
    exponent = math.floor(math.log10(bound))
    if 10.0 ** exponent >= bound:
        exponent -= 1
    return min(10.0 ** exponent, DEFAULT_DELTA_CAP)


Segment = tuple[float, float, int]  # (q, sigma, mechanisms)


def _events(segments: Sequence[Segment]) -> Any:
    from dp_accounting import dp_event

    parts = [dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), k)
             for q, s, k in segments if k > 0]
    return dp_event.ComposedDpEvent(parts)


def _epsilon(segments: tuple[Segment, ...], delta: float, accountant: Callable[[], Any]) -> float:
    """Epsilon at ``delta`` of ``segments`` composed by a fresh ``accountant()`` (inf with a noiseless
    segment, 0 with no step)."""
    if any(s == 0 and k > 0 for _, s, k in segments):
        return math.inf
    if not any(k > 0 for _, _, k in segments):
        return 0.0
    acc = accountant()
    acc.compose(_events(segments))
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=4096)
def _pld_epsilon(segments: tuple[Segment, ...], delta: float) -> float:
    from dp_accounting import pld

    return _epsilon(segments, delta, lambda: pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION))


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(segments: tuple[Segment, ...], delta: float) -> float:
    from dp_accounting import rdp

    return _epsilon(segments, delta, lambda: rdp.RdpAccountant(list(RDP_ORDERS)))


def pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """Epsilon (PLD) of ``steps`` Poisson-sampled Gaussian mechanisms with rate ``q`` and multiplier ``sigma``."""
    return _pld_epsilon(((float(q), float(sigma), int(steps)),), float(delta))


def rdp_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """The RDP accountant's epsilon for the same mechanisms (an upper bound; the cross-check)."""
    return _rdp_epsilon(((float(q), float(sigma), int(steps)),), float(delta))


def calibrate_noise(target_epsilon: float, delta: float, q: float, steps: int) -> float:
    """The smallest noise multiplier (within :data:`CALIBRATION_TOLERANCE`) whose PLD epsilon after
    ``steps`` mechanisms with rate ``q`` is at most ``target_epsilon`` (a bisection on the PLD accountant)."""
    if not target_epsilon > 0:
        raise ConfigError(f"privacy.target_epsilon must be > 0, got {target_epsilon!r}")
    if not 0 < q <= 1:
        raise ConfigError(f"privacy: the sampling rate q = batch / n must be in (0, 1], got {q!r}")
    lo, hi = 0.0, 1.0
    while pld_epsilon(q, hi, steps, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"privacy.target_epsilon: {target_epsilon} is out of reach for {steps} steps at "
                              f"q = {q:.4g} (sigma would exceed 1e4); train fewer steps or allow a larger epsilon")
    while hi - lo > CALIBRATION_TOLERANCE * hi:
        mid = (lo + hi) / 2
        if pld_epsilon(q, mid, steps, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


class PrivacyAccountant:
    """The mechanisms one site has run: ``compose()`` once per private gradient; ``epsilon()`` so far.

    ``q`` and ``sigma`` are this site's current settings; a restored state whose last segment differs
    keeps its segments and starts a new one (a budget never silently restarts).
    """

    def __init__(self, q: float, sigma: float, delta: float, target_epsilon: float | None = None) -> None:
        if not 0 < q <= 1:
            raise ConfigError(f"privacy: the sampling rate q = batch / n must be in (0, 1], got {q!r}")
        if not sigma >= 0:
            raise ConfigError(f"privacy.noise_multiplier must be >= 0, got {sigma!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")
        self.q, self.sigma, self.delta = float(q), float(sigma), float(delta)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self._segments: list[list[Any]] = [[self.q, self.sigma, 0]]
        self._allowed: int | None = None  # total mechanisms the budget allows (searched on first use)

    @property
    def steps(self) -> int:
        """Mechanisms composed so far (all segments)."""
        return sum(int(k) for _, _, k in self._segments)

    def segments(self, extra: int = 0) -> tuple[Segment, ...]:
        segs = [(float(q), float(s), int(k)) for q, s, k in self._segments]
        if extra:
            q, s, k = segs[-1]
            segs[-1] = (q, s, k + extra)
        return tuple(segs)

    def compose(self, count: int = 1) -> None:
        """Account for ``count`` more mechanisms at the current ``q`` and ``sigma``."""
        self._segments[-1][2] += int(count)

    def epsilon(self, extra: int = 0) -> float:
        """PLD epsilon at :attr:`delta` after the mechanisms so far (plus ``extra`` more)."""
        return _pld_epsilon(self.segments(extra), self.delta)

    def epsilon_rdp(self, extra: int = 0) -> float:
        """The RDP cross-check of :meth:`epsilon`."""
        return _rdp_epsilon(self.segments(extra), self.delta)

    def exhausted(self, extra: int = 1) -> bool:
        """True when ``extra`` more mechanisms would take epsilon past the target (never without a target).

        Cheap: the number of mechanisms the budget allows is searched once (PLD) and then compared with.
        """
        if self.target_epsilon is None:
            return False
        if self._allowed is None:
            self._allowed = self.steps + self._headroom()
        return self.steps + extra > self._allowed

    def _headroom(self) -> int:
        """The most further mechanisms (at the current q, sigma) that keep epsilon within the target; -1 if over."""
        target = float(self.target_epsilon)  # type: ignore[arg-type]
        if self.epsilon() > target:
            return -1
        if self.sigma == 0:
            return 0
        good, bad = 0, 1
        while self.epsilon(bad) <= target:
            good, bad = bad, bad * 2
            if bad > 10 ** 9:
                return bad
        while bad - good > 1:
            mid = (good + bad) // 2
            if self.epsilon(mid) <= target:
                good = mid
            else:
                bad = mid
        return good

    def record(self) -> dict[str, Any]:
        """What the metrics and the report show (numbers only)."""
        eps = self.epsilon()
        return {"epsilon": eps, "epsilon_rdp": self.epsilon_rdp(), "epsilon_budget": self.target_epsilon,
                "delta": self.delta, "sigma": self.sigma, "q": self.q, "dp_steps": self.steps}

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "segments": [[float(q), float(s), int(k)] for q, s, k in self._segments]}

    def load_state_dict(self, state: Mapping[str, Any], where: str = "checkpoint") -> None:
        try:
            segments = [[float(q), float(s), int(k)] for q, s, k in state["segments"]]
            delta = float(state["delta"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: its privacy accountant state is malformed") from None
        if not segments or any(not 0 < q <= 1 or s < 0 or k < 0 for q, s, k in segments):
            raise CheckpointError(f"{where}: its privacy accountant state holds impossible values {segments}")
        if delta != self.delta:
            raise CheckpointError(f"{where}: its privacy budget was accounted at delta = {delta:g}, this run has "
                                  f"{self.delta:g}; resume with the same privacy.delta")
        q, s, _ = segments[-1]
        if (q, s) != (self.q, self.sigma):
            segments.append([self.q, self.sigma, 0])
        self._segments = segments
        self._allowed = None
