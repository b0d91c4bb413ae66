"""Roll a step that produced non-finite parameters back to the last finite state.

Robust mixing bounds what a neighbour can do, but a step can still blow up (a huge learning rate, a
diverging discriminator, a poisoned vector from before robust mixing was on). A NaN in a peer's vector
would be refused by every neighbour from then on and would end up in its checkpoints, so a non-finite
step is undone: the algorithm's vectors and optimizer moments return to what they were before the step,
while the step counter still advances (the neighbours are at the next step; mixing stays in lock-step).
"""

from __future__ import annotations

import logging
from typing import Any

from p2pgan.checkpoint import all_finite, state_finite

log = logging.getLogger(__name__)


class FiniteGuard:
    """Wraps one algorithm step: ``with guard: algo.step(game)`` undoes the step if it went non-finite.

    ``rollbacks`` counts the steps undone (a metric).
    """

    def __init__(self, algo: Any) -> None:
        self.algo = algo
        self.rollbacks = 0
        self._saved: dict[str, Any] | None = None

    def __enter__(self) -> FiniteGuard:
        self._saved = self.algo.state_dict()  # clones: x, z, d_prev, moments
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        saved, self._saved = self._saved, None
        if exc_type is not None or saved is None:
            return
        algo = self.algo
        if all_finite(algo.x, algo.z, algo.d_prev) and state_finite(algo.direction.state_dict()):
            return
        step = algo.steps
        algo.load_state_dict({**saved, "step": step})
        self.rollbacks += 1
        log.error(
            "step %d produced non-finite parameters; rolled back to the state before it (rollback %d); "
            "no non-finite state is mixed or checkpointed", step, self.rollbacks,
        )
