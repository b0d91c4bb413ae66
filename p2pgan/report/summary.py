"""The harness report: numbers (report.json) and pictures (PNG curves, sample grids) from peers' metrics.

A site's own report (``p2pgan report --config``, :mod:`p2pgan.report.site`) is made of the same parts:
:func:`peer_summary`, the figures, :func:`headline` and :mod:`p2pgan.report.sections` (version, privacy,
membership history).

Input is each peer's JSON-lines metrics records (:mod:`p2pgan.metrics`) as the daemon writes them
(:mod:`p2pgan.daemon.peer`): ``start``, ``step``, ``eval`` and ``end`` records. Output, in the folder:

- ``report.json``: per peer the data shard size, steps, epochs, final losses, first and last scores,
  bytes sent and received, compute / communication / wall seconds; and a summary across peers.
- ``score.png``, ``losses.png``, ``consensus.png`` (:func:`p2pgan.trainer.images.write_run_figures`):
  each score vs epoch with the lowest-to-highest band across peers, as in the paper's Figure 2.
- ``samples-<peer>.png``: each peer's last sample grid; ``samples-real.png``: real data beside them;
- with faults (``p2pgan harness --fault``): per peer how often it started, where and how it rejoined
  (``rejoin`` records: state transfer, checkpoint or skip), the longest wall-clock gap between two of its
  consecutive steps, its median seconds per step before, during and after each fault, dropped rounds;
  and ``churn.png``: every peer's step and seconds per step over wall-clock time, with the fault times.
- ``report.md``: one page a person opens: the setup, a per-peer table with units, the real-data
  reference score, the curves and the sample grids (:func:`write_markdown`).

The real-data reference (``reference``: a label, the same evaluator's scores on real data no peer
trained on, and a grid of it) is what a score is read against: "IS 6.8" means little, "6.8 of 9.5 for
real digits" says how far the run got.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.metrics import run_totals
from p2pgan.privacy.report import privacy_markdown, privacy_statement, privacy_summary
from p2pgan.report import sections

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
        "bytes_sent": int(totals["bytes_sent"]),  # counted in whole bytes
        "bytes_received": int(totals["bytes_received"]),
        "compute_s": totals["compute_s"],
        "comm_s": totals["comm_s"],
        "eval_s": _sum(evals, "eval_s"),
        "dropped_rounds": int(totals["dropped"]),
        "step_s": totals["step_s"] / totals["steps"] if totals["steps"] else None,
        "sent_mb_per_step": totals["bytes_sent"] / totals["steps"] / 1e6 if totals["steps"] else None,
        "end": ends[-1].get("reason") if ends else None,
        "samples_png": evals[-1].get("samples") if evals else None,
    }
    if steps:
        summary["wall_s"] = float(steps[-1]["time"]) - float((starts[-1] if starts else steps[0])["time"])
    summary["privacy"] = privacy_summary(records)
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
    out["bytes_sent"] = sum(int(p["bytes_sent"]) for p in peers.values())
    out["bytes_received"] = sum(int(p["bytes_received"]) for p in peers.values())
    return out


#: the unit of each number report.json holds per peer (and in the summary)
UNITS = {
    "shard_size": "samples", "parameters": "count", "steps": "steps", "epochs": "passes over the shard",
    "bytes_sent": "bytes", "bytes_received": "bytes", "compute_s": "seconds", "comm_s": "seconds",
    "eval_s": "seconds", "wall_s": "seconds", "step_s": "seconds per step", "sent_mb_per_step": "MB (1e6 bytes) per step",
    "dropped_rounds": "rounds",
}
#: how scores are named on the page
SCORE_NAMES = {"is": "IS", "fid": "FID", "modes": "modes covered", "high_quality": "high-quality fraction"}


def headline(report: Mapping[str, Any]) -> str:
    """What the run reached, in one line: ``mean IS 6.84 (held-out real digits: 9.54); mean FID 25.8 (4.41)``."""
    summary, ref = report.get("summary", {}), report.get("reference") or {}
    real = ref.get("scores") or {}
    parts = []
    for key, name in SCORE_NAMES.items():
        if isinstance(summary.get(key), Mapping):
            text = f"mean {name} {summary[key]['mean']:.3g}"
            if isinstance(real.get(key), (int, float)):
                text += f" ({ref.get('label', 'real data')}: {real[key]:.3g})" if not parts else f" (real: {real[key]:.3g})"
            parts.append(text)
    return "; ".join(parts) if parts else "no scores (evaluation off)"


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _churn_markdown(report: Mapping[str, Any]) -> list[str]:
    """The faults section of report.md: what was injected, and how every peer went through it."""
    events = report.get("faults") or []
    if not events:
        return []
    lines = ["## Faults", "", "Injected: " + ", ".join(f"`{e['fault']}`" for e in events) + ". Seconds per step "
             "are medians of the wall time between consecutive steps, 10 s before a fault, during it (until "
             "its peer steps again) and 10 s after; see churn.png.", "",
             "| peer | starts | rejoined (step, how, from) | longest gap (s) | fault | before | during | after |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in report["peers"].items():
        churn = p.get("churn") or {}
        rejoins = "; ".join(f"{r['step']}, {r['how']}" + (f", {r['source']}" if r.get("source") else "")
                            for r in churn.get("rejoins", [])) or "-"
        for i, f in enumerate(churn.get("faults") or [{}]):
            lead = [name, _fmt(churn.get("starts")), rejoins, _fmt(churn.get("longest_gap_s"), ".2f")] if i == 0 \
                else ["", "", "", ""]
            lines.append("| " + " | ".join([*lead, f"`{f.get('fault', '-')}`",
                                             *[_fmt(f.get(k), ".3f") for k in ("before_s", "during_s", "after_s")]]) + " |")
    return [*lines, ""]


def write_markdown(out: Path, report: Mapping[str, Any]) -> Path:
    """``report.md``: the run on one page (relative links, so the folder can be moved or zipped)."""
    opts = report.get("options") or {}
    peers: Mapping[str, Mapping[str, Any]] = report["peers"]
    ref = report.get("reference") or {}
    real = ref.get("scores") or {}
    score_keys = [k for k in SCORE_NAMES if k in report.get("summary", {})]
    lines = [f"# p2pgan run: {len(peers)} peers, {opts.get('variant', '?')} on {opts.get('topology', '?')}, "
             f"{opts.get('dataset', '?')}", "", f"**Reached:** {headline(report)}.", "", "## Setup", "",
             "| setting | value |", "|---|---|"]
    rows = [
        ("peers", f"{len(peers)} ({', '.join(peers)}), each a separate daemon process"),
        ("transport", f"{opts.get('backend', 'grpc')}, "
                      f"{'plain text (--insecure)' if opts.get('insecure') else 'mutual TLS'} on loopback, "
                      f"parameters sent as {opts.get('wire_dtype') or 'float32'}"
                      + (f", every pair of peers on an emulated {opts['link']} link" if opts.get("link") else "")
                      + "".join(f", {o}" for o in opts.get("overrides") or () if o.startswith("mixing.compression"))),
        ("algorithm", f"DPOSG, variant {opts.get('variant')}, topology {opts.get('topology')}, "
                      f"{opts.get('rounds')} mixing round(s) per step"),
        ("model / loss / optimizer", f"{report.get('model')} / {opts.get('loss')} / {opts.get('optimizer')}"),
        ("learning rates", f"generator {opts.get('lr_generator')}, discriminator {opts.get('lr_discriminator')}"),
        ("data", f"{opts.get('dataset')} ({report.get('dataset_format')}), split {opts.get('split')}, "
                 f"batch {opts.get('batch_size')} per peer"),
        ("steps", f"{opts.get('steps')} per peer, evaluation every {opts.get('eval_interval') or 'steps/10'}"),
        ("wall time", _duration(report.get("wall_s"))),
        ("written by", str(report.get("p2pgan_version") or sections.version())),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    head = ["peer", "shard (samples)", "steps", "epochs", "s/step", "MB sent/step", "dropped rounds",
            *[SCORE_NAMES[k] for k in score_keys], "end"]
    lines += ["", "## Per peer", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in peers.items():
        scores = p.get("scores") or {}
        cells = [name, _fmt(p.get("shard_size")), _fmt(p.get("steps")), _fmt(p.get("epochs"), ".2f"),
                 _fmt(p.get("step_s"), ".3f"), _fmt(p.get("sent_mb_per_step"), ".3f"), _fmt(p.get("dropped_rounds")),
                 *[_fmt(scores.get(k)) for k in score_keys], str(p.get("end"))]
        lines.append("| " + " | ".join(cells) + " |")
    if real:
        cells = [f"**{ref.get('label', 'real data')}** ({ref.get('samples', '?')} samples)", "", "", "", "", "", "",
                 *[f"**{_fmt(real.get(k))}**" for k in score_keys], "reference"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Scores are the last evaluation of each peer's published parameters X, measured with the same "
              "evaluator as the real-data row. s/step is wall time inside a step (mixing and gradient); "
              "MB are 10^6 bytes of parameters sent to neighbours.", ""]
    lines += _churn_markdown(report)
    lines += privacy_markdown(report)
    pictures = sorted(report.get("pictures") or [], key=lambda p: (p != "score.png", p))  # the scores first
    if pictures:
        lines += ["## Curves", ""]
        if real:
            lines += ["Mean across peers with the lowest-to-highest band; the dashed line is the real data's score.", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in pictures] + [""]
    grids = [(f"{name}, step {p.get('steps')}", p["samples_png"]) for name, p in peers.items() if p.get("samples_png")]
    if ref.get("samples_png"):
        grids.append((ref.get("label", "real data"), ref["samples_png"]))
    if grids:
        lines += ["## Samples", "", "| " + " | ".join(t for t, _ in grids) + " |", "|" + "---|" * len(grids),
                  "| " + " | ".join(f"![{t}]({f})" for t, f in grids) + " |", ""]
    lines += ["## Files", "", "- `report.json`: every number on this page, with units (`units`)",
              "- `state/<peer>/metrics.jsonl`: each peer's step and evaluation records; `state/<peer>/daemon.log`",
              "- `peers/<peer>.yaml`: each daemon's config; `federation/`: the throw-away CA, certificates, roster", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_report(out: Path, metrics: Mapping[str, Sequence[Mapping[str, Any]]], extra: Mapping[str, Any] | None = None,
                 *, reference: Mapping[str, Any] | None = None) -> Path:
    """Write report.json, report.md, the PNG curves and the per-peer sample grids into ``out``; return
    report.json. ``reference``: ``{"label", "samples", "scores", "samples_png"}`` of real data, or None."""
    out.mkdir(parents=True, exist_ok=True)
    from p2pgan.trainer.images import write_run_figures

    peers = {name: peer_summary(name, recs) for name, recs in sorted(metrics.items())}
    real = dict((reference or {}).get("scores") or {})
    pictures = write_run_figures(metrics, out, x="epoch", reference=real,
                                 reference_label=(reference or {}).get("label", "real data"))
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
    report = {**dict(extra or {}), "p2pgan_version": sections.version(), "summary": summarize(peers),
              "reference": dict(reference) if reference else None, "peers": peers, "units": UNITS,
              "privacy": privacy_statement({name: p["privacy"] for name, p in peers.items()}), "pictures": sorted(p.name for p in pictures)}
    report["reached"] = headline(report)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["report_md"] = write_markdown(out, report).name
    return path
