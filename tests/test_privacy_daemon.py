"""Differential privacy in real daemons: the budget stop (exit 0, checkpoint, no fresh budget on resume) and a
short DP harness run whose report has a Privacy section. Real OS processes over mutual TLS on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import federation, running

from p2pgan.checkpoint import CheckpointManager
from p2pgan.metrics import read_metrics
from p2pgan.privacy.accountant import default_delta, pld_epsilon
from p2pgan.privacy.report import NONE_LINE, privacy_summary
from p2pgan.trainer.data import load_shard

RUN_TIMEOUT_S = 150.0
SIGMA = 0.8
BATCH = 32
BUDGET_STEPS = 6  # the budget is set to what exactly this many private steps cost


@pytest.mark.timeout(300)
def test_daemon_stops_at_its_budget_exits_0_and_resume_keeps_the_spent_budget(tmp_path: Path) -> None:
    probe = federation(tmp_path / "probe", 1, steps=40)  # to learn n of the one shard the harness writes
    n = len(load_shard(probe.out / "data" / probe.ids[0]))
    budget = pld_epsilon(BATCH / n, SIGMA, BUDGET_STEPS, default_delta(n))
    fed = federation(tmp_path / "run", 1, steps=40, batch_size=BATCH, checkpoint_interval=100, overrides=(
        "privacy.mode=dp", f"privacy.noise_multiplier={SIGMA}", f"privacy.target_epsilon={budget!r}"))
    spec = fed.specs()[0]
    with running(fed) as group:
        group.wait(RUN_TIMEOUT_S)  # raises unless the daemon exited 0
    records = read_metrics(spec.metrics)
    end = [r for r in records if r["type"] == "end"][-1]
    assert end["reason"] == "privacy budget" and end["step"] == BUDGET_STEPS
    assert end["dp_steps"] == BUDGET_STEPS and end["epsilon"] <= budget
    assert Path(end["checkpoint"]).is_file()
    loaded = CheckpointManager(spec.metrics.parent).load_latest(fallback=False)
    assert loaded is not None and loaded.step == BUDGET_STEPS
    assert isinstance(loaded.state.get("secret_seed"), int)  # train.seed unset: a secret seed, kept
    assert "privacy budget reached" in spec.log.read_text()

    with running(fed, resume=True) as group:  # the accountant survives: no fresh budget, no new step
        group.wait(RUN_TIMEOUT_S)
    again = read_metrics(spec.metrics)
    assert [r["step"] for r in again if r["type"] == "step"] == list(range(1, BUDGET_STEPS + 1))
    assert again[-1]["type"] == "end" and again[-1]["reason"] == "privacy budget" and again[-1]["dp_steps"] == 6


@pytest.mark.timeout(300)
def test_short_dp_harness_run_reports_each_sites_privacy(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "p2pgan", "harness", "--out", str(out), "--peers", "2", "--dataset", "gaussians",
         "--steps", "6", "--eval-interval", "0", "--round-timeout", "5", "--set", "privacy.mode=dp",
         "--set", "privacy.target_epsilon=2", "--set", "privacy.clip=0.5"],
        capture_output=True, text=True, env=os.environ.copy(), timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    for name, peer in report["peers"].items():
        p = peer["privacy"]
        assert p["mode"] == "dp" and 0 < p["epsilon"] <= 2 and p["clip"] == 0.5 and p["dp_steps"] == 6, name
        assert p["sigma"] > 0 and 0 < p["q"] < 1 and p["delta"] < 1 / (10 * p["n"])
    md = (out / "report.md").read_text()
    assert "## Privacy" in md and "epsilon (PLD)" in md


def test_without_dp_the_report_says_there_is_no_formal_privacy() -> None:
    summary = privacy_summary([{"type": "start", "step": 0, "privacy": {"mode": "off"}}])
    assert summary == {"mode": "off", "notice": NONE_LINE}
    assert "no formal privacy" in NONE_LINE and "discriminator every step" in NONE_LINE


def test_harness_holdout_is_withheld_from_every_peer_and_audit_record_is_opt_in(tmp_path: Path) -> None:
    import torch

    from p2pgan.daemon.config import load_config
    from p2pgan.errors import ConfigError
    from p2pgan.harness import HarnessOptions, prepare

    fed = prepare(HarnessOptions(peers=2, out=tmp_path / "a", steps=4, holdout=0.2, audit_record=True))
    held = load_shard(fed.out / "holdout").tensor().flatten(1)
    shards = [load_shard(fed.out / "data" / pid).tensor().flatten(1) for pid in fed.ids]
    assert len(held) == round(0.2 * 1797) and len(held) + sum(len(s) for s in shards) == 1797
    for shard in shards:  # no withheld image is in any peer's shard
        assert not bool((torch.cdist(held, shard) == 0).any())
    assert {load_config(p).privacy.audit_dir for p in fed.configs.values()} == {
        fed.out / "audit" / pid for pid in fed.ids}
    plain = prepare(HarnessOptions(peers=2, out=tmp_path / "b", steps=4))
    assert not (plain.out / "holdout").exists()
    assert {load_config(p).privacy.audit_dir for p in plain.configs.values()} == {None}
    with pytest.raises(ConfigError, match="--holdout: must be a fraction in"):
        prepare(HarnessOptions(peers=2, out=tmp_path / "c", steps=4, holdout=1.5))
