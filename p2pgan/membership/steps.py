"""Agreed steps: the step a peer adopts is an order statistic of the members' reports, never the maximum.

A member can lie about its step (a Hello reply, a Push header, a served state). Whatever one member
says must not decide alone what another peer does (DESIGN.md section 5c), so a peer adopts a step
(at start-up, after a restart, when it catches up) only as :func:`agreed_step`: of the reports it
holds (its own step included, each other member's latest report once), the ``(f + 1)``-th highest,
where ``f = (M - 1) // 2`` is the number of liars a federation of ``M`` members tolerates (fewer than
``M / 2``). ``f`` liars can then neither push the result above every honest report nor below them: it
always lies between two honest reports (or is one).

- ``M = 2``: ``f = 0``, the highest report: the other member decides alone. A federation of two has no
  majority; it tolerates no liar on steps (robust mixing still bounds what its vectors do).
- ``M = 3`` or ``4``: ``f = 1``, the second highest: one liar is outvoted by the other members.
- With fewer reports than ``f + 1`` (members absent), the lowest report: our own step is among them,
  so a peer never moves on the word of fewer members than a liar coalition could be.

Reports beyond the run's length (``train.steps``) or beyond what the wall clock allows since the
federation began (:func:`step_bound`) are refused before the order statistic is taken: such a report
is a lie (or a misconfigured member) and names its sender as a suspect.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: no honest peer takes more steps per second than this; a report beyond it (since the federation's
#: start, see :func:`step_bound`) is refused. Generous: a tiny model on a fast machine trains at a few
#: hundred steps per second.
MAX_STEPS_PER_SECOND = 1000.0


def tolerated(size: int) -> int:
    """How many liars a federation of ``size`` members tolerates on steps: fewer than half."""
    return max(0, (size - 1) // 2)


def agreed_step(own: int, reports: Iterable[int], size: int) -> int:
    """The ``(f + 1)``-th highest of ``own`` and ``reports`` (see the module docstring)."""
    values = sorted([own, *reports], reverse=True)
    return values[min(tolerated(size), len(values) - 1)]


def step_bound(steps_total: int, started_at: float | None, now: float) -> int:
    """The highest step a report may name: the run's length, and no more than the wall clock allows
    since the federation's start (``started_at``, seconds since the epoch; None: unknown)."""
    bound = steps_total
    if started_at is not None and now >= started_at:
        bound = min(bound, math.ceil((now - started_at) * MAX_STEPS_PER_SECOND))
    return bound


def credible(reports: Mapping[str, int], bound: int) -> tuple[dict[str, int], dict[str, int]]:
    """``(kept, refused)``: the reports at most ``bound`` and those beyond it (or negative)."""
    kept = {m: s for m, s in reports.items() if 0 <= s <= bound}
    return kept, {m: s for m, s in reports.items() if m not in kept}
