"""Datasets in their real on-disk formats (CIFAR pickle batches, PNG folders, shards) and sharding."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2pgan.errors import DataError
from p2pgan.trainer import data as data_mod
from p2pgan.trainer.data import (
    Dataset,
    gaussians,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_shard,
    split_indices,
    write_shards,
)

pytestmark = pytest.mark.timeout(60)


def test_digits_levels_and_scaling() -> None:
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.uint8 and ds.kind == "image"
    assert set(np.unique(ds.x)) <= {round(v * 255 / 16) for v in range(17)}
    t = ds.tensor()
    assert float(t.min()) == -1.0 and float(t.max()) == 1.0
    assert sorted(set(ds.y.tolist())) == list(range(10))


def _write_cifar(folder: Path, protocol: int, n: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(protocol)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": x,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (x, y)
    return written


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_restricted_unpickling(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar(tmp_path, protocol)
    train = load_cifar10(tmp_path)
    test = load_dataset("cifar10", tmp_path, train=False)
    assert train.x.shape == (30, 3, 32, 32) and test.x.shape == (6, 3, 32, 32)
    x1, y1 = written["data_batch_1"]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values in row-major order
    assert np.array_equal(train.x[0, 1].reshape(-1), x1[0, 1024:2048])
    assert train.y[:6].tolist() == y1
    assert np.array_equal(test.x.reshape(6, -1), written["test_batch"][0])


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_cifar_refuses_foreign_pickles_and_missing_files(tmp_path: Path) -> None:
    _write_cifar(tmp_path, 2)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3: refusing to unpickle (posix|nt|os)\.system"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_cifar10(tmp_path)


def _write_png_folder(root: Path) -> dict[str, list[tuple[int, int, int]]]:
    colours = {"cats": [(255, 0, 0), (0, 255, 0)], "dogs": [(0, 0, 255)], "zebras": [(10, 20, 30), (200, 100, 50)]}
    for cls, cols in colours.items():
        (root / cls).mkdir(parents=True)
        for i, c in enumerate(cols):
            Image.new("RGB", (12, 12), c).save(root / cls / f"{i}.png")
    (root / "cats" / "notes.txt").write_text("not an image")
    return colours


def test_image_folder_with_pillow(tmp_path: Path) -> None:
    colours = _write_png_folder(tmp_path)
    ds = load_image_folder(tmp_path, image_size=8, channels=3, backend="pillow")
    assert ds.x.shape == (5, 3, 8, 8) and ds.y.tolist() == [0, 0, 1, 2, 2]
    assert ds.x[2, :, 3, 3].tolist() == list(colours["dogs"][0])  # a flat colour survives the resize
    grey = load_image_folder(tmp_path, image_size=4, channels=1, backend="pillow")
    assert grey.x.shape == (5, 1, 4, 4)
    if not data_mod._torchvision_available():
        auto = load_dataset("imagefolder", tmp_path, image_size=8, channels=3)
        assert np.array_equal(auto.x, ds.x)
        with pytest.raises(DataError, match="torchvision is not importable"):
            load_image_folder(tmp_path, backend="torchvision")
    (tmp_path / "dogs" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"dogs/0\.png: cannot read image"):
        load_image_folder(tmp_path, backend="pillow")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "cats", backend="pillow")


@pytest.mark.parametrize("mode", ["iid", "label"])
def test_shards_are_disjoint_and_cover(tmp_path: Path, mode: str) -> None:
    ds = load_digits()
    folders = write_shards(ds, tmp_path, 4, mode=mode, seed=1)
    assert [f.name for f in folders] == ["peer-000", "peer-001", "peer-002", "peer-003"]
    shards = [load_shard(f) for f in folders]
    assert sum(len(s) for s in shards) == len(ds)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    parts = split_indices(ds.y, 4, mode=mode, seed=1)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(ds) == len(joined)  # disjoint and covering
    for s, idx in zip(shards, parts):
        assert np.array_equal(s.x, ds.x[idx]) and np.array_equal(s.y, ds.y[idx])
    labels_per_peer = [len(np.unique(s.y)) for s in shards]
    if mode == "label":
        assert max(labels_per_peer) <= 4  # 10 classes over 4 contiguous label ranges
    else:
        assert min(labels_per_peer) == 10


def test_shard_format_is_pickle_free_and_validated(tmp_path: Path) -> None:
    pts = gaussians(50, seed=2)
    (folder,) = write_shards(pts, tmp_path, 1, names=["alice"])
    with np.load(folder / "shard.npz", allow_pickle=False) as f:
        assert set(f.files) == {"x", "y", "name"}
    back = load_dataset("shard", folder)
    assert back.kind == "points" and np.array_equal(back.x, pts.x)
    (folder / "shard.npz").write_bytes((folder / "shard.npz").read_bytes()[:100])
    with pytest.raises(DataError, match="alice/shard.npz: not a valid shard"):
        load_shard(folder)
    with pytest.raises(DataError, match="shard file does not exist"):
        load_shard(tmp_path / "bob")
    with pytest.raises(DataError, match="cannot split 50 samples among 51 peers"):
        split_indices(pts.y, 51)
    with pytest.raises(DataError, match="unknown shard mode"):
        split_indices(pts.y, 2, mode="dirichlet")
    with pytest.raises(DataError, match="unknown dataset format 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="samples must be uint8"):
        Dataset(np.zeros((2, 3), dtype=np.int16), np.zeros(2, dtype=np.int64))
