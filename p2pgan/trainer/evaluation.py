"""Scores for generated samples, computed without downloading anything.

- :class:`DigitsEvaluator`: a small classifier trained once on scikit-learn's digits (seeded, cached on
  disk) gives an Inception-Score analogue (its class probabilities) and an FID in its 64-d feature space,
  against the classifier's training split.
- :class:`InceptionEvaluator`: the standard IS and FID (the FID Inception network and weights file that
  pytorch-fid, torch-fidelity and torchmetrics use) from a LOCAL weights file the user gives; a clear
  error when the file is missing or is not those weights. Never downloads.
- :class:`GaussiansEvaluator`: modes covered and fraction of high-quality samples for 8 Gaussians.
- :func:`consensus_distance`: how far a peer's vector is from its neighbours' average.

Every evaluator has ``scores(samples) -> dict[str, float]`` (``samples`` as the generator returns them).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from p2pgan.checkpoint import load_checkpoint, save_checkpoint
from p2pgan.errors import CheckpointError, ConfigError
from p2pgan.trainer.data import Dataset, gaussian_centres, holdout_split, load_digits

log = logging.getLogger(__name__)

#: environment variable naming the cache folder (default ``~/.cache/p2pgan``)
CACHE_ENV = "P2PGAN_CACHE"
#: bump when the digits classifier or its training changes, so stale caches are not reused
DIGITS_CLASSIFIER_VERSION = 1


def default_cache_dir() -> Path:
    """``$P2PGAN_CACHE`` if set, else ``~/.cache/p2pgan``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "p2pgan"


# -- the statistics ---------------------------------------------------------------------------------------

def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` averaged over ``splits`` equal parts of ``probs`` ``[n, classes]``."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``[k]``, ``[k, k]``) of ``features`` ``[n, k]``."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians (the FID formula).

    ``tr (S1 S2)^(1/2)`` is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix ``S1^(1/2) S2 S1^(1/2)``, which is stable where a general matrix square root is not.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def frechet_distance_to(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """FID between the Gaussian fitted to ``features`` ``[n, k]`` and a reference ``(mu, sigma)``.

    Equal to ``frechet_distance(*feature_statistics(features), mu_ref, sigma_ref)``. With fewer samples than
    dimensions (1000 samples of 2048-d Inception features) the samples' covariance is ``A^T A`` of rank < n,
    and ``tr (S1 S2)^(1/2)`` is the sum of square roots of the eigenvalues of the n x n matrix ``A S2 A^T``
    (the same non-zero eigenvalues): exact, and O(n k^2) instead of O(k^3).
    """
    f = np.asarray(features, dtype=np.float64)
    n, k = f.shape
    mu = f.mean(axis=0)
    if n > k:
        return frechet_distance(mu, np.cov(f, rowvar=False), mu_ref, sigma_ref)
    a = (f - mu) / math.sqrt(n - 1)
    small = a @ sigma_ref @ a.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    diff = mu - mu_ref
    return float(diff @ diff + (a * a).sum() + np.trace(sigma_ref) - 2 * tr_sqrt)


def consensus_distance(
    own: torch.Tensor, neighbours: torch.Tensor | Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> float:
    """``|| own - avg(neighbours) ||`` (weighted average if ``weights`` are given, normalised to sum 1)."""
    nb = torch.stack([t.reshape(-1) for t in neighbours]) if not isinstance(neighbours, torch.Tensor) else neighbours
    if nb.shape[0] == 0:
        return 0.0
    nb = nb.reshape(nb.shape[0], -1).double()
    if weights is None:
        avg = nb.mean(dim=0)
    else:
        w = torch.as_tensor(list(weights), dtype=torch.float64, device=nb.device)
        if w.shape != (nb.shape[0],) or not float(w.sum()) > 0:
            raise ValueError(f"need {nb.shape[0]} weights with a positive sum, got {list(weights)!r}")
        avg = (w[:, None] * nb).sum(dim=0) / w.sum()
    return float((own.reshape(-1).double().to(nb.device) - avg).norm())


class Evaluator(Protocol):
    """What the daemon calls every evaluation interval."""

    def scores(self, samples: torch.Tensor) -> dict[str, float]: ...


# -- digits ----------------------------------------------------------------------------------------------

class DigitsClassifier(nn.Module):
    """8x8 digit -> 10 logits; ``features`` is the 64-d penultimate layer used for FID."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _train_digits_classifier(train: Dataset, seed: int, epochs: int = 60, batch: int = 64) -> DigitsClassifier:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    x, y = train.tensor(), torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


class DigitsEvaluator:
    """IS analogue and FID for 8x8 digits, in the space of a classifier trained once and cached.

    The classifier trains on 80 % of the digits (seeded split); FID is measured against the features of
    that training split, so the held-out 20 % (``self.held_out``) is a fair "real data" reference score.
    The trained weights are cached as a verified checkpoint in ``cache_dir`` (written atomically, so
    peers starting together can race safely); a damaged cache file is retrained and replaced.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.train, self.held_out = holdout_split(load_digits(), 0.2, seed=seed)
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = directory / f"digits-classifier-v{DIGITS_CLASSIFIER_VERSION}-seed{seed}.ckpt"
        self.model = self._load_or_train(seed).to(self.device)
        self.accuracy = float((self._logits(self.held_out.tensor()).argmax(1).cpu().numpy() == self.held_out.y).mean())
        self.reference = feature_statistics(self._features(self.train.tensor()))

    def _load_or_train(self, seed: int) -> DigitsClassifier:
        model = DigitsClassifier()
        try:
            model.load_state_dict(load_checkpoint(self.cache_path)["model"])
            return model.eval()
        except CheckpointError as exc:
            if self.cache_path.exists():
                log.warning("retraining the digits classifier: %s", exc)
        except (KeyError, RuntimeError) as exc:
            log.warning("retraining the digits classifier: %s: unusable cache (%s)", self.cache_path, exc)
        model = _train_digits_classifier(self.train, seed)
        save_checkpoint(self.cache_path, {"model": model.state_dict(), "version": DIGITS_CLASSIFIER_VERSION})
        return model

    @torch.no_grad()
    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, torch.float32))

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> np.ndarray:
        return self.model.features(images.to(self.device, torch.float32)).double().cpu().numpy()

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        """``{"is": ..., "fid": ...}`` for images ``[n, 1, 8, 8]`` in [-1, 1] (n >= 2)."""
        if samples.dim() != 4 or tuple(samples.shape[1:]) != (1, 8, 8) or samples.shape[0] < 2:
            raise ValueError(f"digits evaluation takes images [n >= 2, 1, 8, 8], got {tuple(samples.shape)}")
        probs = torch.softmax(self._logits(samples), dim=1).double().cpu().numpy()
        return {"is": inception_score(probs), "fid": frechet_distance_to(self._features(samples), *self.reference)}


# -- Inception: the standard FID / IS ---------------------------------------------------------------------

class InceptionEvaluator:
    """IS and FID of RGB (or grey) images with the standard FID Inception weights from a local file.

    ``weights`` is ``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid, torch-fidelity and
    torchmetrics use; the network, preprocessing and statistics are theirs (:mod:`p2pgan.trainer.inception`),
    so the numbers compare with published ones (given as many samples: papers use 50 000 for FID).
    ``reference`` is the real data FID is measured against (at most ``max_reference`` images).
    """

    def __init__(self, weights: str | os.PathLike[str], reference: Dataset, *, device: str | torch.device = "cpu",
                 batch_size: int = 50, max_reference: int = 10_000) -> None:
        from p2pgan.trainer.inception import load_fid_inception

        self.device = torch.device(device)
        self.model = load_fid_inception(weights).to(self.device)
        self.batch_size = batch_size
        ref = reference.tensor()[:max_reference]
        self.reference = feature_statistics(self._run(ref)[1])

    @torch.no_grad()
    def _run(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(class probabilities [n, 1008], pool features [n, 2048])`` of images in [-1, 1]."""
        from p2pgan.trainer.data import to_uint8_images

        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception evaluation takes images [n, 1 or 3, H, W], got {tuple(images.shape)}")
        probs, feats = [], []
        for chunk in images.split(self.batch_size):
            pixels = torch.from_numpy(to_uint8_images(chunk)).to(self.device, torch.float32)  # as a PNG stores them
            pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
            pool, logits = self.model(pixels)
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
            feats.append(pool.double().cpu())
        return torch.cat(probs).numpy(), torch.cat(feats).numpy()

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        """``{"is": ..., "fid": ...}`` for images ``[n, C, H, W]`` in [-1, 1] (IS in 10 splits when n >= 1000)."""
        probs, feats = self._run(samples)
        return {"is": inception_score(probs, splits=min(10, max(1, len(probs) // 100))),
                "fid": frechet_distance_to(feats, *self.reference)}


# -- 8 Gaussians -----------------------------------------------------------------------------------------

class GaussiansEvaluator:
    """Modes covered and fraction of samples within 3 std of a mode (8 Gaussians, radius 2, std 0.02)."""

    def __init__(
        self, modes: int = 8, radius: float = 2.0, std: float = 0.02, min_per_mode: int = 1, min_fraction: float = 0.0
    ) -> None:
        """A mode counts as covered when it gets at least ``min_per_mode`` high-quality samples and at least
        ``min_fraction`` of all samples (the simulator uses 20 / 2500, the usual threshold in the literature)."""
        self.centres = torch.from_numpy(gaussian_centres(modes, radius)).float()
        self.std = std
        self.min_per_mode = min_per_mode
        self.min_fraction = min_fraction

    def scores(self, samples: torch.Tensor) -> dict[str, float]:
        d = torch.cdist(samples.float().cpu(), self.centres)
        dist, nearest = d.min(dim=1)
        good = dist <= 3 * self.std
        counts = torch.bincount(nearest[good], minlength=len(self.centres))
        need = max(float(self.min_per_mode), self.min_fraction * len(samples))
        return {"modes": float((counts >= need).sum()), "high_quality": float(good.float().mean())}


def make_evaluator(
    kind: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    inception_weights: str | os.PathLike[str] | None = None,
    reference: Dataset | None = None,
    device: str | torch.device = "cpu",
) -> Evaluator:
    """The evaluator for ``kind``: ``digits``, ``gaussians`` or ``inception`` (needs weights and reference)."""
    if kind == "digits":
        return DigitsEvaluator(cache_dir, device=device)
    if kind == "gaussians":
        return GaussiansEvaluator()
    if kind == "inception":
        if inception_weights is None or reference is None:
            raise ConfigError("inception evaluation needs a local weights file and the reference dataset")
        return InceptionEvaluator(inception_weights, reference, device=device)
    raise ConfigError(f"unknown evaluation {kind!r}; allowed: digits, gaussians, inception")
