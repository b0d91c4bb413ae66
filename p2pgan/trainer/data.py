"""Datasets a peer trains on, read only from its own local path, and the shards the harness makes.

A :class:`Dataset` is ``x`` (``uint8 [N, C, H, W]`` images or ``float32 [N, D]`` points) plus integer
labels ``y``. Images are turned into floats in [-1, 1] only when a batch is drawn.

Formats (:data:`DATASET_FORMATS`, the ``dataset.format`` of a peer config):

- ``digits``: the 8x8 digits bundled with scikit-learn (1797 images, 17 grey levels 0..16 -> 0..255).
- ``gaussians``: points from 8 Gaussians on a circle (radius 2, std 0.02); labels are the mode index.
- ``cifar10``: a local folder holding CIFAR-10's python batches (``data_batch_1..5``, ``test_batch``), read
  with a restricted unpickler that admits only the numpy array reconstruction those files need.
- ``imagefolder``: ``root/<class>/<image>`` files, resized to ``image_size``; torchvision reads them where
  it imports, Pillow otherwise (same result).
- ``shard``: a folder written by :func:`write_shards` / :func:`save_shard` (``shard.npz``, loaded with
  ``allow_pickle=False``).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pgan.checkpoint import atomic_write_bytes
from p2pgan.errors import DataError
from p2pgan.trainer.catalog import DATASET_FORMATS

SHARD_MODES: tuple[str, ...] = ("iid", "label")
SHARD_FILE = "shard.npz"
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Samples ``x`` with labels ``y`` (``int64 [N]``); ``name`` says where they came from."""

    x: np.ndarray
    y: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.dtype == np.uint8 and x.ndim == 4:
            pass
        elif x.dtype == np.float32 and x.ndim == 2:
            pass
        else:
            raise DataError(
                f"{self.name or 'dataset'}: samples must be uint8 [N, C, H, W] images or float32 [N, D] points, "
                f"got {x.dtype} with shape {tuple(x.shape)}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{self.name or 'dataset'}: labels must be integers [N] matching {x.shape[0]} samples")
        if x.shape[0] == 0:
            raise DataError(f"{self.name or 'dataset'}: is empty")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def kind(self) -> str:
        """``"image"`` or ``"points"``."""
        return "image" if self.x.dtype == np.uint8 else "points"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        return Dataset(self.x[indices], self.y[indices].astype(np.int64), self.name if name is None else name)

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """All samples as floats on ``device``: images scaled to [-1, 1], points as they are."""
        x = torch.from_numpy(np.ascontiguousarray(self.x))
        if self.kind == "image":
            return (x.to(device=device, dtype=torch.float32) / 127.5) - 1.0
        return x.to(device=device)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Inverse of the [-1, 1] scaling: float images -> ``uint8 [N, C, H, W]`` (clamped, rounded)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (no download) as ``uint8 [1797, 1, 8, 8]``, levels 0..16 -> 0..255."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return Dataset(x, bunch.target.astype(np.int64), "digits")


def gaussians(
    n: int = 10_000, *, seed: int = 0, modes: int = 8, radius: float = 2.0, std: float = 0.02
) -> Dataset:
    """``n`` points from ``modes`` Gaussians evenly spaced on a circle; the label is the mode index."""
    if n < 1 or modes < 1:
        raise DataError(f"gaussians: need n >= 1 and modes >= 1, got n={n}, modes={modes}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, modes, size=n)
    centres = gaussian_centres(modes, radius)
    x = centres[y] + std * rng.standard_normal((n, 2))
    return Dataset(x.astype(np.float32), y.astype(np.int64), f"gaussians-{modes}")


def gaussian_centres(modes: int = 8, radius: float = 2.0) -> np.ndarray:
    """The ``[modes, 2]`` centres of :func:`gaussians`."""
    angles = 2 * math.pi * np.arange(modes) / modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# -- CIFAR-10 python batches ----------------------------------------------------------------------------

def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch pickle may name: numpy's array and dtype reconstruction, and
    ``_codecs.encode``, with which Python 3 writes ``bytes`` in pickle protocol 2 (str -> latin-1 bytes)."""
    import _codecs

    core = getattr(np, "_core", None) or np.core
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = core.multiarray._reconstruct
        allowed[(module, "scalar")] = core.multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: plain containers plus numpy arrays; any other global is refused."""

    _ALLOWED = _numpy_reconstructors()

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle {module}.{name}; a CIFAR-10 batch holds only numpy arrays "
                "and plain containers"
            ) from None


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file -> ``(uint8 [N, 3, 32, 32], int64 [N])``, restricted unpickling."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, str(path)).load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (top level is a {type(obj).__name__})")
    entries = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = entries.get("data"), entries.get("labels", entries.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None:
        raise DataError(f"{path}: CIFAR-10 batch needs 'data' uint8 [N, 3072] and 'labels' [N]")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (data.shape[0],):
        raise DataError(f"{path}: {y.shape[0]} labels for {data.shape[0]} images")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), y


def load_cifar10(folder: str | os.PathLike[str], *, train: bool = True) -> Dataset:
    """CIFAR-10 from ``folder`` (the extracted ``cifar-10-batches-py``): data batches 1-5, or ``test_batch``."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder}: CIFAR-10 folder lacks {', '.join(missing)} (expected the extracted cifar-10-batches-py)"
        )
    parts = [read_cifar_batch(folder / n) for n in names]
    return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), "cifar10")


# -- image folders ---------------------------------------------------------------------------------------

def _image_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    files = [
        (p, label)
        for label, c in enumerate(classes)
        for p in sorted((root / c).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class sub-folders")
    return classes, files


def _pillow_image(path: Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken torchvision install raises more than ImportError
        return False
    return True


def load_image_folder(
    root: str | os.PathLike[str], *, image_size: int = 32, channels: int = 3, backend: str = "auto"
) -> Dataset:
    """Images under ``root/<class>/`` resized to ``image_size`` squares with ``channels`` (1 or 3).

    ``backend``: ``"torchvision"`` (its ImageFolder), ``"pillow"``, or ``"auto"`` (torchvision where it
    imports). Both give the same arrays: files sorted within sorted classes, labels = class index.
    """
    root = Path(root)
    if channels not in (1, 3):
        raise DataError(f"{root}: channels must be 1 or 3, got {channels!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"{root}: image_size must be a positive integer, got {image_size!r}")
    if backend not in ("auto", "torchvision", "pillow"):
        raise DataError(f"{root}: image backend must be auto, torchvision or pillow, got {backend!r}")
    if backend == "torchvision" and not _torchvision_available():
        raise DataError(f"{root}: torchvision is not importable (install the 'vision' extra or use backend pillow)")
    use_tv = backend == "torchvision" or (backend == "auto" and _torchvision_available())
    classes, files = _image_files(root)
    if use_tv:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root), loader=lambda p: _pillow_image(Path(p), image_size, channels),
                             is_valid_file=lambda p: Path(p).suffix.lower() in IMAGE_EXTENSIONS)
        pairs = [folder[i] for i in range(len(folder))]
        x = np.stack([p[0] for p in pairs])
        y = np.asarray([p[1] for p in pairs], dtype=np.int64)
    else:
        x = np.stack([_pillow_image(p, image_size, channels) for p, _ in files])
        y = np.asarray([label for _, label in files], dtype=np.int64)
    return Dataset(x, y, f"imagefolder:{root.name}")


# -- shards ----------------------------------------------------------------------------------------------

def split_indices(labels: np.ndarray, peers: int, *, mode: str = "iid", seed: int = 0) -> list[np.ndarray]:
    """Split ``range(len(labels))`` among ``peers``: disjoint, covering, sizes within one of each other.

    ``iid``: a seeded random permutation cut into equal parts. ``label`` (non-IID): samples sorted by label
    (ties in seeded random order) and cut into contiguous parts, so each peer sees only a few classes.
    """
    n = len(labels)
    if not isinstance(peers, int) or peers < 1:
        raise DataError(f"peers must be a positive integer, got {peers!r}")
    if peers > n:
        raise DataError(f"cannot split {n} samples among {peers} peers")
    if mode not in SHARD_MODES:
        raise DataError(f"unknown shard mode {mode!r}; allowed: {', '.join(SHARD_MODES)}")
    order = np.random.default_rng(seed).permutation(n)
    if mode == "label":
        order = order[np.argsort(labels[order], kind="stable")]
    return [np.sort(part) for part in np.array_split(order, peers)]


def save_shard(dataset: Dataset, folder: str | os.PathLike[str]) -> Path:
    """Write ``dataset`` as ``folder/shard.npz`` (no pickled objects), atomically; returns the file."""
    buf = io.BytesIO()
    np.savez(buf, x=dataset.x, y=dataset.y.astype(np.int64), name=np.asarray(dataset.name))
    return atomic_write_bytes(Path(folder) / SHARD_FILE, buf.getvalue())


def load_shard(folder: str | os.PathLike[str]) -> Dataset:
    """Read a shard folder written by :func:`save_shard` (``np.load(allow_pickle=False)``)."""
    path = Path(folder)
    path = path / SHARD_FILE if path.is_dir() else path
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y, name = f["x"], f["y"], str(f["name"]) if "name" in f.files else path.parent.name
    except FileNotFoundError:
        raise DataError(f"{path}: shard file does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid shard ({exc})") from None
    return Dataset(x, y, name)


def write_shards(
    dataset: Dataset, out_dir: str | os.PathLike[str], peers: int, *, mode: str = "iid", seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Split ``dataset`` among ``peers`` (see :func:`split_indices`); shard i goes to ``out_dir/<names[i]>/``.

    ``names`` defaults to ``peer-000``, ``peer-001``...; returns the shard folders in peer order.
    """
    names = list(names) if names is not None else [f"peer-{i:03d}" for i in range(peers)]
    if len(names) != peers or len(set(names)) != peers:
        raise DataError(f"need {peers} distinct shard names, got {names!r}")
    folders = []
    for name, idx in zip(names, split_indices(dataset.y, peers, mode=mode, seed=seed)):
        folder = Path(out_dir) / name
        save_shard(dataset.subset(idx, f"{dataset.name}[{name}]"), folder)
        folders.append(folder)
    return folders


def holdout_split(dataset: Dataset, fraction: float = 0.2, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded random ``(train, held_out)`` split with ``fraction`` of the samples held out."""
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = len(dataset) - max(1, int(round(fraction * len(dataset))))
    return dataset.subset(np.sort(order[:cut])), dataset.subset(np.sort(order[cut:]))


def load_dataset(
    format: str,
    path: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    image_size: int = 32,
    channels: int = 3,
    n: int = 10_000,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by format name (one of :data:`DATASET_FORMATS`).

    ``path`` is required for ``cifar10``, ``imagefolder`` and ``shard``. ``train`` picks CIFAR's training
    or test batches; ``image_size`` / ``channels`` apply to ``imagefolder``; ``n`` / ``seed`` to ``gaussians``.
    """
    if format not in DATASET_FORMATS:
        raise DataError(f"unknown dataset format {format!r}; allowed: {', '.join(DATASET_FORMATS)}")
    if format == "digits":
        return load_digits()
    if format == "gaussians":
        return gaussians(n, seed=seed)
    if path is None:
        raise DataError(f"dataset format {format!r} needs a path")
    if format == "cifar10":
        return load_cifar10(path, train=train)
    if format == "imagefolder":
        return load_image_folder(path, image_size=image_size, channels=channels)
    return load_shard(path)
