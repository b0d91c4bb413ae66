"""Differential privacy per site (p2pgan.privacy): the mechanism, the accountant, the config, private randomness.

Small models (digits at width 8, mlp2d at width 16) keep every test to a few seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from scipy.optimize import brentq
from scipy.stats import norm

from p2pgan.algorithm.dposg import DPOSG
from p2pgan.daemon.config import load_config
from p2pgan.errors import ConfigError
from p2pgan.mixing.inprocess import InProcessMixer
from p2pgan.privacy.accountant import (
    PrivacyAccountant,
    calibrate_noise,
    default_delta,
    pld_epsilon,
    rdp_epsilon,
)
from p2pgan.privacy.game import DPGANGame
from p2pgan.privacy.mechanism import GaussianMechanism, check_per_example, clip_rows, per_example_gradients
from p2pgan.privacy.randomness import site_seed
from p2pgan.topology import make_topology
from p2pgan.trainer.game import PeerGames
from p2pgan.trainer.losses import make_loss
from p2pgan.trainer.models import make_models
from p2pgan.wire.codec import le_bytes


def _digits(width: int = 8) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    g, d, k, _ = make_models("digits", width=width, seed=0)
    return g, d, k


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _loop_gradients(d: torch.nn.Module, real_term, real: torch.Tensor) -> torch.Tensor:
    rows = []
    for x in real:
        loss = real_term(d(x[None])).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(d.parameters()))]))
    return torch.stack(rows)


@pytest.mark.parametrize("loss", ["wgan-gp", "ns"])
def test_vmap_per_example_gradients_equal_a_loop(loss: str) -> None:
    _, d, _ = _digits()
    real = _images(7, 1)
    term = make_loss(loss).real_term
    fast, losses = per_example_gradients(d, term, real)
    slow = _loop_gradients(d, term, real)
    assert fast.shape == slow.shape == (7, sum(p.numel() for p in d.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses, term(d(real)), rtol=1e-5, atol=1e-6)


def test_mlp2d_discriminator_per_example_gradients() -> None:
    _, d, _, _ = make_models("mlp2d", width=16, seed=0)
    real = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    term = make_loss("ns").real_term
    torch.testing.assert_close(per_example_gradients(d, term, real)[0], _loop_gradients(d, term, real),
                               rtol=1e-4, atol=1e-6)


def test_every_clipped_gradient_is_within_c() -> None:
    g = torch.randn(50, 300, generator=torch.Generator().manual_seed(3)) * torch.logspace(-3, 2, 50)[:, None]
    clipped, over = clip_rows(g, 0.5)
    norms = clipped.norm(dim=1)
    assert bool((norms <= 0.5 * (1 + 1e-6)).all())
    small = g.norm(dim=1) <= 0.5
    torch.testing.assert_close(clipped[small], g[small])  # below C: untouched
    assert bool(over.any()) and bool(small.any()) and bool((over == ~small).all())
    # the whole mechanism without noise: its sum has norm at most B * C
    _, d, _ = _digits()
    mech = GaussianMechanism(0.01, 0.0, 1.0)
    out = mech(d, make_loss("wgan-gp").real_term, _images(9, 4))
    assert mech.last is not None and mech.last.batch == 9 and mech.last.clipped == 9
    assert float(out.norm()) <= 9 * 0.01 * (1 + 1e-5)


def test_noise_std_matches_sigma_c_over_qn() -> None:
    _, d, _ = _digits(width=32)
    sigma, clip, expected = 1.7, 0.3, 12.5
    mech = GaussianMechanism(clip, sigma, expected, noise=torch.Generator().manual_seed(5))
    out = mech(d, make_loss("wgan-gp").real_term, _images(0, 0))  # an empty Poisson batch: noise only
    want = sigma * clip / expected
    assert out.numel() > 10_000
    assert abs(float(out.std()) / want - 1) < 0.03
    assert abs(float(out.mean())) < 4 * want / math.sqrt(out.numel())
    # the default generator is seeded from the OS: two mechanisms never draw the same noise
    a, b = (GaussianMechanism(clip, sigma, expected)(d, make_loss("ns").real_term, _images(0, 0)) for _ in range(2))
    assert not torch.equal(a, b)


def _dp_game(data: torch.Tensor, *, sigma: float, noise_seed: int | None, seed: int = 11) -> DPGANGame:
    g, d, k = _digits()
    noise = torch.Generator().manual_seed(noise_seed) if noise_seed is not None else None
    return DPGANGame(g, d, "wgan-gp", data, latent_dim=k, batch_size=16, seed=seed, clip=1.0,
                     noise_multiplier=sigma, delta=1e-5, noise=noise)


def test_zero_noise_makes_the_step_deterministic() -> None:
    data = _images(64, 6)
    a = _dp_game(data, sigma=0.0, noise_seed=None)  # each with its own OS-seeded noise generator
    b = _dp_game(data, sigma=0.0, noise_seed=None)
    z = a.point()
    assert torch.equal(a.field(z), b.field(z))
    c, e = _dp_game(data, sigma=1.0, noise_seed=None), _dp_game(data, sigma=1.0, noise_seed=None)
    assert not torch.equal(c.field(z), e.field(z))


def test_poisson_sampling_draws_a_variable_batch_of_expected_size_qn() -> None:
    game = _dp_game(_images(200, 7), sigma=1.0, noise_seed=1)
    assert game.q == pytest.approx(16 / 200)
    sizes = []
    for _ in range(40):
        game.sampler.next()
        sizes.append(game.sampler.last_size)
    assert len(set(sizes)) > 3
    assert abs(sum(sizes) / len(sizes) - 16) < 3


def test_batch_statistics_are_refused_naming_the_layer() -> None:
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    with pytest.raises(ConfigError, match=r"layer '2' \(BatchNorm1d\)"):
        check_per_example(d)
    check_per_example(_digits()[1])  # the bundled discriminators pass
    check_per_example(make_models("mlp2d", seed=0)[1])


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism with sensitivity 1 (Balle and Wang 2018, Theorem 8)."""
    def gap(eps: float) -> float:
        return norm.cdf(-eps * sigma + 0.5 / sigma) - math.exp(eps) * norm.cdf(-eps * sigma - 0.5 / sigma) - delta
    return brentq(gap, 0.0, 100.0)


def test_accountant_against_the_exact_gaussian_mechanism() -> None:
    # q = 1 and k steps of sigma compose to one Gaussian mechanism with sigma / sqrt(k)
    for sigma, k in ((1.0, 1), (2.0, 4), (5.0, 25)):
        exact = _gaussian_epsilon(sigma / math.sqrt(k), 1e-5)
        pld = pld_epsilon(1.0, sigma, k, 1e-5)
        assert exact <= pld <= exact * 1.01 + 2e-3, (sigma, k, pld, exact)
        assert rdp_epsilon(1.0, sigma, k, 1e-5) >= pld  # RDP: a looser upper bound
    # a figure of the DP-SGD literature: q = 0.01, sigma = 1.1, 10 000 steps, delta 1e-5: PLD about 5.2
    assert pld_epsilon(0.01, 1.1, 10_000, 1e-5) == pytest.approx(5.2, abs=0.1)


def test_accountant_is_monotone_in_steps_rate_and_noise() -> None:
    base = pld_epsilon(0.05, 1.0, 100, 1e-5)
    assert pld_epsilon(0.05, 1.0, 200, 1e-5) > base
    assert pld_epsilon(0.1, 1.0, 100, 1e-5) > base
    assert pld_epsilon(0.05, 2.0, 100, 1e-5) < base
    sigma = calibrate_noise(1.0, 1e-5, 0.05, 100)
    assert pld_epsilon(0.05, sigma, 100, 1e-5) <= 1.0 < pld_epsilon(0.05, sigma * 0.99, 100, 1e-5)


def test_accountant_state_resumes_and_never_restarts_the_budget() -> None:
    acc = PrivacyAccountant(0.1, 1.0, 1e-5, target_epsilon=3.0)
    acc.compose(10)
    before = acc.epsilon()
    again = PrivacyAccountant(0.1, 1.0, 1e-5, target_epsilon=3.0)
    again.load_state_dict(acc.state_dict())
    assert again.steps == 10 and again.epsilon() == before
    changed = PrivacyAccountant(0.1, 2.0, 1e-5, target_epsilon=3.0)  # new settings: a new segment, same past
    changed.load_state_dict(acc.state_dict())
    changed.compose(5)
    assert changed.steps == 15 and changed.epsilon() > before
    # the budget: stops exactly where one more mechanism would cross the target
    limit = PrivacyAccountant(0.1, 1.0, 1e-5, target_epsilon=before)
    limit.compose(9)
    assert not limit.exhausted(1)
    limit.compose(1)
    assert limit.exhausted(1) and limit.epsilon() <= before


def test_default_delta_is_below_one_over_ten_n() -> None:
    assert default_delta(450) == 1e-5  # 1/(10 n) = 2.2e-4 -> 1e-4, capped at 1e-5
    assert default_delta(10_000) == pytest.approx(1e-6)  # 1/(10 n) = 1e-5 exactly: strictly below
    assert default_delta(10 ** 6) == pytest.approx(1e-8)
    for n in (1, 7, 1797, 123_456):
        assert default_delta(n) < 1 / (10 * n)


def _write(tmp_path: Path, privacy: dict | None, train: dict | None = None) -> Path:
    doc = {
        "peer": {"id": "alice", "federation": "demo"},
        "security": {"insecure": True},
        "discovery": {"zeroconf_peers": 1, "zeroconf_members": ["alice"]},
        "train": {"model": "mlp2d", "steps": 10, **(train or {})},
        "data": {"format": "gaussians"},
    }
    if privacy is not None:
        doc["privacy"] = privacy
    path = tmp_path / "alice.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("privacy", "message"), [
    ({"mode": "dp"}, "privacy.target_epsilon: `mode: dp` needs"),
    ({"mode": "dpp"}, "privacy.mode"),
    ({"mode": "dp", "target_epsilon": 0}, "privacy.target_epsilon: must be > 0"),
    ({"mode": "dp", "target_epsilon": 1, "delta": 1.5}, "privacy.delta: must be in (0, 1)"),
    ({"mode": "dp", "target_epsilon": 1, "clip": -1}, "privacy.clip: must be > 0"),
    ({"mode": "dp", "target_epsilon": 1, "unit": "patient"}, "privacy.unit"),
    ({"target_epsilon": 1}, "privacy.target_epsilon: has no effect with `mode: off`"),
    ({"mode": "dp", "target_epsilon": 1, "noise": 1}, "privacy.noise"),
])
def test_privacy_section_errors_name_the_field(tmp_path: Path, privacy: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, privacy))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_privacy_section_defaults_and_seed(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, None))
    assert cfg.privacy.mode == "off" and not cfg.privacy.enabled and cfg.train.seed is None
    assert load_config(_write(tmp_path, {"mode": False}), ["privacy.mode=off"]).privacy.mode == "off"  # YAML's off
    cfg = load_config(_write(tmp_path, {"mode": "dp", "target_epsilon": 2}), ["privacy.clip=0.5"])
    assert (cfg.privacy.target_epsilon, cfg.privacy.clip, cfg.privacy.delta) == (2.0, 0.5, None)
    both = load_config(_write(tmp_path, {"mode": "dp", "target_epsilon": 2, "noise_multiplier": 1.0}))
    assert (both.privacy.noise_multiplier, both.privacy.target_epsilon) == (1.0, 2.0)  # sigma given, eps the budget


def test_site_seed_is_secret_unless_configured_and_kept_by_the_checkpoint() -> None:
    drawn = {site_seed(None, None)[0] for _ in range(8)}
    assert len(drawn) == 8  # from the OS: never the same twice (2^31 values)
    assert site_seed(None, None)[1] == "os"
    assert site_seed(None, {"secret_seed": 42}) == (42, "checkpoint")
    assert site_seed(7, {"secret_seed": 42}) == (7, "config")


class _Recording(InProcessMixer):
    """The in-process mixer, keeping the bytes each hosted peer's row would put on the wire (its codec form)."""

    def __init__(self, size: int) -> None:
        super().__init__(make_topology("complete", size), 1)
        self.sent: list[bytes] = []

    def start(self, x: torch.Tensor, step: int):  # type: ignore[no-untyped-def]
        self.sent.append(bytes(le_bytes(x[0].contiguous())))
        return super().start(x, step)


def _world(swap_after: int | None, victim: torch.Tensor, other: torch.Tensor, steps: int) -> tuple[list[bytes], dict]:
    """A DP victim (row 0) and a neighbour over the in-process mixer; the victim's private data are swapped
    for ``other`` right after its ``swap_after``-th noisy gradient. Returns its sent rows and state."""
    a = _dp_game(victim, sigma=1.0, noise_seed=21, seed=3)
    b = _dp_game(_images(64, 99), sigma=1.0, noise_seed=22, seed=4)
    calls = {"n": 0}
    field = a.field

    def victim_field(z: torch.Tensor) -> torch.Tensor:
        g = field(z)
        calls["n"] += 1
        if calls["n"] == swap_after:
            a.sampler.data = other  # the site's private data replaced, after the noisy gradient is taken
        return g

    a.field = victim_field  # type: ignore[method-assign]
    mixer = _Recording(2)
    games = PeerGames([a, b])
    algo = DPOSG(torch.cat([a.point(), b.point()]), mixer, "oadam", games.lr_vector(1e-3, 1e-3),
                 schedule="overlap")
    for _ in range(steps):
        algo.step(games)
    sent = mixer.sent + [bytes(le_bytes(algo.z[0].contiguous()))]  # the next message, due before the next gradient
    state = {k: v[0].clone() if isinstance(v, torch.Tensor) and v.dim() == 2 else v
             for k, v in algo.state_dict().items() if k != "direction"}
    state.update({f"direction.{k}": v[0].clone() for k, v in algo.state_dict()["direction"].items()
                  if isinstance(v, torch.Tensor)})
    return sent, state


def test_bytes_sent_depend_on_private_data_only_through_the_noisy_gradient() -> None:
    data_a, data_b = _images(64, 31), -_images(64, 32)
    kept, kept_state = _world(None, data_a, data_b, 3)
    swapped, swapped_state = _world(3, data_a, data_b, 3)
    # every byte the victim sent, and everything FetchState could hand out (rows, direction, moments), is the
    # same whether or not its private data changed after its last noisy gradient
    assert kept == swapped and len(kept) == 4
    assert kept_state.keys() == swapped_state.keys()
    for key, value in kept_state.items():
        assert torch.equal(value, swapped_state[key]) if isinstance(value, torch.Tensor) else value == swapped_state[key]
    # and the test can fail: data swapped one gradient earlier change what is sent next
    early, _ = _world(2, data_a, data_b, 3)
    assert early[:3] == kept[:3] and early[3] != kept[3]


@pytest.mark.parametrize(("schedule", "mechanisms"), [("overlap", 3), ("exact", 4)])
def test_one_mechanism_per_step_the_optimistic_reuse_takes_the_noisy_direction(schedule: str, mechanisms: int) -> None:
    # the stored noisy direction is reused: 3 steps run 3 mechanisms (exact: + Algorithm 1's first gradient,
    # which the daemon's plan counts), never a second noiseless evaluation
    game = _dp_game(_images(64, 8), sigma=1.0, noise_seed=3)
    algo = DPOSG(game.point(), InProcessMixer(make_topology("complete", 1), 0), "oadam",
                 game.lr_vector(1e-3, 1e-3), schedule=schedule)
    for _ in range(3):
        algo.step(game)
    assert game.accountant.steps == mechanisms
