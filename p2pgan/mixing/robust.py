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
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import torch

from p2pgan.logsafe import printable
from p2pgan.mixing.robust_config import ROBUST_KINDS, RobustConfig, RobustKind  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: the radius is never below this fraction of ||x_i||: float rounding between consensual peers is not an attack
RADIUS_FLOOR = 1e-5
#: elements per block of :meth:`RobustMixing.combine`'s single pass: 256 KiB of float32, so a block of our
#: vector, of the output and of one neighbour's stay in a core's L2 cache while every neighbour is added
BLOCK_ELEMENTS = 65536


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


class _Pieces:
    """Walks a vector given as consecutive 1-D chunks in blocks: :meth:`take` covers the next ``n`` elements."""

    def __init__(self, chunks: Sequence[torch.Tensor]) -> None:
        self._chunks = chunks
        self._index = 0  # current chunk
        self._offset = 0  # elements of it already taken

    def take(self, n: int) -> list[tuple[int, torch.Tensor]]:
        """``(position within the block, piece)`` pairs that together cover the next ``n`` elements."""
        out: list[tuple[int, torch.Tensor]] = []
        at = 0
        while at < n:
            chunk = self._chunks[self._index]
            m = min(n - at, chunk.numel() - self._offset)
            out.append((at, chunk[self._offset : self._offset + m]))
            at += m
            self._offset += m
            if self._offset == chunk.numel():
                self._index, self._offset = self._index + 1, 0
        return out


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


#: ``before(lo, hi)``: called on each span of the vector before :meth:`RobustMixing.combine` reads it
BlockHook = Callable[[int, int], None]
#: ``after(lo, hi, out)``: rewrites the result's span ``out = result[lo:hi]`` in place into its final form
ResultHook = Callable[[int, int, torch.Tensor], object]


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
        #: (sender, reason) -> None, called when a sender is reported: the membership's suspects
        #: (p2pgan.membership.Membership.suspect), so that there is one notion of a suspect member
        self.on_suspect: Callable[[str, str], None] | None = None

    def begin(self, x: torch.Tensor, round_index: int = 0, label: str = "") -> Round:
        """Start combining neighbours into round ``round_index`` of a step; ``x`` is our own (pre-mixing) row."""
        if self.cfg.kind == "off":
            return Round(self, x, math.inf, label, None)
        if self.cfg.kind == "clip":
            own = float(torch.linalg.vector_norm(x))
        else:
            own = float(x.abs().max()) if x.numel() else 0.0
        return self._round(x, own, round_index, label)

    def _round(self, x: torch.Tensor, own: float, round_index: int, label: str) -> Round:
        """A :class:`Round` of round index ``round_index`` whose radius follows from ``own`` (the size of ``x``)."""
        tracker = self._trackers.get(round_index)
        if tracker is None:
            tracker = self._trackers[round_index] = RadiusTracker(self.cfg)
        return Round(self, x, tracker.radius(own), label, tracker)

    def combine(self, x: torch.Tensor, self_weight: float, shares: Sequence[tuple[str, VectorLike, float]],
                round_index: int = 0, label: str = "", *, before: BlockHook | None = None,
                after: ResultHook | None = None) -> torch.Tensor:
        """The round's result ``w_ii x + sum_j w_ij x_j``, each neighbour bounded as :meth:`begin` /
        :meth:`Round.add` do; ``shares`` are ``(sender, vector, w_ij)`` in the order they are added.

        ``before(lo, hi)`` runs once for each span ``[lo, hi)`` of :data:`BLOCK_ELEMENTS` (the last one shorter),
        in order, before anything reads it (compressed gossip completes its copies there, while the span is in
        cache); ``after(lo, hi, out[lo:hi])`` rewrites each span of the result in place (compressed gossip's
        consensus step), span by span in the one pass, or on the whole vector when a bounded neighbour makes
        the pass start over.

        ``clip`` and ``off`` make ONE pass over the vectors in cache-sized blocks: per block the self
        share, each neighbour's distance (``clip``) and each neighbour's share, so every vector is read
        from memory once instead of two or three times (the mixing arithmetic was a fifth of a gossip
        round's CPU; issue 11). With every neighbour within the radius, the usual case, that pass IS the
        result, bit for bit the sum :class:`Round` computes (same operations per element, same order).
        A round with a clipped or suspect neighbour is recomputed by :class:`Round` with the measured
        distances. ``trim`` always takes the :class:`Round` path.
        """
        n = x.numel()
        if not shares or self.cfg.kind == "trim":
            if before is not None:
                for lo in range(0, n, BLOCK_ELEMENTS):
                    before(lo, min(n, lo + BLOCK_ELEMENTS))
            if shares:
                out = self._combine_by_round(x, self_weight, shares, self.begin(x, round_index, label), None)
            else:
                out = x * self_weight
            if after is not None:
                after(0, n, out)
            return out
        clip = self.cfg.kind == "clip"
        out = torch.empty_like(x)
        scratch = torch.empty(min(BLOCK_ELEMENTS, n), dtype=x.dtype) if clip else None
        pieces = [_Pieces(vec.chunks) for _, vec, _ in shares]
        squares, own = [0.0] * len(shares), 0.0
        for lo in range(0, n, BLOCK_ELEMENTS):
            hi = min(n, lo + BLOCK_ELEMENTS)
            if before is not None:
                before(lo, hi)
            xb, ob = x[lo:hi], out[lo:hi]
            torch.mul(xb, self_weight, out=ob)
            if clip:
                own += float(torch.linalg.vector_norm(xb)) ** 2
            for k, (_, _, w) in enumerate(shares):
                for at, piece in pieces[k].take(hi - lo):
                    m = piece.numel()
                    if scratch is not None:
                        diff = torch.sub(piece, xb[at : at + m], out=scratch[:m])
                        squares[k] += float(torch.linalg.vector_norm(diff)) ** 2
                    ob[at : at + m].add_(piece, alpha=w)
            if after is not None:  # on the span while it is in cache (a clipped round recomputes it below)
                after(lo, hi, ob)
        if not clip:
            return out
        gate = self._round(x, math.sqrt(own), round_index, label)
        verdicts = [gate.judge(vec, sender, math.sqrt(sq)) for (sender, vec, _), sq in zip(shares, squares)]
        if not any(clipped or suspect for _, clipped, suspect in verdicts):
            return out
        out = self._combine_by_round(x, self_weight, shares, gate, verdicts)
        if after is not None:
            after(0, n, out)
        return out

    @staticmethod
    def _combine_by_round(x: torch.Tensor, self_weight: float, shares: Sequence[tuple[str, VectorLike, float]],
                          gate: Round, verdicts: list[tuple[float, bool, bool]] | None) -> torch.Tensor:
        """:meth:`combine` through ``gate``, one neighbour after the other (``verdicts``: already judged)."""
        out = x * self_weight
        extra = 0.0
        for k, (sender, vec, w) in enumerate(shares):
            if verdicts is None:
                extra += gate.add(out, vec, w, sender)
            else:
                extra += gate.add_judged(out, vec, w, sender, verdicts[k])
        if extra:
            out.add_(x, alpha=extra)
        return out

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
            if self.on_suspect is not None:
                self.on_suspect(sender, "robust mixing left its vectors out")
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
        if self._owner.cfg.kind == "off":
            vec.add_to(out, weight)
            return 0.0
        return self.add_judged(out, vec, weight, sender, self.judge(vec, sender))

    def judge(self, vec: VectorLike, sender: str, measured: float | None = None) -> tuple[float, bool, bool]:
        """Measure (unless ``measured`` is given), record and judge ``sender``'s vector, once per round:
        ``(distance, clipped, suspect)``."""
        owner, cfg = self._owner, self._owner.cfg
        if measured is None:
            measured = distance(vec.chunks, self._x, norm="l2" if cfg.kind == "clip" else "linf")
        assert self._tracker is not None
        self._tracker.record(measured, self.radius)
        clipped = measured > self.radius
        return measured, clipped, owner._judge(sender, clipped, self._label)

    def add_judged(self, out: torch.Tensor, vec: VectorLike, weight: float, sender: str,
                   verdict: tuple[float, bool, bool]) -> float:
        """:meth:`add` for a vector already judged by :meth:`judge`."""
        owner, cfg = self._owner, self._owner.cfg
        d, clipped, suspect = verdict
        if suspect:
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
