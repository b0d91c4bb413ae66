"""Evaluation: the digits classifier's IS / FID separate real digits from noise; FID / IS formulas; caching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pgan.errors import ConfigError
from p2pgan.trainer import evaluation as ev

# the module's first test trains the digits classifier (seconds when quiet; 116 s seen on a loaded 2-core machine)
pytestmark = pytest.mark.timeout(400)


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


#: a few tensors of the published FID weights file (pt_inception-2015-12-05-6726825d.pth) and their shapes
FID_WEIGHTS_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3), "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048), "fc.bias": (1008,),
}


def _random_fid_weights(path: Path) -> None:
    """A weights file in the format of the FID libraries' file, with random (well-scaled) values."""
    from p2pgan.trainer.inception import FIDInceptionV3

    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, t in FIDInceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # the published file has none
        if key.endswith("conv.weight"):
            v = torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5
        elif key.endswith("running_var"):
            v = torch.rand(t.shape, generator=gen) + 0.5
        elif key.endswith("bn.weight"):
            v = 1 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            v = 0.05 * torch.randn(t.shape, generator=gen)
        state[key] = v
    torch.save(state, path)


def test_frechet_distance_to_features_equals_the_formula_with_few_samples() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))
    mu_ref, sigma_ref = ev.feature_statistics(ref)
    for n in (10, 39, 100):  # fewer samples than dimensions (the low-rank path) and more
        feats = rng.normal(loc=0.3, size=(n, 40))
        want = ev.frechet_distance(*ev.feature_statistics(feats), mu_ref, sigma_ref)
        assert ev.frechet_distance_to(feats, mu_ref, sigma_ref) == pytest.approx(want, rel=1e-8)


def test_tensorflow1_bilinear_resize_has_no_half_pixel_offset() -> None:
    from p2pgan.trainer.inception import resize_like_tensorflow1

    x = torch.tensor([[[[0.0, 8.0], [16.0, 24.0]]]])
    got = resize_like_tensorflow1(x, 4)
    # source coordinate = output coordinate * 2 / 4: 0, 0.5, 1, 1.5 (clamped to the last pixel)
    expected_row = torch.tensor([0.0, 4.0, 8.0, 8.0])
    torch.testing.assert_close(got[0, 0, 0], expected_row)
    torch.testing.assert_close(got[0, 0, :, 0], torch.tensor([0.0, 8.0, 16.0, 16.0]))
    assert not torch.allclose(got, torch.nn.functional.interpolate(x, size=4, mode="bilinear", align_corners=False))


@pytest.mark.timeout(180)
def test_standard_inception_scores_with_a_local_weights_file(tmp_path: Path) -> None:
    from p2pgan.trainer.inception import FIDInceptionV3

    shapes = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    for key, shape in FID_WEIGHTS_SHAPES.items():  # the published file's keys load into this network
        assert shapes[key] == shape, key
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    _random_fid_weights(weights)
    digits = ev.load_digits()
    real = digits.subset(np.arange(6))  # few images: each is resized to 299 x 299 (CPU time)
    evaluator = ev.InceptionEvaluator(weights, real, max_reference=6, batch_size=6)
    same = evaluator.scores(real.tensor())
    assert abs(same["fid"]) < 1e-3 * max(1.0, float(np.trace(evaluator.reference[1])))  # real vs itself
    noise = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    other = evaluator.scores(noise)
    assert other["fid"] > 100 * max(abs(same["fid"]), 1e-6)
    assert 1.0 <= other["is"] <= 1008 and math.isfinite(other["is"])


def test_inception_weights_must_be_a_local_file_of_the_right_format(tmp_path: Path) -> None:
    ref = ev.load_digits()
    with pytest.raises(ConfigError, match="missing.pth: Inception weights file does not exist"):
        ev.InceptionEvaluator(tmp_path / "missing.pth", ref)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match=r"wrong.pth: not the FID Inception weights \(pt_inception-2015-12-05"):
        ev.InceptionEvaluator(wrong, ref)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": Path("x")}, pickled)  # an arbitrary object: refused by weights_only loading
    with pytest.raises(ConfigError, match="pickled.pth: cannot read Inception weights"):
        ev.InceptionEvaluator(pickled, ref)


def test_make_evaluator_names() -> None:
    with pytest.raises(ConfigError, match="needs a local weights file"):
        ev.make_evaluator("inception")
    with pytest.raises(ConfigError, match="unknown evaluation"):
        ev.make_evaluator("lpips")
