"""This peer's view of the federation: members, liveness, and the step each member was last heard at.

Liveness (DESIGN.md section 5, "failure detection"):

- a member becomes *absent* when it misses a round's deadline, when the stream to it breaks, when it
  announces that it leaves, or when it did not answer at start-up;
- it becomes *live* again when a message of it arrives that shows it mixes at about our pace again
  (at most :data:`p2pgan.wire.inbox.MAX_STEP_SKEW` steps behind us, or ahead);
- a live member is *awaited* in round ``(k, r)`` unless it was already heard at a later position
  (it has moved past that round, so its message for it is not coming).

Catching up: a peer is *out of sync* when a neighbour it waited for had already moved past the round
(that neighbour did not wait for it). If members were heard at steps beyond ours (they train without
us), :meth:`Membership.catch_up` names the step to adopt: the *agreed* step of the recent reports
(:func:`p2pgan.membership.steps.agreed_step`, never the furthest one claimed: one liar cannot make a
peer skip) and, when that is more than :data:`TRANSFER_LAG_STEPS` away, the members to fetch the state
from. A step counts only from a message that passed every check (complete, finite: see the inbox),
and a report older than :data:`REPORT_TTL_S` no longer counts.

Suspects: a member whose word was refused (a step beyond the bounds, a state that disagrees with the
others) or whose vectors robust mixing left out is a *suspect* (:meth:`Membership.suspect`): one
notion, one place, logged once per member and reason.

The class is plain thread-safe bookkeeping: no network, no torch. Listeners (the inbox, the mixer, the
daemon's metrics) are called outside the lock on every liveness change.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from p2pgan.membership.members import PeerEntry, check_members
from p2pgan.membership.steps import agreed_step, credible

log = logging.getLogger(__name__)

#: a peer further behind than this many steps fetches the state from a neighbour instead of skipping
#: ahead with its own (stale) parameters
TRANSFER_LAG_STEPS = 10
#: a member's step report (message or Hello reply) older than this (seconds) no longer counts toward
#: the agreed step: a lie told once does not steer the federation for the rest of the run
REPORT_TTL_S = 30.0

Position = tuple[int, int]  # (step, round)
#: (member id, now live?, reason) -> None
Listener = Callable[[str, bool, str], None]


@dataclasses.dataclass
class MemberState:
    """What this peer knows about one other member."""

    id: str
    live: bool = True
    reason: str = ""  # why absent (empty while live)
    heard: Position | None = None  # latest (step, round) of a message from it
    reported_step: int | None = None  # the step it reported in its Hello reply
    training: bool = False  # it said it is past start-up (Hello reply)
    claimed: tuple[int, float] | None = None  # (step, monotonic time) of its latest accepted message
    suspect: str = ""  # why its word is distrusted (empty: not a suspect)
    suspect_kinds: set[str] = dataclasses.field(default_factory=set)  # kinds of lies already logged


@dataclasses.dataclass(frozen=True)
class CatchUp:
    """What a peer that fell behind does before its next step (see the module docstring)."""

    target: int  # the step to continue at
    lag: int  # steps between ours and the target
    sources: tuple[str, ...] = ()  # members to fetch the state from, best first; empty: keep our own state


class Membership:
    """The members (sorted ids; rank = index), their liveness and steps; see the module docstring."""

    def __init__(self, self_id: str, peers: Sequence[PeerEntry], *, source: str = "roster") -> None:
        check_members(peers, self_id, source=source)
        self.self_id = self_id
        self.entries = {p.id: p for p in peers}
        self.members: tuple[str, ...] = tuple(sorted(self.entries))
        self.rank = self.members.index(self_id)
        self._lock = threading.Lock()
        self._state = {m: MemberState(m) for m in self.members if m != self_id}
        self._listeners: list[Listener] = []
        #: this peer's own step and whether it trains yet (what Hello replies report)
        self.step = 0
        self.training = False
        self.leaving = False

    @property
    def size(self) -> int:
        return len(self.members)

    def others(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m != self.self_id)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- liveness ----------------------------------------------------------------------------------
    def is_live(self, pid: str) -> bool:
        if pid == self.self_id:
            return True
        with self._lock:
            return self._state[pid].live

    def absent(self) -> dict[str, str]:
        """Absent members and why."""
        with self._lock:
            return {m: s.reason for m, s in self._state.items() if not s.live}

    def live_members(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(m for m in self.members if m == self.self_id or self._state[m].live)

    def mark_absent(self, pid: str, reason: str, *, announced: bool = False) -> bool:
        """``pid`` is absent from now on (until a useful message of it arrives); True if that is news.

        ``announced``: it said so itself (a leave notice), which is logged as news, not as a warning."""
        return self._set_live(pid, False, reason, logging.INFO if announced else logging.WARNING)

    def mark_live(self, pid: str, reason: str) -> bool:
        return self._set_live(pid, True, reason, logging.INFO)

    def _set_live(self, pid: str, live: bool, reason: str, level: int) -> bool:
        with self._lock:
            st = self._state.get(pid)
            if st is None or st.live == live:
                return False
            st.live = live
            st.reason = "" if live else reason
        log.log(level, "member %s is %s: %s", pid, "back" if live else "absent", reason)
        for listener in self._listeners:
            listener(pid, live, reason)
        return True

    # -- what the wire hears -----------------------------------------------------------------------
    def heard(self, pid: str, step: int, round: int, *, useful: bool) -> None:
        """A message of ``pid`` for ``(step, round)`` passed every check; ``useful``: it mixes at our pace
        (see the module docstring). Its step counts toward the agreed step until it expires."""
        with self._lock:
            st = self._state.get(pid)
            if st is None:
                return
            if st.heard is None or (step, round) > st.heard:
                st.heard = (step, round)
            st.claimed = (step, time.monotonic())
            back = useful and not st.live
        if back:
            self.mark_live(pid, f"a message for step {step} round {round} arrived")

    def reported(self, pid: str, step: int, *, training: bool) -> None:
        """``pid`` said (Hello reply) that it is at ``step`` and whether it trains yet."""
        with self._lock:
            st = self._state.get(pid)
            if st is not None:
                st.reported_step = step
                st.training = training

    def awaited(self, pid: str, step: int, round: int) -> bool:
        """Wait for ``pid``'s message of ``(step, round)``? Live and not already heard further on."""
        with self._lock:
            st = self._state[pid]
            return st.live and (st.heard is None or st.heard <= (step, round))

    def passed(self, pid: str, step: int, round: int) -> bool:
        """``pid`` was heard at a position after ``(step, round)``: its message for that round is not coming."""
        with self._lock:
            st = self._state[pid]
            return st.heard is not None and st.heard > (step, round)

    # -- suspects ------------------------------------------------------------------------------------
    def suspect(self, pid: str, reason: str, *, kind: str | None = None) -> bool:
        """``pid``'s word was refused (or robust mixing left it out) for ``reason``; True if that is news.

        Logged once per member and ``kind`` of lie (default: the reason itself), so that a liar repeating
        itself with new numbers does not fill the log."""
        kind = reason if kind is None else kind
        with self._lock:
            st = self._state.get(pid)
            if st is None:
                return False
            news = kind not in st.suspect_kinds
            st.suspect = reason
            st.suspect_kinds.add(kind)
        if news:
            log.warning("member %s is a suspect: %s", pid, reason)
        return news

    def suspects(self) -> dict[str, str]:
        with self._lock:
            return {m: s.suspect for m, s in self._state.items() if s.suspect}

    # -- steps ---------------------------------------------------------------------------------------
    def reported_steps(self, *, training_only: bool = False) -> dict[str, int]:
        """The step each member reported in its Hello reply (only those that train, if asked)."""
        with self._lock:
            return {m: s.reported_step for m, s in self._state.items()
                    if s.reported_step is not None and (s.training or not training_only)}

    def running(self) -> dict[str, int]:
        """Members that said they are training, with the step they reported (start-up decisions)."""
        return self.reported_steps(training_only=True)

    def furthest(self) -> list[tuple[int, str]]:
        """``(step, member)`` for every member heard from, furthest first."""
        with self._lock:
            steps = [(s.heard[0], m) for m, s in self._state.items() if s.heard is not None]
        return sorted(steps, key=lambda sm: (-sm[0], sm[1]))

    def recent_steps(self, now: float | None = None) -> dict[str, int]:
        """The step of each live member's latest accepted message, if younger than :data:`REPORT_TTL_S`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return {m: s.claimed[0] for m, s in self._state.items()
                    if s.live and s.claimed is not None and now - s.claimed[1] <= REPORT_TTL_S}

    def agreed(self, own: int, reports: dict[str, int], bound: int, what: str) -> int:
        """The agreed step of ``own`` and ``reports`` (those beyond ``bound`` refused, their senders suspects)."""
        kept, refused = credible(reports, bound)
        for pid, step in refused.items():
            self.suspect(pid, f"{what} step {step} is beyond the bound {bound}", kind=f"{what} step beyond the bound")
        return agreed_step(own, kept.values(), self.size)

    def catch_up(self, our_step: int, *, out_of_sync: bool, bound: int | None = None) -> CatchUp | None:
        """What to do before step ``our_step`` when the last step found us out of sync (else None).

        The target is the agreed step of our own and the members' recent reports (at most ``bound``),
        never the furthest one: see :mod:`p2pgan.membership.steps`."""
        if not out_of_sync:
            return None
        recent, _ = credible(self.recent_steps(), our_step + 10 ** 12 if bound is None else bound)
        target = self.agreed(our_step, self.recent_steps(), our_step + 10 ** 12 if bound is None else bound, "reported")
        if target <= our_step:
            # a member at our step, or behind: our next message is useful to it (it is at most one step
            # ahead of that message), so it waits for us again; skipping would make *it* fall behind
            return None
        lag = target - our_step
        # sources: the members at (or just past) the agreed step, closest first; the state is checked anyway
        near = sorted((s - target, m) for m, s in recent.items() if s >= target)
        sources = tuple(m for _, m in near) if lag > TRANSFER_LAG_STEPS else ()
        return CatchUp(target, lag, sources)
