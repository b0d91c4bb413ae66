"""`p2pgan report --config`: one site's report from a real daemon's metrics and checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import federation, running
from PIL import Image

from deadlines import scaled
from p2pgan import __version__

RUN_TIMEOUT_S = scaled(120.0)  # bounds a hang


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real peer daemons over mutual TLS, 10 steps with evaluations and checkpoints; peer0's config."""
    fed = federation(tmp_path_factory.mktemp("site"), 2, steps=10, eval_interval=5, checkpoint_interval=5)
    with running(fed) as group:
        group.wait(RUN_TIMEOUT_S)
    return fed.configs["peer0"]


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pgan", "report", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


@pytest.mark.timeout(300)
def test_site_report_from_a_daemons_metrics_and_checkpoint(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "alice-report"
    proc = _report("--config", str(site), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"site report: {out / 'report.md'} (numbers: {out / 'report.json'})"
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "site" and report["p2pgan_version"] == f"p2pgan {__version__}"
    assert report["setup"]["peer"] == "peer0" and report["setup"]["federation"] == "harness"
    peer = report["peer"]
    assert peer["steps"] == 10 and peer["end"] == "done" and peer["runs"] == 1
    assert isinstance(peer["bytes_sent"], int) and peer["bytes_sent"] >= 10 * peer["parameters"] * 4
    assert {"modes", "high_quality"} <= set(peer["scores"]) and peer["scores"]["step"] == 10
    # its membership history, from the metrics: a start with both members, an end
    events = [e["event"] for e in report["membership"]]
    assert events[0] == "start" and events[-1] == "end" and "peer1" in report["membership"][0]["what"]
    assert report["privacy"]["statement"].startswith("No formal privacy")
    # samples of the generator of its newest checkpoint
    assert report["samples"]["step"] == 10 and report["samples"]["checkpoint"].endswith("ckpt-000000010.pt")
    with Image.open(out / report["samples"]["samples_png"]) as img:
        assert img.size[0] > 50 and img.size[1] > 50
    assert {"score.png", "losses.png", "consensus.png"} <= set(report["pictures"])
    md = (out / "report.md").read_text()
    for needed in ("# p2pgan site report: peer0 of federation harness", f"| written by | p2pgan {__version__} |",
                   "## Membership and churn", "## Privacy", "No formal privacy", "![samples](samples-peer0.png)"):
        assert needed in md, needed
    assert all((out / p).is_file() for p in report["pictures"])


@pytest.mark.timeout(120)
def test_site_report_mistakes_are_one_line_errors(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "never-ran.yaml"
    text = site.read_text().replace("metrics.jsonl", "nowhere.jsonl")
    assert "nowhere.jsonl" in text
    config.write_text(text)
    proc = _report("--config", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "metrics.path" in proc.stderr and "nowhere.jsonl does not exist yet" in proc.stderr


def test_privacy_line_reads_the_budget_a_site_reports() -> None:
    from p2pgan.privacy.report import privacy_statement, privacy_summary

    plain = [{"type": "start", "time": 0.0}, {"type": "step", "step": 1, "time": 1.0}]
    assert privacy_statement({"alice": privacy_summary(plain)})["statement"].startswith("No formal privacy")
    private = [{"type": "start", "time": 0.0, "privacy": {"mode": "dp", "target_epsilon": 1.0, "delta": 1e-5}},
               {"type": "step", "step": 2, "time": 2.0, "epsilon": 0.5, "dp_steps": 2},
               {"type": "step", "step": 3, "time": 3.0, "epsilon": 0.75, "dp_steps": 3}]
    result = privacy_statement({"alice": privacy_summary(private), "bob": privacy_summary(plain)})
    assert "alice: epsilon 0.75 of 1 at delta 1e-05 after 3 private steps" in result["statement"]  # the last spent
    assert "bob" not in result["statement"].split(".")[0]
    assert "Sites without differential privacy have no formal privacy" in result["statement"]
