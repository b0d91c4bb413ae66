"""The daemon's torch.distributed backend: config rules, and a real harness run over Gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from p2pgan.daemon.config import load_config
from p2pgan.daemon.processes import pid_alive
from p2pgan.errors import ConfigError
from p2pgan.harness import HarnessOptions, run_harness


def _doc(**mixing: object) -> dict[str, object]:
    return {
        "peer": {"id": "alice", "federation": "demo", "listen": "127.0.0.1:7000"},
        "security": {"insecure": True},
        "discovery": {"roster": "roster.yaml"},
        "mixing": {"variant": "dp", **mixing},
        "train": {"model": "digits", "steps": 10},
        "data": {"format": "digits"},
    }


def _load(tmp_path: Path, doc: dict[str, object]) -> object:
    (tmp_path / "roster.yaml").write_text("federation: demo\npeers: []\n")
    path = tmp_path / "alice.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


@pytest.mark.timeout(30)
def test_torch_backend_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _doc(backend="torch", torch_init="tcp://10.0.0.1:29500"))
    assert (cfg.mixing.backend, cfg.mixing.torch_init) == ("torch", "tcp://10.0.0.1:29500")
    assert _load(tmp_path, _doc(backend="torch")).mixing.torch_init == "env://"  # torchrun's variables
    with pytest.raises(ConfigError, match=r"alice.yaml: mixing.torch_init: 'http://x' must start with"):
        _load(tmp_path, _doc(backend="torch", torch_init="http://x"))
    secure = _doc(backend="torch")
    secure["security"] = {"ca": "ca.pem", "cert": "a.pem", "key": "a.key"}
    for name in ("ca.pem", "a.pem", "a.key"):
        (tmp_path / name).write_text("pem")
    with pytest.raises(ConfigError, match=r"mixing.backend: 'torch' .* needs `security.insecure: true`"):
        _load(tmp_path, secure)
    with pytest.raises(ConfigError, match="--backend: torch .* needs --insecure"):
        HarnessOptions(peers=2, out=tmp_path, backend="torch").validate()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_harness_trains_over_gloo(tmp_path: Path) -> None:
    opts = HarnessOptions(peers=3, out=tmp_path / "run", steps=12, variant="rand-dp", backend="torch", insecure=True,
                          eval_interval=12, checkpoint_interval=12, timeout_s=120)
    report = json.loads(run_harness(opts).read_text())
    assert report["exit_codes"] == {"peer0": 0, "peer1": 0, "peer2": 0}
    assert not [pid for pid in report["pids"].values() if pid_alive(pid)], "a peer process was left behind"
    for peer in report["peers"].values():
        assert peer["steps"] == 12
    # every peer really exchanged vectors: 12 steps x 2 neighbours x d float32 (random ring, M = 3)
    d = next(iter(report["peers"].values()))["parameters"]
    assert report["summary"]["bytes_sent"] >= 12 * 2 * d * 4
    for pid in report["peers"]:
        cfg = yaml.safe_load((tmp_path / "run" / "peers" / f"{pid}.yaml").read_text())
        assert cfg["mixing"]["backend"] == "torch" and cfg["mixing"]["torch_init"].startswith("tcp://127.0.0.1:")
