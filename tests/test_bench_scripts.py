"""The issue-11 benchmark scripts run end to end in a short form, and their worker launcher fails loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgan.errors import PeerUnavailableError
from p2pgan.wire.workers import run_ranks

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_bench_overlap_short_form_writes_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "overlap.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_overlap.py"), "--peers", "2", "--size-mb", "0.2",
         "--compute-s", "0.05", "--steps", "2", "--json-out", str(out)],
        capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    step = result["step_s"]
    assert set(step) == {"compute", "mix", "exact", "overlap"} and all(len(v) == 2 for v in result["raw_s"].values())
    assert step["compute"] >= 0.05 and step["exact"] >= step["compute"]  # device compute: the host waits 0.05 s
    assert result["exposed_s"] == pytest.approx(step["exact"] - step["compute"])
    assert "hides" in proc.stdout


def test_bench_overlap_refuses_nonsense_arguments() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_overlap.py"), "--peers", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--peers >= 2" in proc.stderr


def test_run_ranks_reports_a_failed_worker_and_leaves_none_running(tmp_path: Path) -> None:
    marker = tmp_path / "ranks"
    script = ("import sys, pathlib; r = sys.argv[sys.argv.index('--rank') + 1]; "
              f"pathlib.Path({str(marker)!r} + r).write_text(r); sys.exit(3 if r == '1' else 0)")
    with pytest.raises(PeerUnavailableError, match=r"demo workers failed with exit codes \[0, 3, 0\]"):
        run_ranks([sys.executable, "-c", script], 3, os.environ, "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranks0", "ranks1", "ranks2"]
