"""PNG outputs: sample grids (Pillow only) and band curves from metrics records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2pgan.metrics import MetricsWriter, records_by_peer
from p2pgan.trainer import images

pytestmark = pytest.mark.timeout(60)


def test_grid_layout_and_values(tmp_path: Path) -> None:
    x = -torch.ones(5, 1, 8, 8)
    x[3] = 1.0  # the fourth image is white
    grid = images.image_grid(x, nrow=3, padding=1)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[10, 1, 0] == 255 and grid[0, 0, 0] == 255  # black cell, white cell, pad
    path = images.save_image_grid(x, tmp_path / "grid.png", nrow=3)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "L"
        assert img.size == (28 * 4, 19 * 4)  # 8-px cells enlarged 4x to reach 32 px
    rgb = images.save_samples(torch.rand(4, 3, 32, 32) * 2 - 1, tmp_path / "rgb.png")
    with Image.open(rgb) as img:
        assert img.mode == "RGB" and img.size == (67, 67)
    titled = images.save_image_grid(x, tmp_path / "titled.png", nrow=3, title="peer0 step 800")
    with Image.open(titled) as img:  # a white band with dark text above the same grid
        band = images.TITLE_PX + 8
        assert img.mode == "L" and img.size == (28 * 4, 19 * 4 + band)
        top = np.asarray(img)[:band]
        assert top.min() < 100 and (top == 255).mean() > 0.5
        assert (np.asarray(img)[band:] == np.asarray(Image.open(path))).all()
    with pytest.raises(ValueError, match="images must be"):
        images.image_grid(torch.zeros(2, 2, 4, 4))


def test_points_scatter(tmp_path: Path) -> None:
    path = images.save_samples(torch.randn(100, 2), tmp_path / "points.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_band_interpolates_on_common_grid() -> None:
    x, mean, lo, hi = images.band({"a": [(0, 0.0), (1, 2.0), (2, 4.0)], "b": [(0.5, 1.0), (2.5, 1.0)]})
    assert x.tolist() == [0.5, 1.0, 2.0]  # inside the range both peers cover, its ends included
    assert lo.tolist() == [1.0, 1.0, 1.0] and hi.tolist() == [1.0, 2.0, 4.0] and mean.tolist() == [1.0, 1.5, 2.5]


def test_band_keeps_first_and_last_evaluation_when_epochs_differ_slightly() -> None:
    # shards of 450 and 449 samples put the same evaluation step at slightly different epochs
    x, mean, _, _ = images.band({"a": [(7.11, 1.0), (14.22, 3.0)], "b": [(7.13, 1.0), (14.26, 3.0)]})
    assert len(x) == 2 and x[0] == 7.13 and x[-1] == 14.22


def test_run_figures_from_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = []
    for p in range(3):
        path = tmp_path / f"peer{p}.jsonl"
        with MetricsWriter(path, f"peer{p}") as w:
            for s in range(40):
                w.step(step=s, epoch=s / 20, loss_g=float(rng.normal()), loss_d=float(rng.normal()),
                       grad_norm=1.0, consensus=float(np.exp(-s / 10) + 1e-3))
                if s % 10 == 9:
                    w.evaluation(step=s, epoch=s / 20, scores={"is": 2 + s / 10 + p / 10, "fid": 100 - s})
        files.append(path)
    written = images.write_run_figures(records_by_peer(files), tmp_path / "report")
    assert sorted(p.name for p in written) == ["consensus.png", "losses.png", "score.png"]
    for p in written:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size[0] > 300
    # without evaluation lines there is no score figure
    only_steps = {peer: [r for r in rs if r["type"] == "step"] for peer, rs in records_by_peer(files).items()}
    assert [p.name for p in images.write_run_figures(only_steps, tmp_path / "r2")] == ["losses.png", "consensus.png"]
