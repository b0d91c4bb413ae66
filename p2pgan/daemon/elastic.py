"""The daemon's side of an elastic federation: where to start, how to catch up, what to hand out.

The rules are in :mod:`p2pgan.daemon.peer`'s docstring; the bookkeeping they rely on (who is live, who
was heard at which step) is :class:`p2pgan.membership.Membership`, and the transfer itself is the
wire's (:meth:`p2pgan.wire.mixer.GrpcMixer.fetch_state`). Mixers without a membership (the
torch.distributed backend) have a fixed world: every function here is then a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from p2pgan.errors import P2PGANError

log = logging.getLogger(__name__)

#: (record) -> None: where rejoin and membership events go (the metrics file)
Emit = Callable[[dict[str, Any]], None]


def algorithm_id(cfg: Any, algo: Any) -> str:
    """What must agree between the ends of a state transfer besides the layout (e.g. ``DPOSG/exact/oadam``)."""
    return f"{type(algo).__name__}/{cfg.mixing.schedule}/{cfg.train.optimizer}"


def snapshot(cfg: Any, algo: Any) -> Any:
    """What FetchState hands out: the algorithm's state (rows, previous direction, moments, counters)."""
    from p2pgan.wire.state import StateSnapshot

    return StateSnapshot.from_state_dict(algo.state_dict(), algorithm_id(cfg, algo))


def layout(cfg: Any, algo: Any) -> Any:
    """What a state must look like to be adopted here (moments may be missing before the first step)."""
    from p2pgan.wire.state import StateLayout

    dim = algo.x.numel()
    parts = {"x": dim, "z": dim, "d_prev": dim, **{f"direction.{n}": dim for n in algo.direction.moment_names}}
    return StateLayout(algorithm_id(cfg, algo), parts, frozenset({"x", "z", "d_prev"}),
                       frozenset({"step", "direction.step"}))


class MemberEvents:
    """Liveness changes (reported on gRPC threads) queued for the metrics file, written by the loop."""

    def __init__(self, mixer: Any) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        membership = getattr(mixer, "membership", None)
        if membership is not None:
            membership.add_listener(self._on_change)

    def _on_change(self, pid: str, live: bool, reason: str) -> None:
        with self._lock:
            self._events.append({"type": "member", "member": pid, "live": live, "reason": reason,
                                 "time": time.time()})

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self._events = self._events, []
        return events


def _rejoined(emit: Emit, how: str, source: str | None, step: int, from_step: int) -> None:
    """One ``rejoin`` metrics record: how this peer (re)entered the federation's step (report.json reads them)."""
    emit({"type": "rejoin", "how": how, "source": source, "step": step, "from_step": from_step})


def _transfer(cfg: Any, algo: Any, mixer: Any, sources: Iterable[str]) -> tuple[str, int] | None:
    """Fetch and adopt the state of the first of ``sources`` that answers; ``(source, step)`` or None."""
    expected = layout(cfg, algo)
    for pid in sources:
        try:
            snap = mixer.fetch_state(pid, expected)
            algo.load_state_dict(snap.to_state_dict(tuple(algo.x.shape), algo.x.dtype))
        except P2PGANError as exc:
            log.warning("state transfer from %s failed: %s", pid, exc)
            continue
        return pid, snap.step
    return None


def start_position(cfg: Any, algo: Any, mixer: Any, resumed: bool, emit: Emit) -> None:
    """Before step 0 of this run: join a running federation by state transfer, or agree on the step."""
    membership = getattr(mixer, "membership", None)
    if membership is None:
        return
    own = algo.steps
    # members that train more than a step ahead of us: the federation runs without us (a peer that
    # trains at our own step just started a moment before us, and lock-step keeps us together)
    running = {pid: step for pid, step in membership.running().items() if step > own + 1}
    if running:
        sources = [pid for pid, _ in sorted(running.items(), key=lambda kv: (-kv[1], kv[0]))]
        got = _transfer(cfg, algo, mixer, sources)
        if got is not None:
            log.warning("joined the running federation at step %d by state transfer from %s (own state was at "
                        "step %d)", algo.steps, got[0], own)  # the step adopted, whatever the manifest said
            _rejoined(emit, "state-transfer", got[0], algo.steps, own)
            return
        log.warning("no running member handed out its state; continuing from %s at step %d",
                    "our checkpoint" if resumed else "our initial state", own)
    furthest = max([own, *membership.reported_steps().values()])
    if furthest > own:
        algo.skip_to(furthest)
        log.warning("the federation's furthest checkpoint is at step %d: continuing there (ours was at %d)",
                    furthest, own)
    if resumed or furthest > own:
        _rejoined(emit, "checkpoint" if resumed else "skip", None, algo.steps, own)


def catch_up(cfg: Any, algo: Any, mixer: Any, steps_total: int, emit: Emit) -> None:
    """After a step that found this peer out of sync: skip ahead, fetching the state when far behind."""
    membership = getattr(mixer, "membership", None)
    if membership is None or not getattr(mixer, "out_of_sync", False):
        return
    plan = membership.catch_up(algo.steps, out_of_sync=True)
    if plan is None:
        return
    if plan.target > steps_total:
        log.warning("a member was heard at step %d, beyond this run's %d steps: ignored", plan.target - 1, steps_total)
        return
    own = algo.steps
    if plan.sources:
        got = _transfer(cfg, algo, mixer, plan.sources)
        if got is not None:
            log.warning("fell %d steps behind: adopted the state of %s at step %d", plan.lag, got[0], algo.steps)
            _rejoined(emit, "state-transfer", got[0], algo.steps, own)
            return
    algo.skip_to(plan.target)
    log.warning("fell %d steps behind the federation: continuing at step %d with our own state", plan.lag, plan.target)
    _rejoined(emit, "skip", None, algo.steps, own)
