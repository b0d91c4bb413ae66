"""sagan128: the paper's Self-Attention GAN: size, shapes, buffer-free spectral norm, attention, and training
from a real image folder through the config, the data loader, the game and DPOSG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from p2pgan.algorithm import DPOSG
from p2pgan.daemon.config import load_config
from p2pgan.daemon.peer import load_private_data
from p2pgan.errors import ConfigError
from p2pgan.mixing import IdentityMixer
from p2pgan.trainer import models
from p2pgan.trainer.game import build_game
from p2pgan.trainer.models import (
    MODEL_DEFAULTS,
    SNConv2d,
    SNLinear,
    SelfAttention,
    count_parameters,
    make_models,
)

pytestmark = pytest.mark.timeout(120)

#: the documented full-width sizes (models.py docstring, README)
SAGAN128_G, SAGAN128_D = 32_171_268, 38_424_258


def test_full_width_parameter_count_is_the_documented_one() -> None:
    g, d, k, shape = make_models("sagan128", device="meta")  # shapes only: no 280 MB of parameters
    assert (k, shape) == (128, (3, 128, 128))
    assert (count_parameters(g), count_parameters(d)) == (SAGAN128_G, SAGAN128_D)
    total = SAGAN128_G + SAGAN128_D
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for doc in (models.__doc__ or "", readme):
        assert f"{total:,}" in doc and f"{SAGAN128_G:,}" in doc and f"{4 * total / 2**20:.1f} MiB" in doc
    assert list(g.buffers()) == [] and list(d.buffers()) == []


def test_shapes_range_attention_at_64_and_gamma_starts_at_zero() -> None:
    g, d, k, shape = make_models("sagan128", width=4, seed=0)
    assert list(g.buffers()) == [] and list(d.buffers()) == []
    seen: list[tuple[str, tuple[int, ...]]] = []
    attention = [(who, m) for who, net in (("G", g), ("D", d)) for m in net.modules() if isinstance(m, SelfAttention)]
    assert [who for who, _ in attention] == ["G", "D"]
    for who, m in attention:
        assert m.gamma.tolist() == [0.0] and any(p is m.gamma for p in m.parameters())
        m.register_forward_pre_hook(lambda _m, args, who=who: seen.append((who, tuple(args[0].shape))))
    with torch.no_grad():
        x = g(torch.randn(2, k))
        score = d(x)
    assert tuple(x.shape) == (2, *shape) == (2, 3, 128, 128)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert tuple(score.shape) == (2,) and torch.isfinite(score).all()
    assert seen == [("G", (2, 8, 64, 64)), ("D", (2, 4, 64, 64))]  # G: 2w channels, D: w, both at 64x64


def _matrix_with_spectrum(rows: int, cols: int, spectrum: list[float], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=gen))
    s = torch.zeros(rows, cols)
    s[range(len(spectrum)), range(len(spectrum))] = torch.tensor(spectrum)
    return u @ s @ v.T


def _top_sv(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().flatten(1).double(), ord=2))


def test_spectral_norm_bounds_the_top_singular_value_without_buffers() -> None:
    torch.manual_seed(0)  # fixed layers: from an unseeded draw the slow convergence checked below varied run to run
    conv = SNConv2d(8, 6, 3, padding=1)
    assert list(conv.buffers()) == [] and set(conv.state_dict()) == {"weight", "bias"}
    # a spectrum whose top value stands apart (ratio 1/3): the default 5 iterations are exact
    spectrum = [3.0, 1.0, 0.9, 0.5, 0.2, 0.1]
    with torch.no_grad():
        conv.weight.copy_(_matrix_with_spectrum(6, 72, spectrum, seed=1).view_as(conv.weight))
    assert _top_sv(conv.normalized_weight()) == pytest.approx(1.0, abs=1e-4)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight / 3.0, conv.bias, padding=1))
    # Miyato et al.: the gradient of sigma is u1 v1^T (top singular vectors; their joint sign cancels)
    (grad,) = torch.autograd.grad(conv.sigma(), conv.weight)
    u, _, vh = torch.linalg.svd(conv.weight.detach().flatten(1))
    torch.testing.assert_close(grad.flatten(1), torch.outer(u[:, 0], vh[0]), atol=1e-4, rtol=0)
    # freshly initialised weights (crowded spectra): power iteration underestimates sigma, so the
    # normalised top singular value is >= 1, a few per cent above at 5 iterations, -> 1 with more
    for layer in (SNConv2d(64, 128, 3), SNLinear(128, 256)):
        top = _top_sv(layer.normalized_weight())
        assert 1.0 - 1e-5 <= top <= 1.1, (layer, top)
        layer.power_iterations = 1000  # crowded spectra converge slowly: within 1e-3 after 1000 iterations
        assert _top_sv(layer.normalized_weight()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="power_iterations must be a positive integer, got 0"):
        SNLinear(4, 4, power_iterations=0)
    # the start vector is fixed: the same weights give the same sigma, bit for bit
    a, b = SNLinear(16, 4), SNLinear(16, 4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sigma(), b.sigma())


def _write_image_folder(root: Path, per_class: int = 3) -> None:
    """A real on-disk image folder: root/<class>/<n>.png, RGB PNGs of mixed sizes (the loader resizes)."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(40 + 8 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / cls / f"{i}.png")


def _config(folder: Path, *, train: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> Path:
    (folder / "roster.yaml").write_text("federation: demo\npeers: []\n")
    doc = {
        "peer": {"id": "alice", "federation": "demo", "listen": "127.0.0.1:0"},
        "security": {"insecure": True},
        "discovery": {"roster": "roster.yaml"},
        "train": {"model": "sagan128", "steps": 2, "batch_size": 2, "width": 4, "device": "cpu", **(train or {})},
        "data": {"format": "imagefolder", "path": "images", "image_size": 128, **(data or {})},
        "evaluation": {"kind": "none"},
    }
    path = folder / "alice.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_sagan128_trains_from_an_image_folder(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "images")
    cfg = load_config(_config(tmp_path))
    assert (cfg.train.lr_generator, cfg.train.lr_discriminator) == (1e-3, 4e-5)  # the paper's, by default
    data = load_private_data(cfg, seed=0)
    assert data.sample_shape == (3, 128, 128) and len(data) == 6
    # as the daemon builds its run (p2pgan.daemon.peer._run_peer), with this one peer's identity mixer
    game = build_game(cfg.train.model, cfg.train.loss, data, batch_size=cfg.train.batch_size,
                      init_seed=cfg.train.init_seed, seed=0, device="cpu",
                      latent_dim=cfg.train.latent_dim, width=cfg.train.width)
    assert list(game.G.buffers()) == [] and list(game.D.buffers()) == []
    lr = game.lr_vector(cfg.train.lr_generator, cfg.train.lr_discriminator)
    algo = DPOSG(game.point(), IdentityMixer(1), cfg.train.optimizer, lr, schedule=cfg.mixing.schedule,
                 first_step=cfg.mixing.first_step, betas=cfg.train.betas)
    start = game.point()
    for _ in range(cfg.train.steps or 0):
        algo.step(game)
        assert game.last is not None and math.isfinite(game.last.loss_g) and math.isfinite(game.last.loss_d)
    assert algo.steps == 2
    end = algo.z if cfg.mixing.schedule == "overlap" else algo.x
    assert torch.isfinite(end).all()
    moved = (end[0] - start[0]).abs()
    assert moved[:game.dim_u].max() > 0 and moved[game.dim_u:].max() > 0  # both players stepped
    game.load_point(end)
    samples = game.sample(2)
    assert tuple(samples.shape) == (2, 3, 128, 128) and samples.abs().max() <= 1


def test_config_image_size_and_learning_rate_defaults_follow_the_model(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "images", per_class=1)
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, data={"image_size": 64}))
    message = str(err.value)
    assert "\n" not in message and "got 64" in message
    assert "data.image_size: must be 128 for model 'sagan128'" in message
    cfg = load_config(_config(tmp_path, data={"image_size": None}))  # absent: the model's own side
    assert cfg.data.image_size == 128
    cfg = load_config(_config(tmp_path, train={"lr_generator": 2e-4}))
    assert (cfg.train.lr_generator, cfg.train.lr_discriminator) == (2e-4, 4e-5)  # a given value wins
    cfg = load_config(_config(tmp_path, train={"model": "resnet32", "width": None}, data={"image_size": None}))
    assert (cfg.train.lr_generator, cfg.train.lr_discriminator, cfg.data.image_size) == (2e-4, 2e-4, 32)
    assert set(MODEL_DEFAULTS) == set(models.MODEL_NAMES)
