"""The wire fuzzer's short form: mutated messages with a member's key into a running federation (issue 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_short_fuzz_run_against_real_daemons(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_wire.py"), "--messages", "150", "--seed", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "fuzz.json").read_text())
    assert sum(result["by_status"].values()) == 150
    assert result["crashes"] == 0 and result["internal"] == 0 and result["non_finite_models"] == 0
    assert len(result["by_mutation"]) == 9  # every kind of mutation was tried
    assert result["by_status"].get("INVALID_ARGUMENT", 0) > 50  # most mutations are refused as malformed
    for daemon in result["daemons"].values():
        assert daemon["final_model_finite"] and daemon["exit_code"] == 0 and daemon["tracebacks_in_log"] == 0
        assert daemon["steps_during_fuzz"] > 0  # the federation kept training
