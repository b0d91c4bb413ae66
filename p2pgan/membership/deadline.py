"""How long a round waits for its awaited neighbours (failure detection, DESIGN.md section 5).

The configured ``round_timeout_s`` is an upper bound. Once enough rounds have been seen, the deadline
adapts to how long complete rounds really waited: :data:`ADAPTIVE_FACTOR` times the recent 95th
percentile, never below :data:`ADAPTIVE_FLOOR_S` (nor above the bound). A paused or partitioned
neighbour then costs the others a couple of seconds instead of the whole configured bound, while a
slow-but-alive neighbour (a busy machine, an evaluation step) stays well inside the deadline. A wrong
guess is cheap: a neighbour marked absent too early is waited for again from its next message on.
"""

from __future__ import annotations

import collections
import math

#: a round waits at most this many times the recent 95th percentile of complete rounds' waits
ADAPTIVE_FACTOR = 5.0
#: ... and never less than this (seconds): scheduling hiccups of a loaded machine stay below it
ADAPTIVE_FLOOR_S = 2.0
#: complete rounds remembered, and how many are needed before the deadline adapts
ADAPTIVE_WINDOW = 200
ADAPTIVE_MIN_ROUNDS = 20


class RoundDeadline:
    """The current deadline of a round, in seconds (see the module docstring)."""

    def __init__(self, bound_s: float, *, adaptive: bool = True) -> None:
        self.bound_s = bound_s
        self.adaptive = adaptive
        self._waits: collections.deque[float] = collections.deque(maxlen=ADAPTIVE_WINDOW)

    def observe(self, wait_s: float) -> None:
        """A round in which every awaited neighbour arrived waited ``wait_s`` seconds."""
        self._waits.append(wait_s)

    def current(self) -> float:
        if not self.adaptive or len(self._waits) < ADAPTIVE_MIN_ROUNDS:
            return self.bound_s
        waits = sorted(self._waits)
        p95 = waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)]
        return min(self.bound_s, max(ADAPTIVE_FLOOR_S, ADAPTIVE_FACTOR * p95))
