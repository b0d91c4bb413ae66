"""The harness report: numbers (report.json) and pictures (PNG curves, sample grids) from peers' metrics.

Input is each peer's JSON-lines metrics records (:mod:`p2pgan.metrics`) as the daemon writes them
(:mod:`p2pgan.daemon.peer`): ``start``, ``step``, ``eval`` and ``end`` records. Output, in the folder:

- ``report.json``: per peer the data shard size, steps, epochs, final losses, first and last scores,
  bytes sent and received, compute / communication / wall seconds; and a summary across peers.
- ``score.png``, ``losses.png``, ``consensus.png`` (:func:`p2pgan.trainer.images.write_run_figures`):
  each score vs epoch with the lowest-to-highest band across peers, as in the paper's Figure 2.
- ``samples-<peer>.png``: each peer's last sample grid;
- with faults (``p2pgan harness --fault``): per peer how often it started, where and how it rejoined
  (``rejoin`` records: state transfer, checkpoint or skip), the longest wall-clock gap between two of its
  consecutive steps, its median seconds per step before, during and after each fault, dropped rounds;
  and ``churn.png``: every peer's step and seconds per step over wall-clock time, with the fault times.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: seconds before a fault and after its end whose steps make the "before" and "after" medians
FAULT_WINDOW_S = 10.0


def step_intervals(records: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``(time, seconds since the previous step record)`` for consecutive steps of the same run."""
    out: list[tuple[float, float]] = []
    prev: float | None = None
    for r in records:
        kind = r.get("type")
        if kind == "start":
            prev = None
        elif kind == "step":
            t = float(r["time"])
            if prev is not None:
                out.append((t, t - prev))
            prev = t
    return out


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fault_end(event: Mapping[str, Any], metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
    """When a fault is over: its peer makes a step again (after SIGCONT; after its restart for kill and
    term; its first step for a join). A peer that never comes back: the end of the run."""
    records = metrics.get(event["peer"], ())
    t0 = float(event.get("end_time") or event["time"])
    after = [r for r in records if float(r["time"]) > t0]
    if event.get("kind") in ("kill", "term"):
        restart = next((i for i, r in enumerate(after) if r.get("type") == "start"), None)
        after = after[restart:] if restart is not None else []
    step = next((float(r["time"]) for r in after if r.get("type") == "step"), None)
    if step is not None:
        return step
    return max((float(r["time"]) for recs in metrics.values() for r in recs), default=t0)


def fault_phases(records: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
                 metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Median seconds per step of one peer before, during and after each fault (``None``: no step there)."""
    intervals = step_intervals(records)
    out = []
    for ev in events:
        if ev.get("kind") == "restart":
            continue  # part of the kill / term before it: that fault lasts until the peer is back
        t0, t1 = float(ev["time"]), _fault_end(ev, metrics)
        pick = lambda lo, hi: [d for t, d in intervals if lo <= t <= hi]  # noqa: E731
        out.append({"fault": ev["fault"], "start": t0, "end": t1,
                    "before_s": _median(pick(t0 - FAULT_WINDOW_S, t0)), "during_s": _median(pick(t0, t1)),
                    "after_s": _median(pick(t1, t1 + FAULT_WINDOW_S))})
    return out


def churn_summary(name: str, records: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
                  metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """What report.json says about one peer's life through the faults."""
    intervals = step_intervals(records)
    return {
        "starts": len(_records(records, "start")),
        "rejoins": [{k: r.get(k) for k in ("step", "how", "source", "from_step")} for r in _records(records, "rejoin")],
        "longest_gap_s": max((d for _, d in intervals), default=None),
        "median_step_s": _median([d for _, d in intervals]),
        "absent_events": sum(1 for r in _records(records, "member") if not r.get("live")),
        "faults": fault_phases(records, events, metrics),
    }


def write_churn_figure(out: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]],
                       events: Sequence[Mapping[str, Any]], t_start: float) -> Path:
    """``churn.png``: step and seconds per step of every peer over wall-clock time, fault times marked."""
    from p2pgan.trainer.images import save_panel_figure

    panels = {
        "step": {p: [(float(r["time"]) - t_start, float(r["step"])) for r in recs if r.get("type") == "step"]
                 for p, recs in metrics.items()},
        "seconds per step": {p: [(t - t_start, d) for t, d in step_intervals(recs)] for p, recs in metrics.items()},
    }

    def draw(ax: Any, ylabel: str, series: Mapping[str, Sequence[tuple[float, float]]]) -> None:
        for peer, pts in sorted(series.items()):
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=0.9, marker="." if ylabel != "step" else None, ms=2, label=peer)
        for i, ev in enumerate(events):
            ax.axvline(float(ev["time"]) - t_start, color="red", lw=0.8, ls="--",
                       label="fault" if i == 0 else None)
            ax.annotate(ev["fault"], (float(ev["time"]) - t_start, 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=6, va="top", ha="right", color="red")
        if ylabel != "step":
            ax.set_yscale("log")

    return save_panel_figure(out / "churn.png", panels, draw, xlabel="seconds since start",
                             title="steps over time (red: faults)", panel_size=(6.0, 3.6))


def _records(records: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("type") == event]


def _sum(records: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(sum(float(r.get(key) or 0.0) for r in records))


def peer_summary(name: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What report.json says about one peer, from its metrics records."""
    starts, steps, evals, ends = (_records(records, e) for e in ("start", "step", "eval", "end"))
    last_step = steps[-1] if steps else {}
    # byte counters are totals since the mixer opened; a resumed run restarts them, so add up per run
    runs_bytes_sent = runs_bytes_received = 0.0
    runs_dropped = 0
    run_last: dict[str, Any] = {}
    for r in records:
        if r.get("type") == "start" and run_last:  # a restart (resume) begins a new run: counters restart
            runs_bytes_sent += float(run_last.get("bytes_sent", 0))
            runs_bytes_received += float(run_last.get("bytes_received", 0))
            runs_dropped += int(run_last.get("dropped", 0))
            run_last = {}
        elif r.get("type") == "step":
            run_last = dict(r)
    summary: dict[str, Any] = {
        "peer": name,
        "shard_size": starts[-1].get("shard_size") if starts else None,
        "parameters": starts[-1].get("dim") if starts else None,
        "runs": len(starts),
        "steps": last_step.get("step", 0),
        "epochs": last_step.get("epoch", 0.0),
        "final": {k: last_step.get(k) for k in ("loss_g", "loss_d", "grad_norm", "consensus")},
        "first_scores": _scores(evals[0]) if evals else {},
        "scores": _scores(evals[-1]) if evals else {},
        "bytes_sent": runs_bytes_sent + float(run_last.get("bytes_sent", 0)),
        "bytes_received": runs_bytes_received + float(run_last.get("bytes_received", 0)),
        "compute_s": _sum(steps, "compute_s"),
        "comm_s": _sum(steps, "comm_s"),
        "eval_s": _sum(evals, "eval_s"),
        "dropped_rounds": runs_dropped + int(run_last.get("dropped", 0)),
        "end": ends[-1].get("reason") if ends else None,
        "samples_png": evals[-1].get("samples") if evals else None,
    }
    if steps:
        summary["wall_s"] = float(steps[-1]["time"]) - float((starts[-1] if starts else steps[0])["time"])
    return summary


def _scores(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": record.get("step"), "epoch": record.get("epoch"), **(record.get("scores") or {})}


def summarize(peers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Across-peer mean / min / max of the last scores and totals of bytes."""
    out: dict[str, Any] = {"peers": len(peers)}
    keys = sorted({k for p in peers.values() for k, v in p["scores"].items() if isinstance(v, (int, float)) and k not in ("step", "epoch")})
    for key in keys:
        values = [float(p["scores"][key]) for p in peers.values() if isinstance(p["scores"].get(key), (int, float))]
        out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    out["bytes_sent"] = sum(float(p["bytes_sent"]) for p in peers.values())
    out["bytes_received"] = sum(float(p["bytes_received"]) for p in peers.values())
    return out


def write_report(out: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]], extra: Mapping[str, Any] | None = None) -> Path:
    """Write report.json, the PNG curves and the per-peer sample grids into ``out``; return report.json."""
    out.mkdir(parents=True, exist_ok=True)
    from p2pgan.trainer.images import write_run_figures

    peers = {name: peer_summary(name, recs) for name, recs in sorted(metrics.items())}
    pictures = write_run_figures(metrics, out, x="epoch")
    events = list((extra or {}).get("faults") or ())
    if events:
        for name, summary in peers.items():
            summary["churn"] = churn_summary(name, metrics[name], events, metrics)
        t_start = min(float(r["time"]) for recs in metrics.values() for r in recs[:1]) if metrics else 0.0
        pictures.append(write_churn_figure(out, metrics, events, t_start))
    for name, summary in peers.items():
        src = summary.get("samples_png")
        if src and Path(src).is_file():
            dst = out / f"samples-{name}.png"
            shutil.copyfile(src, dst)
            summary["samples_png"] = dst.name
    report = {**dict(extra or {}), "summary": summarize(peers), "peers": peers,
              "pictures": sorted(p.name for p in pictures)}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
