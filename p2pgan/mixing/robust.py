"""Robust mixing: no single neighbour's vector can move this peer further than a bound per round.

A member's key can leak, so a received vector that passed every wire check (finite, right size, right
sender) may still be hostile: one element set to 3e38 turns the receiver's model into NaN at its next
step. The weighted sum of a round, ``x_i' = sum_j w_ij x_j``, is therefore written as
``x_i' = x_i + sum_j w_ij (x_j - x_i)`` (rows of W sum to 1) and each neighbour's difference is bounded:

- ``clip`` (He, Karimireddy and Jaggi, "Byzantine-robust decentralized learning via ClippedGossip",
  2022): ``x_j - x_i`` is scaled down to the Euclidean radius ``tau`` when it is longer. In the sum this is
  ``s w_ij x_j + (1 - s) w_ij x_i`` with ``s = min(1, tau / ||x_j - x_i||)``, so an honest round
  (``s = 1`` for all) runs the very same arithmetic as plain mixing: the result IS ``W X``, bit for bit.
- ``trim``: every coordinate of ``x_j - x_i`` is clamped to ``[-tau, tau]`` (``tau`` learned from the
  largest coordinate differences); again untouched, hence exact, when no coordinate exceeds it.
- ``off``: the plain weighted sum.

The radius (:class:`RadiusTracker`, one per round index of a step) is ``scale`` times the lower median of
the recent distances this peer measured in that round (each recorded as clipped, so a hostile neighbour
can raise its own history at most to the radius, and with honest neighbours in the majority the lower
median stays theirs), and never below ``RADIUS_FLOOR * ||x_i||``. Before ``warmup`` non-zero distances
were seen (peers start from the same point, so early distances are zero), the radius is
``warmup_scale * ||x_i||``: generous for honest starts, still a finite bound. An honest peer far from
the others (restarted from an old checkpoint) is clipped and, after ``suspect_after`` rounds, left out
until it is close again; its own radius grows with what it measures, so it still converges to the rest.

A sender whose vectors were clipped, or whose messages the wire refused (:meth:`RobustMixing.refused`),
``suspect_after`` times in a row is reported once (a warning, ``reported`` and the ``rejected`` /
``refused`` counters) and from then on treated as absent (its weight goes to this peer) until one of its
vectors falls inside the radius again.

Pure tensor functions plus a small stateful tracker; no gRPC here, so the in-process tests and the
network mixer share the same code.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
from collections.abc import Sequence
from typing import Literal, Protocol

import torch

from p2pgan.logsafe import printable

log = logging.getLogger(__name__)

RobustKind = Literal["clip", "trim", "off"]
ROBUST_KINDS: tuple[str, ...] = ("clip", "trim", "off")
#: the radius is never below this fraction of ||x_i||: float rounding between consensual peers is not an attack
RADIUS_FLOOR = 1e-5


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """``mixing.robust*`` settings. The defaults are the safe setting: clipped gossip."""

    kind: RobustKind = "clip"
    #: radius = scale x lower median of recent distances (honest distances vary by far less per window)
    scale: float = 8.0
    #: recent distances remembered (per peer, all neighbours together)
    window: int = 64
    #: non-zero distances needed before the history decides the radius
    warmup: int = 4
    #: radius during warm-up, relative to ||x_i|| (honest random starts differ by ~1.4 ||x_i||)
    warmup_scale: float = 4.0
    #: rounds in a row a sender's vector is clipped before it is reported and treated as absent
    suspect_after: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ROBUST_KINDS:
            raise ValueError(f"robust: {self.kind!r} is not one of {', '.join(ROBUST_KINDS)}")
        for name in ("scale", "warmup_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
                raise ValueError(f"robust_{name}: must be a finite number >= 1, got {value!r}")
        for name in ("window", "warmup", "suspect_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"robust_{name}: must be a positive integer, got {value!r}")


# -- pure tensor functions -------------------------------------------------------------------------------
def clip_scale(distance: float, radius: float) -> float:
    """``min(1, radius / distance)``: the factor that shortens a difference of ``distance`` to ``radius``."""
    if not distance > radius:  # also catches distance == 0
        return 1.0
    return radius / distance


def distance(chunks: Sequence[torch.Tensor], x: torch.Tensor, *, norm: Literal["l2", "linf"] = "l2") -> float:
    """``||v - x||`` (Euclidean or max-abs) for a vector ``v`` given as consecutive 1-D ``chunks``.

    Computed in the vectors' own precision (one pass, cheaper than the weighted sum itself); a distance
    beyond that precision's range comes out as ``inf``, which every radius clips to nothing.
    """
    total = 0.0
    offset = 0
    for chunk in chunks:
        n = chunk.numel()
        diff = chunk - x[offset : offset + n]
        offset += n
        if n == 0:
            continue
        if norm == "l2":
            total += float(torch.linalg.vector_norm(diff)) ** 2
        else:
            total = max(total, float(diff.abs().max()))
    return math.sqrt(total) if norm == "l2" else total


def add_clamped(out: torch.Tensor, chunks: Sequence[torch.Tensor], x: torch.Tensor, weight: float, radius: float) -> None:
    """``out += weight * clamp(v - x, -radius, radius)`` coordinate-wise (``v`` given as ``chunks``)."""
    offset = 0
    for chunk in chunks:
        n = chunk.numel()
        part = x[offset : offset + n]
        diff = (chunk.to(part.dtype) - part).clamp_(-radius, radius)
        out[offset : offset + n].add_(diff, alpha=weight)
        offset += n


# -- the radius ------------------------------------------------------------------------------------------
class RadiusTracker:
    """The clipping radius from recent distances (see the module docstring for the rule)."""

    def __init__(self, cfg: RobustConfig) -> None:
        self.cfg = cfg
        self._recent: collections.deque[float] = collections.deque(maxlen=cfg.window)

    def radius(self, self_norm: float) -> float:
        floor = RADIUS_FLOOR * self_norm  # rounding-level differences (after consensus) are never clipped
        if len(self._recent) < self.cfg.warmup:
            return max(self.cfg.warmup_scale * self_norm, floor, 1e-30)
        ordered = sorted(self._recent)
        return max(self.cfg.scale * ordered[(len(ordered) - 1) // 2], floor)  # the lower median

    def record(self, distance: float, radius: float) -> None:
        """Remember a measured distance, capped at the radius it was judged against; zeros carry no scale."""
        d = min(distance, radius)
        if d > 0 and math.isfinite(d):
            self._recent.append(d)


class VectorLike(Protocol):
    """A received vector: consecutive 1-D chunks (``p2pgan.wire.codec.ReceivedVector``)."""

    chunks: tuple[torch.Tensor, ...]

    def add_to(self, out: torch.Tensor, alpha: float) -> None: ...


@dataclasses.dataclass
class RobustStats:
    clipped: int = 0  # neighbour-rounds whose difference was shortened
    rejected: int = 0  # neighbour-rounds treated as absent because the sender is a suspect
    refused: int = 0  # messages of members that the wire refused (malformed, non-finite, out of window)
    reported: list[str] = dataclasses.field(default_factory=list)  # senders reported, in order


class RobustMixing:
    """One peer's robust combination; :meth:`begin` fixes the radius of a round, :class:`Round` adds."""

    def __init__(self, cfg: RobustConfig | None = None) -> None:
        self.cfg = cfg or RobustConfig()
        # one history per round index: with t rounds per step, distances shrink round by round (by the
        # spectral gap) and jump back at the next step's round 0, so each round is judged against its own past
        self._trackers: dict[int, RadiusTracker] = {}
        self._streak: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()  # refusals are reported from server threads, rounds run in the mixer's
        self.stats = RobustStats()

    def begin(self, x: torch.Tensor, round_index: int = 0, label: str = "") -> Round:
        """Start combining neighbours into round ``round_index`` of a step; ``x`` is our own (pre-mixing) row."""
        if self.cfg.kind == "off":
            return Round(self, x, math.inf, label, None)
        tracker = self._trackers.get(round_index)
        if tracker is None:
            tracker = self._trackers[round_index] = RadiusTracker(self.cfg)
        if self.cfg.kind == "clip":
            own = float(torch.linalg.vector_norm(x))
        else:
            own = float(x.abs().max()) if x.numel() else 0.0
        return Round(self, x, tracker.radius(own), label, tracker)

    def refused(self, sender: str, reason: str) -> None:
        """A member's message was refused by the wire checks: it counts like a clipped vector toward
        reporting the sender (and treating it as absent) until one of its vectors is mixed normally."""
        with self._lock:
            self.stats.refused += 1
            self._judge_locked(sender, True, f"wire refusal ({reason})", count_clip=False)

    def _judge(self, sender: str, clipped: bool, label: str, *, count_clip: bool = True) -> bool:
        """Count a sender's streak of clipped or refused vectors; True while it is a suspect (treated as absent)."""
        with self._lock:
            return self._judge_locked(sender, clipped, label, count_clip)

    def _judge_locked(self, sender: str, clipped: bool, label: str, count_clip: bool) -> bool:
        if not clipped:
            if self._streak.get(sender, 0) >= self.cfg.suspect_after:
                log.warning("%s: %s sends vectors within the radius again; mixing it again", label, printable(sender))
            self._streak[sender] = 0
            return False
        self.stats.clipped += count_clip
        self._streak[sender] += 1
        streak = self._streak[sender]
        if streak == self.cfg.suspect_after:
            self.stats.reported.append(sender)
            log.warning(
                "%s: %s sent %d vectors in a row that were refused or outside the clipping radius; treating it "
                "as absent (its weight goes to ourselves) until it sends one within the radius",
                label, printable(sender), streak,
            )
        return streak >= self.cfg.suspect_after


class Round:
    """The combination of one round: ``out`` starts as ``w_ii x_i``; :meth:`add` adds one neighbour."""

    def __init__(self, owner: RobustMixing, x: torch.Tensor, radius: float, label: str,
                 tracker: RadiusTracker | None) -> None:
        self._owner = owner
        self._tracker = tracker
        self._x = x
        self.radius = radius
        self._label = label

    def add(self, out: torch.Tensor, vec: VectorLike, weight: float, sender: str) -> float:
        """Add neighbour ``sender``'s share of ``vec`` to ``out``; return the weight that goes to ``x_i``.

        The caller adds ``returned * x_i`` to ``out`` once for the round (as for an absent neighbour).
        """
        owner, cfg = self._owner, self._owner.cfg
        if cfg.kind == "off":
            vec.add_to(out, weight)
            return 0.0
        d = distance(vec.chunks, self._x, norm="l2" if cfg.kind == "clip" else "linf")
        assert self._tracker is not None
        self._tracker.record(d, self.radius)
        clipped = d > self.radius
        if owner._judge(sender, clipped, self._label):
            owner.stats.rejected += 1
            return weight
        if not clipped:
            vec.add_to(out, weight)
            return 0.0
        if cfg.kind == "clip":
            s = clip_scale(d, self.radius)
            vec.add_to(out, weight * s)
            return weight * (1.0 - s)
        add_clamped(out, vec.chunks, self._x, weight, self.radius)
        return weight
