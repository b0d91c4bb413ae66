"""A site's own report: ``p2pgan report --config FILE`` for one daemon of a real federation.

Everything comes from what that daemon keeps on its own disk: its metrics file (curves, scores, bytes,
membership and churn history, a privacy budget once its records report one) and its newest checkpoint
(a grid of samples drawn from its generator, i.e. from the parameters X it publishes). Nothing is asked of
the other members. Written into one folder (default: ``report/`` beside the metrics file):

- ``report.json``: the numbers, with ``units``; ``report.md``: the page to open;
- ``score.png``, ``losses.png``, ``consensus.png`` (:func:`p2pgan.trainer.images.write_run_figures`);
- ``samples-<peer>.png``: samples of the checkpoint's generator.

The parts are the harness report's (:mod:`p2pgan.report.summary`, :mod:`p2pgan.report.sections`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgan.errors import ConfigError
from p2pgan.report import sections
from p2pgan.privacy.report import privacy_markdown, privacy_statement
from p2pgan.report.summary import SCORE_NAMES, UNITS, _duration, _fmt, peer_summary

#: samples drawn from the checkpoint's generator for the grid
GRID_SAMPLES = 64
#: fixed noise of the grid (the daemon's evaluation grids use their own seed)
GRID_SEED = 2024


def _site_samples(cfg: Any, out: Path) -> dict[str, Any] | None:
    """A grid of samples from the newest checkpoint's generator, or None when there is no checkpoint yet."""
    from p2pgan.checkpoint import CheckpointManager

    manager = CheckpointManager(cfg.checkpoint.dir)
    steps = manager.steps() if cfg.checkpoint.dir.is_dir() else []
    if not steps:
        return None
    import torch

    from p2pgan.trainer.export import load_generator
    from p2pgan.trainer.images import save_samples

    checkpoint = manager.path_for(steps[-1])
    g, latent, _channels, state = load_generator(checkpoint, model=cfg.train.model, latent_dim=cfg.train.latent_dim,
                                                 width=cfg.train.width)
    with torch.no_grad():
        samples = g(torch.randn(GRID_SAMPLES, latent, generator=torch.Generator().manual_seed(GRID_SEED)))
    step = int(state.get("step", steps[-1]))
    path = save_samples(samples, out / f"samples-{cfg.peer.id}.png", title=f"{cfg.peer.id}, step {step} (checkpoint)")
    return {"checkpoint": str(checkpoint), "step": step, "samples_png": path.name}


def _setup(cfg: Any) -> dict[str, Any]:
    m, t = cfg.mixing, cfg.train
    return {"peer": cfg.peer.id, "federation": cfg.peer.federation, "config": str(cfg.source),
            "variant": m.variant, "schedule": m.schedule, "topology": m.topology, "rounds": m.rounds,
            "wire_dtype": m.wire_dtype, "backend": m.backend, "model": t.model, "loss": t.loss,
            "optimizer": t.optimizer, "lr_generator": t.lr_generator, "lr_discriminator": t.lr_discriminator,
            "batch_size": t.batch_size, "steps": t.steps, "epochs": t.epochs, "data": cfg.data.format}


def write_site_markdown(out: Path, report: Mapping[str, Any]) -> Path:
    """``report.md`` of one site: setup, its numbers, its privacy, its membership history, curves, samples."""
    setup, peer = report["setup"], report["peer"]
    scores = peer.get("scores") or {}
    score_keys = [k for k in SCORE_NAMES if isinstance(scores.get(k), (int, float))]
    lines = [f"# p2pgan site report: {setup['peer']} of federation {setup['federation']}", "",
             f"**Reached:** {report['reached']}.", "", "## Setup", "", "| setting | value |", "|---|---|"]
    rows = [
        ("config", f"`{setup['config']}`"),
        ("algorithm", f"DPOSG, variant {setup['variant']} ({setup['schedule']} schedule), "
                      f"topology {setup['topology']}, "
                      f"{setup['rounds']} mixing round(s) per step, {setup['backend']} backend, "
                      f"parameters sent as {setup['wire_dtype']}"),
        ("model / loss / optimizer", f"{setup['model']} / {setup['loss']} / {setup['optimizer']}"),
        ("learning rates", f"generator {setup['lr_generator']}, discriminator {setup['lr_discriminator']}"),
        ("data", f"{setup['data']}, batch {setup['batch_size']}, {peer.get('shard_size') or '?'} samples on this site"),
        ("steps", f"{peer.get('steps')} done of {setup['steps'] if setup['steps'] is not None else '?'}, "
                  f"in {peer.get('runs')} run(s); last: {peer.get('end') or 'still running (no end record)'}"),
        ("wall time of the last run", _duration(peer.get("wall_s"))),
        ("written by", report["p2pgan_version"]),
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    head = ["steps", "epochs", "s/step", "MB sent/step", "bytes sent", "bytes received", "dropped rounds",
            *[SCORE_NAMES[k] for k in score_keys]]
    cells = [_fmt(peer.get("steps")), _fmt(peer.get("epochs"), ".2f"), _fmt(peer.get("step_s"), ".3f"),
             _fmt(peer.get("sent_mb_per_step"), ".3f"), str(peer.get("bytes_sent")), str(peer.get("bytes_received")),
             _fmt(peer.get("dropped_rounds")), *[_fmt(scores.get(k)) for k in score_keys]]
    lines += ["", "## This peer", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
              "| " + " | ".join(cells) + " |", "",
              "Scores are this daemon's last evaluation of its published parameters X (its own evaluator). "
              "s/step is wall time inside a step; bytes are parameters sent to / received from neighbours.", ""]
    lines += privacy_markdown({"peers": {report["setup"]["peer"]: report["peer"]}})
    lines += sections.membership_markdown(report["membership"])
    if report.get("pictures"):
        lines += ["## Curves", ""] + [f"![{Path(p).stem}]({p})" for p in report["pictures"]] + [""]
    sample = report.get("samples")
    if sample:
        lines += ["## Samples", "", f"From the generator in `{sample['checkpoint']}` (step {sample['step']}):", "",
                  f"![samples]({sample['samples_png']})", ""]
    else:
        lines += ["## Samples", "", "No checkpoint yet: no samples.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_site_report(config: Path, out: Path | None = None) -> Path:
    """Write one site's report (see the module docstring) into ``out``; returns report.json's path."""
    from p2pgan.daemon.config import load_config
    from p2pgan.metrics import read_metrics
    from p2pgan.trainer.images import write_run_figures

    cfg = load_config(config)
    if not cfg.metrics.path.is_file():
        raise ConfigError(f"{config}: metrics.path {cfg.metrics.path} does not exist yet: has this daemon run?")
    records: Sequence[Mapping[str, Any]] = read_metrics(cfg.metrics.path)
    if not any(r.get("type") == "start" for r in records):
        raise ConfigError(f"{cfg.metrics.path}: no daemon start record: not the metrics of a p2pgan peer")
    out = out if out is not None else cfg.metrics.path.parent / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot make {out} ({exc.strerror or exc})") from None
    peer = peer_summary(cfg.peer.id, records)
    pictures = write_run_figures({cfg.peer.id: records}, out, x="epoch")
    report: dict[str, Any] = {
        "kind": "site",
        "p2pgan_version": sections.version(),
        "metrics": str(cfg.metrics.path),
        "setup": _setup(cfg),
        "peer": peer,
        "membership": sections.membership_history(records),
        "privacy": privacy_statement({cfg.peer.id: peer["privacy"]}),
        "samples": _site_samples(cfg, out),
        "units": UNITS,
        "pictures": sorted(p.name for p in pictures),
    }
    scores = peer.get("scores") or {}
    reached = [f"{SCORE_NAMES[k]} {scores[k]:.3g}" for k in SCORE_NAMES if isinstance(scores.get(k), (int, float))]
    report["reached"] = (f"step {peer['steps']}" + (f", {', '.join(reached)} at step {scores.get('step')}"
                                                     if reached else " (no evaluation yet)"))
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["report_md"] = write_site_markdown(out, report).name
    return path
