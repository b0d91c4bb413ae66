"""Evaluation: the digits classifier's IS / FID separate real digits from noise; FID / IS formulas; caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from p2pgan.errors import ConfigError
from p2pgan.trainer import evaluation as ev

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def digits_eval(tmp_path_factory: pytest.TempPathFactory) -> ev.DigitsEvaluator:
    return ev.DigitsEvaluator(tmp_path_factory.mktemp("cache"))


def test_real_digits_score_high_and_noise_low(digits_eval: ev.DigitsEvaluator) -> None:
    assert digits_eval.accuracy > 0.93
    real = digits_eval.scores(digits_eval.held_out.tensor())
    noise = digits_eval.scores(torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    ones = digits_eval.held_out.tensor()[torch.from_numpy(digits_eval.held_out.y == 1)]
    collapsed = digits_eval.scores(ones)  # a single mode: real-looking but no diversity
    print(f"digits IS/FID: held-out real {real}, uniform noise {noise}, only ones {collapsed}")
    assert real["is"] > 8.0 and noise["is"] < 4.0 and collapsed["is"] < 1.5
    assert real["fid"] < 0.05 * noise["fid"] and real["fid"] < 0.05 * collapsed["fid"]
    with pytest.raises(ValueError, match=r"images \[n >= 2, 1, 8, 8\]"):
        digits_eval.scores(torch.zeros(4, 3, 8, 8))


def test_classifier_is_cached_and_a_damaged_cache_is_replaced(digits_eval: ev.DigitsEvaluator,
                                                             tmp_path: Path) -> None:
    path = digits_eval.cache_path
    assert path.is_file() and path.parent.name.startswith("cache")
    again = ev.DigitsEvaluator(path.parent)  # loads: same weights
    for a, b in zip(digits_eval.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    # a corrupt cache (e.g. a crash of another peer) is not trusted: retrained, with the same seeded result
    path.write_bytes(path.read_bytes()[:-50])
    fresh = ev.DigitsEvaluator(path.parent)
    assert fresh.accuracy == pytest.approx(digits_eval.accuracy, abs=0.02)
    assert "model" in ev.load_checkpoint(path)  # the replacement verifies


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ev.CACHE_ENV, str(tmp_path / "c"))
    assert ev.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(ev.CACHE_ENV)
    assert ev.default_cache_dir() == Path.home() / ".cache" / "p2pgan"


def test_frechet_distance_and_inception_score_formulas() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    s1 = a @ a.T + np.eye(5)
    assert ev.frechet_distance(np.zeros(5), s1, np.zeros(5), s1) == pytest.approx(0, abs=1e-8)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    assert ev.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) \
        == pytest.approx(4 + 1)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    d = ev.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([9.0, 16.0]))
    assert d == pytest.approx(2 + 4 + 4)
    assert ev.inception_score(np.eye(10)) == pytest.approx(10)  # confident and uniform over 10 classes
    assert ev.inception_score(np.full((7, 10), 0.1)) == pytest.approx(1)
    assert ev.inception_score(np.tile(np.eye(4), (10, 1)), splits=5) == pytest.approx(4)


def test_consensus_distance() -> None:
    own = torch.tensor([1.0, 1.0])
    nb = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert ev.consensus_distance(own, nb) == pytest.approx(1.0)
    assert ev.consensus_distance(own, [nb[0], nb[1]], weights=[1, 3]) == pytest.approx((0.25 + 1) ** 0.5)
    assert ev.consensus_distance(own, torch.zeros(0, 2)) == 0.0
    with pytest.raises(ValueError, match="2 weights"):
        ev.consensus_distance(own, nb, weights=[1.0])


def test_gaussians_evaluator() -> None:
    e = ev.GaussiansEvaluator()
    centres = torch.from_numpy(ev.gaussian_centres()).float()
    on_modes = centres.repeat(10, 1) + 0.01
    assert e.scores(on_modes) == {"modes": 8.0, "high_quality": 1.0}
    half = torch.cat([centres[:2].repeat(5, 1), torch.zeros(10, 2)])
    assert e.scores(half) == {"modes": 2.0, "high_quality": 0.5}


def test_inception_needs_torchvision_and_a_local_file(tmp_path: Path) -> None:
    ref = ev.load_digits()
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match=r"need torchvision \(pip install 'p2pgan\[vision\]'\)"):
            ev.InceptionEvaluator(tmp_path / "missing.pt", ref)
    else:
        with pytest.raises(ConfigError, match="missing.pt: Inception weights file does not exist"):
            ev.InceptionEvaluator(tmp_path / "missing.pt", ref)
    with pytest.raises(ConfigError, match="needs a local weights file"):
        ev.make_evaluator("inception")
    with pytest.raises(ConfigError, match="unknown evaluation"):
        ev.make_evaluator("lpips")
