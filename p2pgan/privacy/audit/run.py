"""``p2pgan audit privacy``: play the curious neighbour against one site.

Two forms share one path (:func:`_audit`):

- ``--run RUN_DIR --peer ID`` on a harness folder made with ``--holdout FRACTION`` (the non-members: images
  no peer trained on) and ``--audit-record`` (what the site sent and mixed, and its minibatches as ground
  truth). Members are the site's shard. Writes ``RUN_DIR/audit/<peer>.json`` and adds the figures to the
  run's report.
- ``--config PEER.yaml --non-members PATH`` on a daemon of a real federation: its ``privacy.audit_dir``
  record, its ``data`` (the members) and a non-member set the user gives. Writes ``AUDIT_DIR/result.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from p2pgan.errors import ConfigError
from p2pgan.privacy.audit.record import MIXED, SENT, STEPS

#: the fewest non-members an audit accepts
MIN_HOLDOUT = 20
#: the most non-members scored per step by the update attack
NON_MEMBERS_PER_STEP = 256


def read_record(folder: Path, flag: str = "--run") -> Any:
    from p2pgan.privacy.audit.attacks import Record

    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise ConfigError(f"{flag}: no audit record in {folder}; run with --audit-record (harness) "
                          "or privacy.audit_dir (a daemon)")
    meta = json.loads(meta_path.read_text())
    dim_v = int(meta["dim_v"])
    sent = np.fromfile(folder / SENT, dtype="<f4")
    mixed = np.fromfile(folder / MIXED, dtype="<f4")
    lines = [json.loads(x) for x in (folder / STEPS).read_text().splitlines() if x.strip()]
    t = min(len(sent) // dim_v, len(mixed) // dim_v, len(lines))  # a run cut short leaves whole rows only
    if t < 3:
        raise ConfigError(f"{flag}: the audit record in {folder} holds {t} steps; the attacks need at least 3")
    return Record(sent[: t * dim_v].reshape(t, dim_v), mixed[: t * dim_v].reshape(t, dim_v),
                  [int(x["step"]) for x in lines[:t]], [list(x["batch"]) for x in lines[:t]],
                  [x.get("canary") for x in lines[:t]])


def _claimed(metrics: Path) -> tuple[float | None, float | None]:
    from p2pgan.metrics import read_metrics

    records = read_metrics(metrics) if metrics.is_file() else []
    starts = [r for r in records if r.get("type") == "start"]
    plan = (starts[-1].get("privacy") or {}) if starts else {}
    if plan.get("mode") != "dp":
        return None, None  # no DP: no claim (epsilon unbounded)
    spent = next((r for r in reversed(records) if r.get("epsilon") is not None), None)
    return (float(spent["epsilon"]) if spent else math.inf), float(plan["delta"])


def audit(run_dir: Path, peer: str, *, last_k: int = 10, max_steps: int = 200) -> dict[str, Any]:
    """The audit's figures for site ``peer`` of the harness run in ``run_dir`` (see the module doc)."""
    from p2pgan.daemon.config import load_config
    from p2pgan.trainer.data import load_shard

    config = run_dir / "peers" / f"{peer}.yaml"
    if not config.is_file():
        peers = sorted(p.stem for p in (run_dir / "peers").glob("*.yaml"))
        raise ConfigError(f"--peer: no peer {peer!r} in {run_dir} (peers: {', '.join(peers) or 'none'})")
    if not (run_dir / "holdout").is_dir():
        raise ConfigError(f"--run: {run_dir} has no holdout/ (no non-members); run the harness with --holdout 0.2")
    cfg = load_config(config)
    rec = read_record(cfg.privacy.audit_dir or run_dir / "audit" / peer)
    members = load_shard(run_dir / "data" / peer).tensor()
    holdout = load_shard(run_dir / "holdout").tensor()
    if len(holdout) < MIN_HOLDOUT:
        raise ConfigError(f"--run: the holdout holds {len(holdout)} samples; the audit needs >= {MIN_HOLDOUT}")
    return _audit(cfg, rec, members, holdout, "--run", last_k=last_k, max_steps=max_steps)


def audit_config(config: Path, non_members: Path | None, *, last_k: int = 10,
                 max_steps: int = 200) -> dict[str, Any]:
    """The audit of a daemon from its own config: its ``privacy.audit_dir`` record, ``data`` (the members)
    and ``non_members``, a path in the format of ``data.format`` (a shard for the bundled formats)."""
    from p2pgan.daemon.config import load_config
    from p2pgan.daemon.peer import load_private_data
    from p2pgan.errors import DataError
    from p2pgan.trainer.data import load_dataset

    if non_members is None:
        raise ConfigError("--non-members: required with --config (a path of images the site never trained on, "
                          "in the format of its data.format)")
    cfg = load_config(config)
    if cfg.privacy.audit_dir is None:
        raise ConfigError(f"--config: {config} sets no privacy.audit_dir, so the daemon kept no audit record; "
                          "set privacy.audit_dir and run it again")
    fmt = cfg.data.format if cfg.data.path is not None else "shard"  # bundled data: non-members as a shard
    rec = read_record(cfg.privacy.audit_dir, flag="--config")
    members = load_private_data(cfg, seed=0).tensor()
    try:
        held = load_dataset(fmt, non_members, image_size=cfg.data.image_size, channels=cfg.data.channels).tensor()
    except DataError as exc:
        raise ConfigError(f"--non-members: not a {fmt} path like the site's data ({exc})") from None
    if tuple(held.shape[1:]) != tuple(members.shape[1:]):
        raise ConfigError(f"--non-members: samples of shape {tuple(held.shape[1:])}; the site's data "
                          f"({cfg.data.format}) has {tuple(members.shape[1:])}")
    if len(held) < MIN_HOLDOUT:
        raise ConfigError(f"--non-members: {non_members} holds {len(held)} samples; the audit needs >= {MIN_HOLDOUT}")
    result = _audit(cfg, rec, members, held, "--config", last_k=last_k, max_steps=max_steps)
    return {**result, "audit_dir": str(cfg.privacy.audit_dir)}


def _audit(cfg: Any, rec: Any, members: Any, holdout: Any, flag: str, *, last_k: int,
           max_steps: int) -> dict[str, Any]:
    """The attacks on one site: its config, its audit record, its members and the non-members (both forms)."""
    from p2pgan.privacy.audit import attacks
    from p2pgan.privacy.audit.canary import canary_vector
    from p2pgan.privacy.audit.stats import attack_figures, auc_bound, epsilon_lower_bound
    from p2pgan.trainer.losses import make_loss
    from p2pgan.trainer.models import make_models

    peer = cfg.peer.id
    if cfg.mixing.schedule != "overlap":
        raise ConfigError(f"{flag}: the update attack reads the overlap schedule; {peer} ran {cfg.mixing.schedule!r}")
    non_members = holdout[:NON_MEMBERS_PER_STEP]
    channels = members.shape[1] if members.dim() == 4 else None
    _, d, _, _ = make_models(cfg.train.model, latent_dim=cfg.train.latent_dim, width=cfg.train.width,
                             channels=channels, seed=0)
    term = make_loss(cfg.train.loss).real_term
    pos, neg, per_step, e = attacks.update_attack(
        d, term, rec, members, non_members, lr_d=cfg.train.lr_discriminator,
        optimizer=cfg.train.optimizer, beta1=cfg.train.betas[0], max_steps=max_steps)
    update = {**attack_figures(pos, neg), "per_step_auc_mean": float(np.nanmean(per_step)) if per_step else None,
              "steps": len(per_step), "seat": "knows what the site mixed (M = 2, or colluding ring neighbours)"}
    update["members"], update["non_members"] = int(len(pos)), int(len(neg))  # (step, image) pairs
    lm, ln = attacks.logit_attack(d, rec, members, holdout, last_k)
    logit = {**attack_figures(lm, ln), "last_k": min(last_k, len(rec.sent))}
    claimed, delta = _claimed(cfg.metrics.path)
    out: dict[str, Any] = {"peer": peer, "dp": delta is not None, "members": int(len(members)),
                           "non_members": int(len(holdout)),
                           "epsilon_claimed": claimed, "delta": delta, "attacks": {"update": update, "logit": logit}}
    inserted = [c for c in rec.canary[: len(e)]]
    if any(c is not None for c in inserted):
        canary = canary_vector(rec.sent.shape[1], cfg.privacy.clip).numpy()
        scores = attacks.canary_scores(e, canary)
        out["attacks"]["canary"] = epsilon_lower_bound(scores, np.array([bool(c) for c in inserted]),
                                                       delta if delta is not None else 1e-5)
        out["epsilon_lower"] = out["attacks"]["canary"]["epsilon_lower"]
    else:
        out["epsilon_lower"] = None
    if claimed is not None and math.isfinite(claimed) and delta is not None:
        out["auc_bound"] = auc_bound(claimed, delta)  # no attack may exceed it (up to its sampling error)
    strongest = max(("update", "logit"), key=lambda a: out["attacks"][a]["auc"])
    out.update(strongest=strongest, auc=out["attacks"][strongest]["auc"],
               tpr_at_1pct_fpr=out["attacks"][strongest]["tpr_at_1pct_fpr"])
    return out


#: the audit's figures in a daemon's privacy.audit_dir (the --config form)
RESULT_FILE = "result.json"


def save_config_result(audit_dir: Path, result: dict[str, Any]) -> Path:
    """``AUDIT_DIR/result.json`` (the ``--config`` form), written whole (temporary file, then rename)."""
    path = audit_dir / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def save(run_dir: Path, result: dict[str, Any]) -> Path:
    """``RUN_DIR/audit/<peer>.json``, and the figures in the run's report.json / report.md when present."""
    from p2pgan.report import write_markdown

    path = run_dir / "audit" / f"{result['peer']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report.setdefault("privacy_audit", {})[result["peer"]] = result
        report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        write_markdown(run_dir, report)
    return path
