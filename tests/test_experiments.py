"""Smoke runs of the experiment scripts (tiny settings): they run end to end and write what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(120)
def test_convergence_smoke(tmp_path: Path) -> None:
    r = _script("exp_convergence.py", "--epochs", "0.2", "--eval-every", "0.1", "--eval-samples", "50",
                "--gaussian-steps", "20", "--variants", "cp,rand-dp", "--out", str(tmp_path), timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "convergence.json").read_text())
    for problem, keys in (("digits", ("is", "fid")), ("gaussians", ("modes", "high_quality"))):
        assert set(report[problem]) == {"cp", "rand-dp"}
        for curve in report[problem].values():
            x = curve["epoch" if problem == "digits" else "step"]
            assert x[0] == 0 and x == sorted(x) and len(x) >= 2
            for k in keys:
                assert len(curve["scores"][k]) == len(x) and all(len(v) == 4 for v in curve["scores"][k])
        assert (tmp_path / f"convergence_{problem}.png").read_bytes()[:4] == b"\x89PNG"
    assert {r["variant"] for r in report["summary"]} == {"CP-OAdam", "Rand-DP-OAdam"}
    assert report["digits_reference"]["label"] == "held-out real digits" and report["digits_reference"]["scores"]["is"] > 9
    page = (tmp_path / "report.md").read_text()
    assert "## digits, 4 peers" in page and "Real data (held-out real digits)" in page
    assert "![convergence_digits](convergence_digits.png)" in page
    assert "\r" not in r.stderr  # status lines, not bar frames, when the output is not a terminal


def test_convergence_rejects_bad_batch(tmp_path: Path) -> None:
    r = _script("exp_convergence.py", "--peers", "8", "--total-batch", "60", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "--total-batch 60 must be a multiple of --peers 8" in r.stderr


@pytest.mark.timeout(150)
def test_speed_smoke_with_relay(tmp_path: Path) -> None:
    r = _script("exp_speed.py", "--peers", "1,2", "--variants", "dp", "--settings", "grpc+delay",
                "--steps", "1", "--warmup", "1", "--out", str(tmp_path), timeout=140)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["relay_rtt"]["relay_rtt_ms"] >= 2.0  # 1 ms each way: a lower bound, not a speed claim
    settings = {(row["variant"], row["setting"], row["peers"]) for row in report["rows"]}
    assert settings == {("single", "-", 1), ("DP", "grpc+1ms", 2)}
    assert all(row["dropped"] == 0 for row in report["rows"] if row["peers"] > 1)
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"
