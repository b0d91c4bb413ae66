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


@pytest.mark.timeout(170)
def test_bench_wan_short_form_reports_rows_against_the_link_floor(tmp_path: Path) -> None:
    out = tmp_path / "wan.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_wan.py"), "--payloads", "0.05", "--links", "100mbit:2ms",
         "--compressions", "none", "int8", "--steps", "1", "--warmup", "1", "--peers", "2", "--skip-digits",
         "--serial", "--json-out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    machine = {r["variant"]: r for r in result["machine"]}  # the same rings over direct loopback
    assert set(machine) == {"none", "int8", "int8/serial"}
    assert all(r["link"] == "direct" and r["floor_s"] is None for r in machine.values())
    for name, r in rows.items():  # each row beside its machine floor, against the larger floor
        assert r["machine_s"] == machine[name]["step_s"]
        assert r["vs_bound"] == pytest.approx(r["step_s"] / max(r["floor_s"], r["machine_s"]))
    assert set(rows) == {"none", "int8", "int8/serial"} and all(r["dropped"] == 0 for r in rows.values())
    # the same messages, written later; their headers may differ by a byte (each run's copy versions are
    # random 48-bit numbers, and one below 2**42 takes a byte less as a varint)
    assert rows["int8/serial"]["bytes_per_step"] == pytest.approx(rows["int8"]["bytes_per_step"], abs=8)
    # int8: a byte per element and a float32 scale per 256, against float32's 4 bytes
    assert rows["int8"]["bytes_per_step"] < 0.27 * rows["none"]["bytes_per_step"]
    for r in rows.values():  # the floor is a floor: no round beats serialization plus the delay
        assert r["floor_s"] == pytest.approx(r["bytes_per_link_round"] * 8 / 100e6 + 0.002)
        assert r["step_s"] >= r["floor_s"]
    assert "vs link" in proc.stdout and "vs max" in proc.stdout


def test_bench_wan_time_to_target_reads_harness_metrics(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_wan

    for peer, scores in (("a", [1.0, 2.0, 5.0]), ("b", [1.2, 1.4, 4.0])):
        (tmp_path / peer).mkdir()
        lines = [{"type": "start", "time": 100.0}] + [
            {"type": "eval", "step": 10 * (i + 1), "time": 100.0 + 5 * (i + 1), "scores": {"is": s}}
            for i, s in enumerate(scores)]
        (tmp_path / peer / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    got = bench_wan.time_to_target(tmp_path, 1.8)
    assert got["reached"] == {"step": 30, "seconds": 15.0}  # the mean IS is 1.7 at step 20, 4.5 at step 30
    assert got["last_is"] == pytest.approx(4.5)
    assert bench_wan.time_to_target(tmp_path, 9.0)["reached"] is None


def test_bench_wan_refuses_a_bad_link() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_wan.py"), "--links", "fast"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--links 'fast'" in proc.stderr and "Traceback" not in proc.stderr
