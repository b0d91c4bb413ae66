"""The GAN game: simultaneous field, layout digest, learning-rate vector, determinism and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pgan.checkpoint import decode_checkpoint, encode_checkpoint
from p2pgan.trainer.data import Dataset, gaussians, load_digits
from p2pgan.trainer.game import GANGame, PeerGames, build_game
from p2pgan.trainer.models import make_models

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def test_field_is_both_players_gradients_at_the_same_point(digits: Dataset) -> None:
    game = build_game("digits", "ns", digits, batch_size=16, seed=3, width=8)
    z = game.point()
    assert z.shape == (1, game.dim) and game.dim == game.dim_u + game.dim_v
    state = game.state_dict()
    f = game.field(z)
    # recompute by hand on the same batch and noise: generator loss gradient w.r.t. u, discriminator's w.r.t. v
    game.load_state_dict(state)
    real = game.sampler.next()
    fake = game.G(torch.randn(16, game.latent_dim, generator=game._noise))
    l_d = game.loss.discriminator(game.D, real, fake.detach())
    gv = torch.autograd.grad(l_d, list(game.D.parameters()))
    l_g = game.loss.generator(game.D, fake)
    gu = torch.autograd.grad(l_g, list(game.G.parameters()))
    expected = torch.cat([t.reshape(-1) for t in gu + gv])
    torch.testing.assert_close(f[0], expected)
    assert game.last is not None and game.last.loss_d == pytest.approx(l_d.item())
    assert game.last.grad_norm == pytest.approx(float(expected.norm()), rel=1e-5)


def test_zero_sum_field_on_a_bilinear_critic() -> None:
    """WGAN with no penalty on points: G(w) = w + u, D(x) = <v, x> gives field [-v, mean(fake) - mean(real)]."""
    g = torch.nn.Linear(2, 2)
    d = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        g.weight.copy_(torch.eye(2))
    from p2pgan.trainer.losses import WGANGPLoss

    data = gaussians(64, seed=1)
    game = GANGame(g, _Flat(d), WGANGPLoss(gp_weight=0.0), data, latent_dim=2, batch_size=64, seed=0)
    z = game.point()
    f = game.field(z)[0]
    v = d.weight.detach()[0]
    # u = [weight (4), bias (2)]; the bias gradient of -mean <v, G(w)> is -v
    torch.testing.assert_close(f[4:6], -v)
    assert f.shape == (game.dim,)


class _Flat(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).view(-1)


def _run(game: GANGame, z: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    fields = []
    for _ in range(steps):
        f = game.field(z)
        fields.append(f)
        z = z - 0.01 * f
    return z, fields


def test_deterministic_and_bit_for_bit_resume(digits: Dataset) -> None:
    digits = digits.subset(np.arange(300))
    a = build_game("digits", "wgan-gp", digits, batch_size=64, seed=5, width=8)
    b = build_game("digits", "wgan-gp", digits, batch_size=64, seed=5, width=8)
    za, fa = _run(a, a.point(), 4)
    zb, fb = _run(b, b.point(), 4)
    assert all(torch.equal(x, y) for x, y in zip(fa, fb))
    # resume: a fresh game given the saved state continues exactly like the uninterrupted one
    # the state goes through a real checkpoint encoding (weights_only load) like the daemon's
    state = decode_checkpoint(encode_checkpoint({"game": a.state_dict()}))["game"]
    _, cont = _run(a, za, 6)  # 4 + 6 batches of 64 > 2 epochs of 300 samples: crosses reshuffles
    c = build_game("digits", "wgan-gp", digits, batch_size=64, seed=5, width=8)
    c.load_state_dict(state)
    _, resumed = _run(c, za, 6)
    assert len(resumed) == 6 and all(torch.equal(x, y) for x, y in zip(cont, resumed))
    assert a.epoch == c.epoch and a.epoch > 2
    other = build_game("digits", "wgan-gp", digits, batch_size=32, seed=6, width=8)
    assert not torch.equal(other.field(a.point()), b.field(a.point()))


def test_digest_lr_vector_sample_and_errors(digits: Dataset) -> None:
    game = build_game("digits", "ns", digits, width=8)
    same = build_game("digits", "ns", digits, width=8, seed=9)
    wider = build_game("digits", "ns", digits, width=16)
    assert game.layout_digest() == same.layout_digest() != wider.layout_digest()
    assert len(game.layout_digest()) == 64
    lr = game.lr_vector(1e-4, 4e-4)
    assert lr.shape == (game.dim,)
    assert torch.all(lr[: game.dim_u] == 1e-4) and torch.all(lr[game.dim_u:] == 4e-4)
    with pytest.raises(ValueError, match="lr_d must be > 0"):
        game.lr_vector(1e-4, 0)
    s1, s2 = game.sample(9, seed=1), game.sample(9, seed=1)
    assert s1.shape == (9, 1, 8, 8) and torch.equal(s1, s2)
    with pytest.raises(ValueError, match=r"one peer: field\(\) takes shape \[1,"):
        game.field(torch.zeros(2, game.dim))
    with pytest.raises(ValueError, match="entries"):
        game.load_point(torch.zeros(1, 3))
    from p2pgan.errors import ConfigError

    with pytest.raises(ConfigError, match="shape"):
        build_game("dcgan32", "ns", digits)


def test_peer_games_stacks_rows(digits: Dataset) -> None:
    shards = [digits.subset(np.arange(i, len(digits), 2)) for i in range(2)]
    games = [build_game("digits", "ns", s, batch_size=8, seed=i, width=8) for i, s in enumerate(shards)]
    twins = [build_game("digits", "ns", s, batch_size=8, seed=i, width=8) for i, s in enumerate(shards)]
    z = torch.cat([games[0].point(), games[0].point() * 0.5])
    f = PeerGames(games).field(z)
    assert f.shape == (2, games[0].dim)
    torch.testing.assert_close(f[1:], twins[1].field(z[1:]))


def test_mlp2d_learns_toward_the_ring() -> None:
    """A few hundred simultaneous steps on 8 Gaussians move generated points out toward radius 2."""
    torch.manual_seed(0)
    data = gaussians(2048, seed=0)
    game = build_game("mlp2d", "ns", data, batch_size=128, seed=0)
    z = game.point()
    r0 = float(game.sample(512, 1).norm(dim=1).mean())
    lr = game.lr_vector(2e-2, 2e-2)
    for _ in range(300):
        z = z - lr * game.field(z)
    game.load_point(z)
    r1 = float(game.sample(512, 1).norm(dim=1).mean())
    assert r0 < 0.5 and 1.2 < r1 < 2.8, (r0, r1)


def test_models_match_make_models_init(digits: Dataset) -> None:
    g, d, _, _ = make_models("digits", seed=0, width=8)
    game = build_game("digits", "ns", digits, init_seed=0, width=8)
    ref = torch.cat([p.detach().reshape(-1) for p in list(g.parameters()) + list(d.parameters())])
    assert torch.equal(game.point()[0], ref)
