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


@pytest.mark.timeout(150)
def test_convergence_short_form_with_seeds_statistics_and_both_schedules(tmp_path: Path) -> None:
    """The CI form of Figure 2: two seeds, DP and Rand-DP under both schedules, CP; every peer's curve
    of every seed, mean +- s.e. rows, the paired tests, one PNG per problem and M."""
    r = _script("exp_convergence.py", "--peers", "4", "--seeds", "2", "--epochs", "0.2", "--eval-every", "0.1",
                "--eval-samples", "50", "--gaussian-steps", "20", "--gaussian-evals", "2", "--out", str(tmp_path),
                timeout=140)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "convergence.json").read_text())
    settings = {"cp/exact", "dp/overlap", "dp/exact", "rand-dp/overlap", "rand-dp/exact"}
    for problem, keys in (("digits", ("is", "fid")), ("gaussians", ("modes", "high_quality"))):
        assert set(report[problem]) == {"4"} and set(report[problem]["4"]) == settings
        for res in report[problem]["4"].values():
            assert set(res["runs"]) == {"0", "1"}
            for run in res["runs"].values():
                assert run["x"][0] == 0 and run["x"] == sorted(run["x"]) and len(run["x"]) >= 2
                for k in keys:
                    assert len(run["scores"][k]) == len(run["x"]) and all(len(v) == 4 for v in run["scores"][k])
        if problem == "digits":  # the seeds differ (init, split, noise): two runs of a setting are not copies
            runs = report[problem]["4"]["dp/overlap"]["runs"]
            assert runs["0"]["scores"]["fid"] != runs["1"]["scores"]["fid"]
        assert (tmp_path / f"convergence_{problem}_M4.png").read_bytes()[:4] == b"\x89PNG"
    rows = [row for row in report["summary"] if row["problem"] == "digits"]
    assert {(row["variant"], row["schedule"]) for row in rows} == {
        ("CP-OAdam", "exact"), ("DP-OAdam", "overlap"), ("DP-OAdam", "exact"),
        ("Rand-DP-OAdam", "overlap"), ("Rand-DP-OAdam", "exact")}
    for row in rows:
        assert row["seeds"] == 2 and row["is tail se"] >= 0 and " ± " in row["is tail"]
    questions = {(t["problem"], t["question"], t["score"]) for t in report["tests"]}
    assert ("digits", "Rand-DP better than DP (overlap)", "is tail") in questions
    assert ("gaussians", "DP-OAdam: overlap differs from exact", "high_quality tail") in questions
    assert all(t["n"] == 2 and t["test"] == "paired t-test" for t in report["tests"])


def test_convergence_rejects_bad_batch(tmp_path: Path) -> None:
    r = _script("exp_convergence.py", "--peers", "4,8", "--total-batch", "60", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "--total-batch 60 must be a multiple of --peers 8" in r.stderr
    r = _script("exp_convergence.py", "--peers", "16", "--schedules", "fast", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "subset of overlap, exact" in r.stderr


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


@pytest.mark.timeout(150)
def test_compression_short_form_compares_int8_with_none_seed_by_seed(tmp_path: Path) -> None:
    """exp_compression --quick: none and int8 (CHOCO, the wire path's compressor) at M = 4, 2 seeds; the
    rows carry mean +- s.e., the ratio to none and the 5 % verdict, the paired tests carry Holm's p, and
    int8's bytes are its encoding's (1 + 4/256 bytes per element against float32's 4)."""
    r = _script("exp_compression.py", "--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path), timeout=140)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "compression.json").read_text())
    rows = {row["compression"]: row for row in report["rows"]}
    assert set(rows) == {"none", "int8"} and all(row["seeds"] == 2 and row["peers"] == 4 for row in rows.values())
    assert rows["none"]["bytes_vs_none_mean"] == 1.0
    assert abs(rows["int8"]["bytes_vs_none_mean"] - (1 + 4 / 256) / 4) < 1e-3
    for key in ("is", "fid", "is_tail", "fid_tail"):
        ratio = rows["int8"][f"{key}_ratio"]
        assert rows["int8"][f"{key}_within_5pct"] == (abs(ratio - 1) <= 0.05)
        assert rows["int8"][f"{key}_no_worse_5pct"] == (ratio >= 0.95 if key.startswith("is") else ratio <= 1.05)
        assert rows["none"][f"{key}_se"] > 0  # the seeds differ: two runs are not copies
    runs = {(run["compression"], run["seed"]): run for run in report["runs"]}
    assert runs[("int8", 0)]["consensus_max"] != runs[("none", 0)]["consensus_max"]  # int8 is not a no-op
    assert all(0 < run["consensus_max"] < 10 for run in runs.values())
    assert len(report["tests"]) == 4 and all(t["n"] == 2 and 0 <= t["p_holm"] <= 1 for t in report["tests"])
    assert (tmp_path / "compression_M4.png").read_bytes()[:4] == b"\x89PNG"
    # an interrupted experiment continues: the runs already written are read, not run again
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir())
    r = _script("exp_compression.py", "--quick", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path), timeout=60)
    assert r.returncode == 0 and sorted(p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()) == before


def test_compression_refuses_an_unknown_compression(tmp_path: Path) -> None:
    r = _script("exp_compression.py", "--compressions", "none", "zip", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "--compressions: 'zip' is not allowed; allowed: none" in r.stderr
    r = _script("exp_compression.py", "--compressions", "none", "topk:0", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "topk needs a fraction in (0, 1]" in r.stderr and "Traceback" not in r.stderr
