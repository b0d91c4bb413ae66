"""The harness report: numbers (report.json) and pictures (PNG curves, sample grids) from peers' metrics.

Input is each peer's JSON-lines metrics records (:mod:`p2pgan.metrics`) as the daemon writes them
(:mod:`p2pgan.daemon.peer`): ``start``, ``step``, ``eval`` and ``end`` records. Output, in the folder:

- ``report.json``: per peer the data shard size, steps, epochs, final losses, first and last scores,
  bytes sent and received, compute / communication / wall seconds; and a summary across peers.
- ``score.png``, ``losses.png``, ``consensus.png`` (:func:`p2pgan.trainer.images.write_run_figures`):
  each score vs epoch with the lowest-to-highest band across peers, as in the paper's Figure 2.
- ``samples-<peer>.png``: each peer's last sample grid.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.metrics import run_totals

def _records(records: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("type") == event]


def _sum(records: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(sum(float(r.get(key) or 0.0) for r in records))


def peer_summary(name: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What report.json says about one peer, from its metrics records."""
    starts, steps, evals, ends = (_records(records, e) for e in ("start", "step", "eval", "end"))
    last_step = steps[-1] if steps else {}
    totals = run_totals(records)  # byte counters restart with each run (resume); these add the runs up
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
        "bytes_sent": totals["bytes_sent"],
        "bytes_received": totals["bytes_received"],
        "compute_s": totals["compute_s"],
        "comm_s": totals["comm_s"],
        "eval_s": _sum(evals, "eval_s"),
        "dropped_rounds": totals["dropped"],
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
