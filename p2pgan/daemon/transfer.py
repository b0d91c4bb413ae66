"""Checked state transfer: ask several members at once, adopt only what enough of them agree on.

A served state is a member's word like any other (DESIGN.md section 5c): one member must not be able
to poison a joiner (a huge element, a sign flip) or move its step. So a (re)joining peer

1. asks up to ``2 f + 1`` members in parallel (``f``: the liars the federation tolerates,
   :func:`p2pgan.membership.steps.tolerated`), each with a short deadline; once ``f + 1`` states are
   here the rest get :data:`STRAGGLER_GRACE_S`, so a hung member costs seconds and is outvoted rather
   than waited for;
2. refuses a state more than :data:`STEP_SLACK` steps behind the agreed step (a stale state would
   leave the joiner behind again) or beyond the bound on steps (the run's length and the wall clock),
   and one whose largest element is implausible (:data:`MAGNITUDE_FACTOR` times the others', ours
   included). A state *ahead* of the agreed step is no lie: the federation moves on while it is asked,
   and a loaded member answers late. It cannot move the joiner's step alone either: the step adopted
   is the lower median of the agreeing states' steps;
3. adopts only where at least ``f + 1`` states agree: each within :data:`AGREE_RELATIVE` of the others
   (relative Euclidean distance; honest members differ by their consensus distance, a few percent at
   most), like a replica that needs ``f + 1`` matching answers. The adopted point is the
   coordinate-wise median of the agreeing states (their mean for two), its step their lower median.

Every refused state gets one log line naming the member and the reason, and the member becomes a
suspect of the membership layer (:meth:`p2pgan.membership.Membership.suspect`). When too few states
agree, the joiner asks once more, :data:`RETRY_AFTER_S` later (:data:`ATTEMPTS`: a member busy serving
another joiner, catching up itself or slow on a loaded machine gets a second chance); then it adopts
nothing and continues with its own state (its checkpoint, or its start).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import torch

from p2pgan.errors import P2PGANError, ProtocolError
from p2pgan.membership.steps import tolerated

log = logging.getLogger(__name__)

#: states closer than this (relative to the larger vector's norm) agree; honest members' vectors differ
#: by their consensus distance (well below 1 % on the examples), a sign flip by 200 %
AGREE_RELATIVE = 0.05
#: a state whose largest element exceeds this many times the median of the states' largest elements
#: (ours included) is implausible
MAGNITUDE_FACTOR = 1000.0
#: ... and the typical largest element is taken as at least this (network weights are of order one; a
#: joiner's own fresh vector may be tiny)
MAGNITUDE_FLOOR = 1.0
#: a state may be this many steps behind the agreed step (a serving peer hands out a snapshot a few
#: steps old); ahead of it, only the bound on steps applies (module docstring)
STEP_SLACK = 8
#: members asked at once, at most
MAX_SOURCES = 5
#: once enough states are here, the members still to answer get this many more seconds (a hung member
#: costs a joiner this, not the call's whole deadline)
STRAGGLER_GRACE_S = 2.0
#: times the members are asked before the joiner gives up and continues with its own state
ATTEMPTS = 2
#: seconds between two asks: a member catching up itself hands out no state for a moment
RETRY_AFTER_S = 1.0


@dataclasses.dataclass(frozen=True)
class Offer:
    """One member's state: its step and its mixed vector (flat, float32)."""

    member: str
    step: int
    vector: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Agreement:
    """What the offers agree on: the point and step to adopt, the members that agreed, the refused ones."""

    point: torch.Tensor | None
    step: int
    agreed: tuple[str, ...]
    refused: dict[str, str]  # member -> why its state was refused (it is a suspect)
    why_not: str  # why nothing is adopted (empty when ``point`` is set)


def fetch_all(mixer: Any, sources: Sequence[str], expected: Any,
              need: int = 1) -> tuple[list[Offer], dict[str, str], dict[str, str]]:
    """Ask ``sources`` in parallel; ``(offers, refused, failures)``: the states, and member -> one-line reason
    for the replies refused by the checks (malformed, another layout) and for those that did not come.

    Each call has the mixer's deadline; once ``need`` states are here, the others get
    :data:`STRAGGLER_GRACE_S` more, so that a hung member costs seconds, not its whole deadline."""
    name = sorted(expected.required)[0]
    offers: list[Offer] = []
    refused: dict[str, str] = {}
    failures: dict[str, str] = {}
    if not sources:
        return offers, refused, failures
    pool = futures.ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="p2pgan-fetch")
    try:
        calls = {pool.submit(mixer.fetch_state, pid, expected): pid for pid in sources}
        pending = set(calls)
        grace_until: float | None = None
        while pending:
            wait = None if grace_until is None else max(0.0, grace_until - time.monotonic())
            done, pending = futures.wait(pending, timeout=wait, return_when=futures.FIRST_COMPLETED)
            if not done:
                break
            for call in done:
                pid = calls[call]
                try:
                    snap = call.result()
                except ProtocolError as exc:  # malformed, or not the state it must be: refused like a message
                    refused[pid] = str(exc)
                    continue
                except P2PGANError as exc:  # not answering is no lie: just no state from it
                    failures[pid] = str(exc)
                    continue
                offers.append(Offer(pid, snap.step, dict(snap.parts)[name].reshape(-1).to(torch.float32)))
            if grace_until is None and len(offers) >= need:
                grace_until = time.monotonic() + STRAGGLER_GRACE_S
        for call in pending:
            failures[calls[call]] = (f"no state within {STRAGGLER_GRACE_S:g} s after {len(offers)} other "
                                     "member(s) answered")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung call ends at its own deadline, unwaited
    return offers, refused, failures


def fetch_agreed(mixer: Any, sources: Sequence[str], expected: Any, *, size: int, target: int, bound: int,
                 own: torch.Tensor, refuse: Callable[[str, str], Any]) -> Agreement:
    """:func:`fetch_all` then :func:`agree`, asked again (:data:`ATTEMPTS` in all) while too few states
    agree; every refused state is logged and told to ``refuse(member, why)`` (the membership's suspects)."""
    verdict = Agreement(None, target, (), {}, "nobody to ask")
    for attempt in range(1, ATTEMPTS + 1 if sources else 1):
        if attempt > 1:
            time.sleep(RETRY_AFTER_S)  # a pause before asking the network again (not a synchronisation)
        offers, malformed, failures = fetch_all(mixer, sources, expected, tolerated(size) + 1)
        for pid, why in failures.items():
            log.warning("state transfer from %s failed: %s", pid, why)
        verdict = agree(offers, size=size, target=target, bound=bound, own=own)
        for pid, why in {**malformed, **verdict.refused}.items():
            log.warning("refused the state of %s: %s", pid, why)
            refuse(pid, why)
        if verdict.point is not None:
            break
        log.warning("adopted no state from %s (attempt %d of %d): %s", ", ".join(sources), attempt, ATTEMPTS,
                    verdict.why_not)
    return verdict


def _norm(v: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(v.double()))


def agree(offers: Sequence[Offer], *, size: int, target: int, bound: int, own: torch.Tensor) -> Agreement:
    """Check ``offers`` against the agreed ``target`` step (at most ``bound``) and against each other
    (see the module docstring); ``own`` is this peer's current vector (a reference for magnitudes)."""
    need = tolerated(size) + 1
    refused: dict[str, str] = {}
    low, high = max(0, target - STEP_SLACK), bound
    fit: list[Offer] = []
    for o in offers:
        if not low <= o.step <= high:
            refused[o.member] = (f"step {o.step} is outside what the agreed step {target} allows ({low}..{high}: "
                                 f"at most {STEP_SLACK} behind, not beyond the bound)")
        else:
            fit.append(o)
    if fit:
        scales = sorted([float(own.abs().max())] + [float(o.vector.abs().max()) for o in fit])
        reference = max(scales[(len(scales) - 1) // 2], MAGNITUDE_FLOOR)
        for o in list(fit):
            biggest = float(o.vector.abs().max())
            if biggest > MAGNITUDE_FACTOR * reference:
                refused[o.member] = (f"largest element {biggest:.3g} is implausible ({MAGNITUDE_FACTOR:g} x the "
                                     f"typical {reference:.3g})")
                fit.remove(o)
    norms = [_norm(o.vector) for o in fit]

    def close(i: int, j: int) -> bool:
        d = _norm(fit[i].vector - fit[j].vector)
        return math.isfinite(d) and d <= AGREE_RELATIVE * max(norms[i], norms[j], 1e-12)

    support = [[j for j in range(len(fit)) if close(i, j)] for i in range(len(fit))]
    best = max(range(len(fit)), key=lambda i: (len(support[i]), -i), default=None)
    group = support[best] if best is not None else []
    if len(group) < need:
        # too few agree: nobody can tell who lies, so nobody is named for disagreeing
        why = f"only {len(group)} of {len(offers)} state(s) agree, {need} are needed"
        return Agreement(None, target, (), refused, why)
    for i, o in enumerate(fit):
        if i not in group:
            refused[o.member] = (f"its vector is further than {AGREE_RELATIVE:g} (relative) from the states "
                                 f"of {', '.join(fit[j].member for j in group)}")
    chosen = [fit[i] for i in group]
    spread = max((_norm(a.vector - b.vector) / max(_norm(a.vector), 1e-12) for a in chosen for b in chosen),
                 default=0.0)
    log.info("states of %s agree (largest relative distance %.3g, allowed %g)",
             ", ".join(o.member for o in chosen), spread, AGREE_RELATIVE)
    stack = torch.stack([o.vector for o in chosen])
    point = stack.mean(0) if len(chosen) == 2 else stack.median(0).values
    steps = sorted(o.step for o in chosen)
    return Agreement(point, steps[(len(steps) - 1) // 2], tuple(o.member for o in chosen), refused, "")
