"""Checkpoints: round trip, refusal of truncated / corrupt / foreign files, fallback, pruning, RNG state."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pgan.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from p2pgan.errors import CheckpointError

pytestmark = pytest.mark.timeout(60)


def _state(step: int) -> dict:
    return {
        "step": step,
        "x": torch.arange(6, dtype=torch.float32).reshape(1, 6) * step,
        "opt": {"m": torch.ones(6), "v": [torch.zeros(2), 3.5], "name": "oadam"},
        "membership": ["alice", "bob", "carol"],
        "flag": True,
        "none": None,
    }


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", _state(3))
    back = load_checkpoint(path)
    assert back["step"] == 3 and back["membership"] == ["alice", "bob", "carol"] and back["none"] is None
    assert torch.equal(back["x"], _state(3)["x"]) and back["opt"]["v"][1] == 3.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
    with pytest.raises(CheckpointError, match=r"state\['bad'\]: cannot checkpoint a ndarray"):
        save_checkpoint(tmp_path / "b.pt", {"bad": np.zeros(2)})
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) - 10], "truncated checkpoint"),
        (lambda b: b[:-5] + bytes(x ^ 0xFF for x in b[-5:]), "SHA-256 of the payload does not match"),
        (lambda b: b[:20], "truncated or corrupt checkpoint header"),
        (lambda b: b"", "not a p2pgan checkpoint"),
        (lambda b: pickle.dumps({"step": 1}), "not a p2pgan checkpoint"),
    ],
)
def test_damaged_files_are_refused_naming_the_file(tmp_path: Path, damage, message: str) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", _state(1))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="missing.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_manager_keeps_last_n_and_falls_back_past_a_corrupt_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpts", keep=2)
    assert mgr.load_latest() is None
    for step in (10, 20, 30):
        mgr.save(step, _state(step))
    assert mgr.steps() == [20, 30]
    assert (tmp_path / "ckpts" / "latest").read_text().strip() == "ckpt-000000030.pt"
    assert mgr.load_latest().step == 30
    newest = mgr.path_for(30)
    newest.write_bytes(newest.read_bytes()[:-100])  # a crash mid-copy, a full disk...
    with pytest.raises(CheckpointError, match="ckpt-000000030.pt: truncated"):
        mgr.load_latest(fallback=False)
    loaded = mgr.load_latest()
    assert loaded.step == 20 and torch.equal(loaded.state["x"], _state(20)["x"])
    assert loaded.refused[0][0] == newest and newest.exists()  # kept for inspection, never deleted
    mgr.path_for(20).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        mgr.load_latest()


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save(1, _state(1))

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("p2pgan.checkpoint.os.fsync", crash)
    with pytest.raises(OSError, match="No space"):
        mgr.save(2, _state(2))
    monkeypatch.undo()
    assert mgr.steps() == [1] and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert mgr.load_latest(fallback=False).step == 1


def test_rng_state_capture_restore_through_a_file(tmp_path: Path) -> None:
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    state = capture_rng_state()
    expected = (torch.rand(4), torch.randn(2), np.random.rand(3), np.random.standard_normal(), random.random(),
                random.gauss(0, 1))
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    restore_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(4), torch.randn(2), np.random.rand(3), np.random.standard_normal(), random.random(),
             random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and torch.equal(expected[1], again[1])
    assert np.array_equal(expected[2], again[2]) and expected[3:] == again[3:]
    with pytest.raises(CheckpointError, match="RNG state in checkpoint is malformed"):
        restore_rng_state({"torch": torch.get_rng_state()})
