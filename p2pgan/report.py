"""The harness report: numbers (report.json) and pictures (PNG curves, sample grids) from peers' metrics.

Input is each peer's JSON-lines metrics file as the daemon writes it (:mod:`p2pgan.daemon.peer`):
``start``, ``step``, ``eval`` and ``end`` records. Output, in the report folder:

- ``report.json``: per peer the data shard size, steps, epochs, final losses, first and last scores,
  bytes sent and received, compute / communication / wall seconds; and a summary across peers.
- ``score.png``: score (and FID where present) vs epoch, mean across peers with the lowest-to-highest
  band, as in the paper's Figure 2.
- ``losses.png`` and ``consensus.png``: per-peer curves vs step.
- ``samples-<peer>.png``: each peer's last sample grid.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: how many steps the moving average of the loss curves spans (noise of single minibatches)
LOSS_SMOOTHING_STEPS = 10


def _records(records: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("event") == event]


def _sum(records: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(sum(float(r.get(key) or 0.0) for r in records))


def peer_summary(name: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What report.json says about one peer, from its metrics records."""
    starts, steps, evals, ends = (_records(records, e) for e in ("start", "step", "eval", "end"))
    last_step = steps[-1] if steps else {}
    # byte counters are totals since the mixer opened; a resumed run restarts them, so add up per run
    runs_bytes_sent = runs_bytes_received = 0.0
    run_last: dict[str, Any] = {}
    for r in steps:
        if run_last and int(r["step"]) <= int(run_last["step"]):  # a restart (resume) begins a new run
            runs_bytes_sent += float(run_last.get("bytes_sent", 0))
            runs_bytes_received += float(run_last.get("bytes_received", 0))
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
        "dropped_rounds": last_step.get("dropped", 0),
        "end": ends[-1].get("reason") if ends else None,
        "samples_png": evals[-1].get("samples") if evals else None,
    }
    if steps:
        summary["wall_s"] = float(steps[-1]["time"]) - float((starts[-1] if starts else steps[0])["time"])
    return summary


def _scores(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("event", "peer", "time", "samples", "eval_s")}


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
    peers = {name: peer_summary(name, recs) for name, recs in sorted(metrics.items())}
    pictures = {"score": plot_scores(out / "score.png", metrics), "losses": plot_losses(out / "losses.png", metrics),
                "consensus": plot_consensus(out / "consensus.png", metrics)}
    for name, summary in peers.items():
        src = summary.get("samples_png")
        if src and Path(src).is_file():
            dst = out / f"samples-{name}.png"
            shutil.copyfile(src, dst)
            summary["samples_png"] = dst.name
    report = {**dict(extra or {}), "summary": summarize(peers), "peers": peers,
              "pictures": {k: v.name for k, v in pictures.items() if v is not None}}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


# -- pictures -------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _score_keys(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    keys: set[str] = set()
    for recs in metrics.values():
        for r in _records(recs, "eval"):
            keys.update(k for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "epoch", "time", "eval_s"))
    return sorted(keys)


def plot_scores(path: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path | None:
    """Each score vs epoch: mean over peers, and the band from the lowest to the highest peer."""
    keys = _score_keys(metrics)
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        by_step: dict[int, list[tuple[float, float]]] = {}
        for recs in metrics.values():
            for r in _records(recs, "eval"):
                if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key])):
                    by_step.setdefault(int(r["step"]), []).append((float(r["epoch"]), float(r[key])))
        steps = sorted(by_step)
        epochs = [sum(e for e, _ in by_step[s]) / len(by_step[s]) for s in steps]
        values = [[v for _, v in by_step[s]] for s in steps]
        mean = [sum(v) / len(v) for v in values]
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.3, label="lowest-highest peer")
        ax.plot(epochs, mean, marker="o", label=f"mean of {len(metrics)} peers")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _per_peer_curves(path: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str], *, log_y: bool, smooth: int) -> Path | None:
    series = {name: _records(recs, "step") for name, recs in metrics.items()}
    if not any(series.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, steps in sorted(series.items()):
            pts = [(int(r["step"]), float(r[key])) for r in steps if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, _smooth(ys, smooth), lw=1, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(key + (f" (moving average of {smooth})" if smooth > 1 else ""))
        if log_y:
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
        if len(series) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_losses(path: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path | None:
    return _per_peer_curves(path, metrics, ("loss_d", "loss_g"), log_y=False, smooth=LOSS_SMOOTHING_STEPS)


def plot_consensus(path: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path | None:
    return _per_peer_curves(path, metrics, ("consensus",), log_y=True, smooth=1)
