"""`p2pgan audit privacy --config PEER.yaml --non-members PATH`: the audit of a daemon of a real federation
from its own config (its privacy.audit_dir record, its data.path as the members, a non-member set the user
gives). Two hand-started daemons over mutual TLS on loopback, a few DP steps; then the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_helpers import federation, running

from p2pgan.trainer.data import load_shard

TIMEOUT_S = 120.0


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pgan", "audit", "privacy", *args], capture_output=True,
                          text=True, env=os.environ.copy(), timeout=TIMEOUT_S)


@pytest.mark.timeout(240)
def test_audit_of_a_daemon_from_its_config_and_its_one_line_errors(tmp_path: Path) -> None:
    fed = federation(tmp_path / "fed", 2, dataset="digits", width=16, steps=6, batch_size=8, loss="ns",
                     holdout=0.2, audit_record=True, overrides=(
                         "privacy.mode=dp", "privacy.target_epsilon=10", "privacy.delta=1e-5",
                         "privacy.audit_canary=true"))
    with running(fed) as group:
        group.wait(TIMEOUT_S)  # raises unless every daemon exited 0
    config = fed.out / "peers" / "peer0.yaml"
    audit_dir = Path(yaml.safe_load(config.read_text())["privacy"]["audit_dir"])
    non_members = fed.out / "holdout"  # a shard folder, the format of the site's data (shard)

    proc = _audit("--config", str(config), "--non-members", str(non_members), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in ("auc", "tpr_at_1pct_fpr", "members", "non_members", "epsilon_claimed", "epsilon_lower"):
        assert key in result, key
    assert result["peer"] == "peer0" and result["dp"] is True and result["delta"] == 1e-5
    assert 0 < result["epsilon_claimed"] <= 10 and 0 <= result["epsilon_lower"] <= result["epsilon_claimed"]
    assert 0 <= result["auc"] <= 1 and 0 <= result["tpr_at_1pct_fpr"] <= 1
    assert result["members"] == len(load_shard(fed.out / "data" / "peer0"))
    assert result["non_members"] == len(load_shard(non_members))
    assert result["attacks"]["canary"]["trials"] == 5  # one fewer than the steps: the first is the baseline
    assert json.loads((audit_dir / "result.json").read_text())["auc"] == result["auc"]

    missing = _audit("--config", str(config))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "--non-members" in missing.stderr

    wrong = _audit("--config", str(config), "--non-members", str(tmp_path))  # a folder with no shard in it
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "--non-members" in wrong.stderr

    doc = yaml.safe_load(config.read_text())
    doc["privacy"] = {k: v for k, v in doc["privacy"].items() if k not in ("audit_dir", "audit_canary")}
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(doc))
    unset = _audit("--config", str(bare), "--non-members", str(non_members))
    assert unset.returncode != 0 and "Traceback" not in unset.stderr
    assert len(unset.stderr.strip().splitlines()) == 1 and "privacy.audit_dir" in unset.stderr
