"""The daemon's side of an elastic federation: where to start, how to catch up, what to hand out.

The rules are in :mod:`p2pgan.daemon.peer`'s docstring; the bookkeeping they rely on (who is live, who
was heard at which step, who is a suspect) is :class:`p2pgan.membership.Membership`, the transfer
itself is the wire's (:meth:`p2pgan.wire.mixer.GrpcMixer.fetch_state`) and the check of what several
members handed out is :mod:`p2pgan.daemon.transfer`. Every step this peer adopts is *agreed*
(:mod:`p2pgan.membership.steps`): an order statistic of the members' reports that no single member
can move, bounded by ``train.steps`` and the wall clock. Mixers without a membership (the
torch.distributed backend) have a fixed world: every function here is then a no-op.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pgan.daemon import transfer
from p2pgan.membership.steps import step_bound, tolerated

log = logging.getLogger(__name__)

#: (record) -> None: where rejoin and membership events go (the metrics file)
Emit = Callable[[dict[str, Any]], None]


def algorithm_id(cfg: Any, algo: Any) -> str:
    """What must agree between the ends of a state transfer besides the layout (e.g. ``DPOSG/exact/oadam``)."""
    return f"{type(algo).__name__}/{cfg.mixing.schedule}/{cfg.train.optimizer}"


def snapshot(cfg: Any, algo: Any) -> Any:
    """What FetchState hands out: the vector this peer mixes (what gossip carries anyway) and its step.

    Not the previous direction nor the optimizer moments (DESIGN.md section 4): the joiner seeds its own."""
    import torch

    from p2pgan.wire.state import StateSnapshot

    part = algo.mixed_part
    vec = getattr(algo, part).detach().reshape(-1).to("cpu", dtype=torch.float32).clone()
    return StateSnapshot(algo.steps, algorithm_id(cfg, algo), ((part, vec),), {"step": algo.steps})


def layout(cfg: Any, algo: Any) -> Any:
    """What a state must look like to be considered here: the mixed vector and the step, nothing else."""
    from p2pgan.wire.state import StateLayout

    part = algo.mixed_part
    return StateLayout(algorithm_id(cfg, algo), {part: algo.x.numel()}, frozenset({part}), frozenset({"step"}))


def federation_start(mixer: Any) -> float | None:
    """When the federation began (seconds since the epoch): its CA certificate's start of validity."""
    tls = getattr(getattr(mixer, "net", None), "tls", None)
    return None if tls is None else _ca_start(str(tls.ca))


@functools.lru_cache(maxsize=4)
def _ca_start(path: str) -> float | None:
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_before_utc.timestamp()
    except (OSError, ValueError):
        return None


def bound(mixer: Any, steps_total: int) -> int:
    """The highest step any member may credibly report now (see :func:`p2pgan.membership.steps.step_bound`)."""
    return step_bound(steps_total, federation_start(mixer), time.time())


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


def _transfer(cfg: Any, algo: Any, game: Any, mixer: Any, sources: list[str], target: int,
              limit: int) -> tuple[str, int] | None:
    """Ask ``sources`` at once, adopt what enough of them agree on (:func:`p2pgan.daemon.transfer.fetch_agreed`);
    ``(members that agreed, step)`` or None (then nothing changed here)."""
    membership = mixer.membership
    asked = sources[: min(transfer.MAX_SOURCES, 2 * tolerated(membership.size) + 1)]
    own = getattr(algo, algo.mixed_part).detach().reshape(-1).float().cpu()
    verdict = transfer.fetch_agreed(
        mixer, asked, layout(cfg, algo), size=membership.size, target=target, bound=limit, own=own,
        refuse=lambda pid, why: membership.suspect(pid, f"its state was refused: {why}", kind="state refused"))
    if verdict.point is None:
        return None
    algo.adopt(verdict.point, verdict.step, game)
    return "+".join(verdict.agreed), verdict.step


def start_position(cfg: Any, algo: Any, game: Any, mixer: Any, resumed: bool, steps_total: int, emit: Emit) -> None:
    """Before step 0 of this run: join a running federation by state transfer, or agree on the step.

    Both use the *agreed* step of the members' Hello reports (ours included), never the furthest one."""
    membership = getattr(mixer, "membership", None)
    if membership is None:
        return
    own = algo.steps
    limit = bound(mixer, steps_total)
    running = membership.running()
    target = membership.agreed(own, running, limit, "Hello") if running else own
    # members that train more than a step ahead of us: the federation runs without us (a peer that
    # trains at our own step just started a moment before us, and lock-step keeps us together)
    if target > own + 1:
        sources = sorted((pid for pid, step in running.items() if step >= target - transfer.STEP_SLACK),
                         key=lambda pid: (abs(running[pid] - target), pid))
        got = _transfer(cfg, algo, game, mixer, sources, target, limit)
        if got is not None:
            log.warning("joined the running federation at step %d by state transfer from %s (own state was at "
                        "step %d)", algo.steps, got[0], own)  # the step adopted, whatever the manifest said
            _rejoined(emit, "state-transfer", got[0], algo.steps, own)
            return
        log.warning("no agreed state was handed out; continuing from %s at the agreed step %d",
                    "our checkpoint" if resumed else "our initial state", target)
    else:
        # nobody trains ahead of us (a fresh start, or a federation-wide --resume): the members agree on
        # the step of their checkpoints (one liar cannot move it), which may be behind ours
        target = membership.agreed(own, membership.reported_steps(), limit, "Hello")
    if target != own:
        algo.skip_to(target, back=True)
        log.warning("the federation agreed on step %d: continuing there (ours was at %d)", target, own)
    if resumed or target != own:
        _rejoined(emit, "checkpoint" if resumed else "skip", None, algo.steps, own)


def catch_up(cfg: Any, algo: Any, game: Any, mixer: Any, steps_total: int, emit: Emit) -> None:
    """After a step that found this peer out of sync: move to the agreed step, fetching the state when far behind."""
    membership = getattr(mixer, "membership", None)
    if membership is None or not getattr(mixer, "out_of_sync", False):
        return
    limit = bound(mixer, steps_total)
    plan = membership.catch_up(algo.steps, out_of_sync=True, bound=limit)
    if plan is None:
        return
    own = algo.steps
    if plan.sources:
        got = _transfer(cfg, algo, game, mixer, list(plan.sources), plan.target, limit)
        if got is not None:
            log.warning("fell %d steps behind: adopted the state agreed by %s at step %d", plan.lag, got[0], algo.steps)
            _rejoined(emit, "state-transfer", got[0], algo.steps, own)
            return
    algo.skip_to(plan.target)
    log.warning("fell %d steps behind the federation: continuing at step %d with our own state", plan.lag, plan.target)
    _rejoined(emit, "skip", None, algo.steps, own)
