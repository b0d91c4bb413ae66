"""The wire-dtype scripts' bookkeeping: scripts/bench_gossip.py --dtypes and scripts/exp_wire_dtype.py.

The benchmark and the experiment themselves are run by hand (they time processes / train for minutes);
what is tested here is what they do with the numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgan.wire.codec import WIRE_DTYPES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_gossip.py"


def _load(name: str = "bench_gossip"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dtype_names_are_the_wires() -> None:
    assert tuple(_load().WIRE_DTYPE_NAMES) == tuple(WIRE_DTYPES)


def test_float32_is_always_timed_first_and_once() -> None:
    bench = _load()
    assert bench.wire_dtypes(["float16", "bfloat16", "float16"]) == ["float32", "float16", "bfloat16"]
    assert bench.wire_dtypes(["bfloat16", "float32"]) == ["float32", "bfloat16"]
    assert bench.wire_dtypes([]) == ["float32"]


def test_dtype_table_has_one_line_per_dtype_with_bytes_and_speedup() -> None:
    by = {"float32": {"ring_ms": 100.0, "cpu_ms_per_peer": 50.0, "peak_mb_per_peer": 40.0, "sent_mb_per_peer": 16.7,
                      "fallbacks": 0.0, "speedup_vs_float32": 1.0},
          "bfloat16": {"ring_ms": 60.0, "cpu_ms_per_peer": 30.0, "peak_mb_per_peer": 20.0, "sent_mb_per_peer": 8.4,
                       "fallbacks": 2.0, "speedup_vs_float32": 100.0 / 60.0}}
    lines = _load().dtype_table([{"peers": 4, "payload_mb": 8.36, "grpc_by_dtype": by}]).splitlines()
    assert len(lines) == 3 and "dtype" in lines[0]
    assert "float32" in lines[1] and "16.70MB" in lines[1] and "1.00x" in lines[1] and "fallbacks" not in lines[1]
    assert "bfloat16" in lines[2] and "8.40MB" in lines[2] and "1.67x" in lines[2] and "(2 float32 fallbacks)" in lines[2]


@pytest.mark.timeout(60)
def test_unknown_dtype_is_refused_before_anything_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dtypes", "fp8", "--json-out", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'fp8'" in proc.stderr, proc.stderr
    assert not (tmp_path / "b.json").exists()


def _fake_run(run: Path, seed: int, dtype: str, *, is_final: float, consensus: float, fallbacks: int = 0) -> None:
    """A harness run folder as p2pgan harness leaves it, with two peers, reduced to what the summary reads."""
    peers = {}
    for i, name in enumerate(("peer0", "peer1")):
        state = run / "state" / name
        state.mkdir(parents=True)
        recs = [{"type": "start", "step": 0}]
        recs += [{"type": "step", "step": k, "consensus": consensus + i + (100.0 if k <= 100 else 0.0),
                  "refused": k // 50} for k in range(1, 201)]  # the first 100 steps are outside the tail
        recs += [{"type": "eval", "step": k, "scores": {"is": float(k // 50 + i), "fid": 100.0 - k // 50}}
                 for k in (50, 100, 150, 200)]
        (state / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
        (state / "daemon.log").write_text("step 3 round 0: ... sent as float32 instead (1 ...)\n" * fallbacks)
        peers[name] = {"final": {"consensus": consensus + i}, "step_s": 0.1 * (i + 1), "sent_mb_per_step": 1.33,
                       "dropped_rounds": 0.0}
    report = {"options": {"seed": seed, "wire_dtype": dtype, "steps": 200}, "wall_s": 60.0, "peers": peers,
              "summary": {"is": {"mean": is_final}, "fid": {"mean": 20.0}}, "reference": {"scores": {"is": 9.5}}}
    (run / "report.json").write_text(json.dumps(report))


def test_exp_wire_dtype_summarizes_a_run(tmp_path: Path) -> None:
    exp = _load("exp_wire_dtype")
    _fake_run(tmp_path / "r", 1, "float16", is_final=6.5, consensus=0.25, fallbacks=2)
    row = exp.summarize_run(tmp_path / "r")
    assert (row["seed"], row["wire_dtype"], row["steps"], row["is"], row["fid"]) == (1, "float16", 200, 6.5, 20.0)
    assert row["is_tail"] == pytest.approx((2 + 3 + 4 + 3 + 4 + 5) / 6)  # evals 100, 150, 200 of both peers
    assert row["fid_tail"] == pytest.approx(100 - 3)
    assert row["consensus"] == pytest.approx(0.75) and row["consensus_tail"] == pytest.approx(0.75)
    assert row["step_s"] == pytest.approx(0.15) and row["sent_mb_per_step"] == pytest.approx(1.33)
    assert row["refused"] == 2 * 4 and row["fallback_warnings"] == 4


def test_exp_wire_dtype_table_per_seed_and_mean(tmp_path: Path) -> None:
    exp = _load("exp_wire_dtype")
    rows = []
    for seed, is_final in ((0, 6.0), (1, 7.0)):
        _fake_run(tmp_path / f"s{seed}", seed, "bfloat16", is_final=is_final, consensus=0.1)
        rows.append(exp.summarize_run(tmp_path / f"s{seed}"))
    lines = exp.markdown_table(rows).splitlines()
    assert len(lines) == 2 + 2 + 1
    assert lines[2].startswith("| bfloat16 | 0 | 6.00 | 20.0 |") and lines[3].startswith("| bfloat16 | 1 | 7.00 |")
    assert lines[4].startswith("| **bfloat16** | mean | 6.50 | 20.0 |")


def test_exp_wire_dtype_refuses_a_run_of_other_settings(tmp_path: Path) -> None:
    _fake_run(tmp_path / "runs" / "s0-float32", 0, "float32", is_final=6.0, consensus=0.1)  # 200 steps
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "exp_wire_dtype.py"), "--seeds", "0", "--dtypes",
                           "float32", "--steps", "200", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # read, not run again
    assert json.loads((tmp_path / "out" / "wire_dtype.json").read_text())["rows"][0]["is"] == 6.0
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "exp_wire_dtype.py"), "--seeds", "0", "--dtypes",
                           "float32", "--steps", "800", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "holds seed 0, float32, 200 steps" in proc.stderr, proc.stderr


def test_exp_wire_dtype_compares_each_dtype_with_float32_seed_by_seed() -> None:
    exp = _load("exp_wire_dtype")
    keys = [k for k, _ in exp.COMPARED]

    def row(dtype: str, seed: int, is_tail: float) -> dict[str, object]:
        return {"wire_dtype": dtype, "seed": seed, **{k: 1.0 + seed for k in keys}, "is_tail": is_tail}

    rows = [row("float32", 0, 6.0), row("float32", 1, 7.0), row("float32", 2, 6.5),
            row("bfloat16", 0, 5.0), row("bfloat16", 1, 5.9), row("bfloat16", 2, 5.6),  # ~1 lower on every seed
            row("float16", 0, 6.0), row("float16", 7, 1.0)]  # one seed in common: nothing to test
    tests = exp.comparisons(rows)
    assert {t["wire_dtype"] for t in tests} == {"bfloat16"} and len(tests) == len(keys)
    by = {t["score"]: t for t in tests}
    assert by["is_tail"]["mean_difference"] == pytest.approx(-1.0) and by["is_tail"]["significant"]
    assert by["is_tail"]["alternative"] == "two-sided" and by["is_tail"]["n"] == 3
    assert by["fid"]["mean_difference"] == 0 and not by["fid"]["significant"]  # identical pairs
    table = exp.comparison_table(tests)
    assert "| bfloat16 | IS tail | -1 |" in table and "**significant**" in table
