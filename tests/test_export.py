"""`p2pgan export`: a daemon's trained generator, opened with plain torch.load or safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from daemon_helpers import federation, running

from deadlines import scaled
from p2pgan import cli
from p2pgan.checkpoint import CheckpointManager
from p2pgan.trainer.models import make_models

RUN_TIMEOUT_S = scaled(120.0)  # bounds a hang (x the machine's load, tests/deadlines.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One peer (a federation of one over TLS) trained 6 steps on the Gaussians; returns its config."""
    fed = federation(tmp_path_factory.mktemp("export"), 1, steps=6, checkpoint_interval=3)
    with running(fed) as group:
        group.wait(RUN_TIMEOUT_S)
    return fed.configs["peer0"]


def _trained_generator_vector(config: Path) -> torch.Tensor:
    from p2pgan.daemon.config import load_config

    loaded = CheckpointManager(load_config(config).checkpoint.dir).load_latest(fallback=False)
    assert loaded is not None and loaded.state["step"] == 6
    return loaded.state["algorithm"]["x"].reshape(-1)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_writes_a_generator_plain_torch_can_use(trained: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"generator{suffix}"
    assert cli.main(["export", "--config", str(trained), "--out", str(out)]) == 0
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["architecture"] == "mlp2d" and info["step"] == 6 and info["peer"] == "peer0"
    if suffix == ".pt":
        blob = torch.load(out, weights_only=True)  # plain torch, no p2pgan container
        state = blob["state_dict"]
        assert blob["architecture"] == "mlp2d"
    else:
        safetensors = pytest.importorskip("safetensors.torch")
        state = safetensors.load_file(str(out))
    g = make_models(info["architecture"], **info["arguments"])[0]
    g.load_state_dict(state)
    flat = torch.cat([p.detach().reshape(-1) for p in g.parameters()])
    assert torch.equal(flat, _trained_generator_vector(trained)[: flat.numel()])  # the generator part of X
    assert g(torch.zeros(5, info["arguments"]["latent_dim"])).shape == (5, 2)


@pytest.mark.timeout(120)
def test_export_mistakes_are_one_line_errors(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["export", "--config", str(trained), "--out", str(tmp_path / "g.onnx")]) == 2
    assert "--out: 'g.onnx' must end in .pt or .safetensors" in capsys.readouterr().err
    assert cli.main(["export", "--config", str(trained), "--checkpoint", str(trained), "--out",
                     str(tmp_path / "g.pt")]) == 2  # a YAML file is not a checkpoint
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(trained) in err
