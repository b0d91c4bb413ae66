"""Parts every report states, for the harness's federation and for one site alike: the version that
wrote it and a peer's membership history (who was live when).

All of it is read from the metrics records a daemon writes (:mod:`p2pgan.metrics`); nothing here imports
torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p2pgan import __version__

def version() -> str:
    """``p2pgan <version>``, as the report names what wrote it."""
    return f"p2pgan {__version__}"


#: metrics record types that say something about membership, and how the history names them
_EVENTS = ("start", "member", "rejoin", "end")


def membership_history(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One peer's life in the federation: its starts (members, who was absent, resumed from where), members
    it saw leave or come back, its rejoins (state transfer, checkpoint, skip) and its ends, in order."""
    out: list[dict[str, Any]] = []
    step = 0
    for r in records:
        kind = r.get("type")
        if kind == "step":
            step = int(r.get("step", step))
            continue
        if kind not in _EVENTS:
            continue
        t = float(r.get("time", 0.0))
        if kind == "start":
            resumed = r.get("resumed_from")
            what = (f"started with members {', '.join(r.get('members') or [])}"
                    + (f" (absent: {', '.join(r['absent'])})" if r.get("absent") else "")
                    + (f", resumed from step {resumed}" if resumed is not None else ""))
            step = int(r.get("step") or 0)
        elif kind == "member":
            state = "is live again" if r.get("live") else "absent"
            what = f"{r.get('member')} {state}: {r.get('reason', '')}".rstrip(": ")
        elif kind == "rejoin":
            what = f"rejoined by {r.get('how')}" + (f" from {r['source']}" if r.get("source") else "") \
                + (f" (was at step {r['from_step']})" if r.get("from_step") is not None else "")
            step = int(r.get("step") or step)
        else:
            what = f"stopped: {r.get('reason')}"
            step = int(r.get("step") or step)
        out.append({"time": t, "step": step, "event": kind, "what": what})
    return out


def membership_markdown(history: Sequence[Mapping[str, Any]], *, limit: int = 200) -> list[str]:
    """The membership history as a table (seconds since the first event); the newest ``limit`` rows."""
    if not history:
        return []
    t0 = float(history[0]["time"])
    rows = list(history)[-limit:]
    lines = ["## Membership and churn", "",
             f"{len(history)} events"
             + (f"; the last {limit} shown (all in report.json)" if len(history) > limit else "")
             + ". Times are seconds since this peer's first start.", "",
             "| t (s) | step | event |", "|---|---|---|"]
    lines += [f"| {float(e['time']) - t0:.1f} | {e['step']} | {str(e['what']).replace('|', '/')} |" for e in rows]
    return [*lines, ""]
