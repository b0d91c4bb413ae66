"""A site's privacy plan: what the daemon composes from the ``privacy:`` section at start.

:func:`plan` turns the configured target (or the given noise multiplier) into the numbers the mechanism
and the accountant use (q, sigma, C, delta) for this site's n examples and planned steps; :data:`NO_PRIVACY`
is what the log and the report say when ``privacy.mode`` is ``off``.

The privacy unit is one example (``privacy.unit: example``). A site whose patients contribute several
images each wants user-level privacy: one patient = one unit. That needs the sampler to draw patients
(each independently with probability q), the clipped unit to be the sum of a patient's images'
gradients, and ``q = batch_patients / n_patients``; a user gets most of it today by giving each patient
one example (for instance one image per patient, or the patient's images stacked as channels), since
the accounting then holds per patient. Only ``example`` is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from p2pgan.privacy.accountant import calibrate_noise, default_delta

#: what a site without DP says in its log and in the report
NO_PRIVACY = ("no formal privacy (privacy.mode: off): neighbours receive this site's discriminator every step, "
              "and its step-to-step change is close to a minibatch gradient of this site's private data")


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """The numbers of one site's DP mechanism and accountant."""

    q: float  # Poisson sampling rate = batch / n
    sigma: float  # noise multiplier
    clip: float  # per-example norm bound C
    delta: float
    target_epsilon: float | None
    planned_mechanisms: int
    n: int
    calibrated: bool  # sigma calibrated from target_epsilon (else given)

    def describe(self) -> str:
        budget = f"budget epsilon {self.target_epsilon:g}" if self.target_epsilon is not None else "no budget"
        how = "calibrated for" if self.calibrated else "given; planned"
        return (f"differential privacy per example: {budget} at delta {self.delta:g}; noise multiplier "
                f"{self.sigma:.4g} ({how} {self.planned_mechanisms} private steps), clip C = {self.clip:g}, "
                f"Poisson rate q = {self.q:.4g} over n = {self.n} examples")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(privacy: Any, n: int, batch_size: int, planned_mechanisms: int) -> PrivacyPlan:
    """The plan for a ``privacy`` config section (:class:`p2pgan.daemon.config.PrivacyConfig`, mode dp)."""
    q = min(1.0, batch_size / n)
    delta = privacy.delta if privacy.delta is not None else default_delta(n)
    if privacy.noise_multiplier is not None:
        sigma, calibrated = float(privacy.noise_multiplier), False
    else:
        sigma, calibrated = calibrate_noise(privacy.target_epsilon, delta, q, planned_mechanisms), True
    return PrivacyPlan(q, sigma, float(privacy.clip), delta, privacy.target_epsilon, planned_mechanisms, n,
                       calibrated)
