"""`p2pgan audit privacy` on real harness runs (2 daemons over mutual TLS): the positive control (without DP the
update attack finds the minibatch) and the canary audit's lower bound under the claimed epsilon.

Kept small for CI: digits at width 16, a dozen steps. The positive control uses the non-saturating loss and
tiny batches, where a neighbour's view of one step carries a strong trace of each minibatch image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2pgan.privacy.audit.stats import attack_figures, auc_bound, clopper_pearson, epsilon_lower_bound

TIMEOUT_S = 240.0
SMALL = ["--peers", "2", "--dataset", "digits", "--width", "16", "--eval-interval", "0", "--round-timeout", "5",
         "--holdout", "0.2", "--audit-record"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "p2pgan", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(300)
def test_positive_control_without_dp_the_update_attack_finds_the_minibatch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run("harness", "--out", str(out), *SMALL, "--steps", "12", "--batch-size", "4", "--loss", "ns",
         "--optimizer", "osg")
    result = json.loads(_run("audit", "privacy", "--run", str(out), "--peer", "peer0", "--json").stdout)
    update = result["attacks"]["update"]
    assert update["per_step_auc_mean"] > 0.9 and update["auc"] > 0.9, update
    for key in ("auc", "tpr_at_1pct_fpr", "members", "non_members", "epsilon_claimed", "epsilon_lower"):
        assert key in result
    assert result["dp"] is False and result["epsilon_claimed"] is None and result["members"] > 0
    assert set(result["attacks"]) == {"update", "logit"}
    report = json.loads((out / "report.json").read_text())
    assert report["privacy_audit"]["peer0"]["auc"] == result["auc"]
    assert "### Audit" in (out / "report.md").read_text()
    assert (out / "audit" / "peer0.json").is_file()


@pytest.mark.timeout(300)
def test_canary_audit_lower_bound_stays_under_the_claim(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run("harness", "--out", str(out), *SMALL, "--steps", "16", "--batch-size", "16", "--set", "privacy.mode=dp",
         "--set", "privacy.target_epsilon=1", "--set", "privacy.audit_canary=true")
    result = json.loads(_run("audit", "privacy", "--run", str(out), "--peer", "peer1", "--json").stdout)
    canary = result["attacks"]["canary"]
    assert canary["trials"] == 15 and 0 <= result["epsilon_lower"] <= result["epsilon_claimed"] <= 1.0
    assert result["auc_bound"] == pytest.approx(auc_bound(result["epsilon_claimed"], 1e-5))
    assert result["dp"] is True and result["delta"] == 1e-5


def test_figures_and_epsilon_bound_on_known_scores() -> None:
    rng = np.random.default_rng(0)
    separated = attack_figures(rng.normal(3, 1, 500), rng.normal(0, 1, 2000))
    assert separated["auc"] > 0.95 and separated["tpr_at_1pct_fpr"] > 0.5
    assert separated["auc_ci"][0] <= separated["auc"] <= separated["auc_ci"][1]
    same = attack_figures(rng.normal(0, 1, 500), rng.normal(0, 1, 2000))
    assert abs(same["auc"] - 0.5) < 0.05
    lo, hi = clopper_pearson(5, 10)
    assert lo < 0.5 < hi and clopper_pearson(0, 10)[0] == 0.0
    # a perfectly separating test over 400 trials proves epsilon > 2; a coin proves about nothing
    inserted = rng.random(400) < 0.5
    strong = epsilon_lower_bound(inserted.astype(float) + rng.normal(0, 0.01, 400), inserted, 1e-5)
    weak = epsilon_lower_bound(rng.normal(0, 1, 400), inserted, 1e-5)
    assert strong["epsilon_lower"] > 2 and weak["epsilon_lower"] < 0.5
    # the AUC no test can pass under (epsilon, delta)-DP: 1/2 at epsilon 0, e/(e+1)-like growth, 1 at large epsilon
    assert auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert auc_bound(1.0, 1e-5) == pytest.approx(0.731, abs=2e-3)
    assert auc_bound(0.5, 1e-5) < auc_bound(1.0, 1e-5) < auc_bound(10.0, 1e-5) <= 1.0
