"""Models: shapes, parameter counts (the paper's ResNet), seeded initialisation, no hidden state."""

from __future__ import annotations

import pytest
import torch

from p2pgan.errors import ConfigError
from p2pgan.trainer.losses import make_loss
from p2pgan.trainer.models import MODEL_NAMES, count_parameters, make_models

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_and_no_buffers(name: str) -> None:
    # sagan128 at its full width is too slow a forward pass on a CPU: a narrow one has the same structure
    g, d, k, shape = make_models(name, seed=0, width=8 if name == "sagan128" else None)
    with torch.no_grad():
        x = g(torch.randn(3, k))
    assert tuple(x.shape) == (3, *shape)
    assert tuple(d(x).shape) == (3,)
    if len(shape) == 3:
        assert float(x.min()) >= -1 and float(x.max()) <= 1
    # the whole state is the parameters, so mixing parameter vectors reproduces the model exactly
    assert list(g.buffers()) == [] and list(d.buffers()) == []


def test_resnet32_is_the_papers_size() -> None:
    g, d, _, shape = make_models("resnet32")
    n = count_parameters(g, d)
    mib = 4 * n / 2**20
    print(f"resnet32: G {count_parameters(g)} + D {count_parameters(d)} = {n} parameters, {mib:.2f} MiB float32")
    assert shape == (3, 32, 32)
    assert 2.1e6 <= n <= 2.35e6
    assert 8.0 <= mib <= 9.0
    # the figures the models.py docstring and the README give: 2,258,308 parameters, 8.61 MiB (9.03 MB)
    assert (count_parameters(g), count_parameters(d)) == (1_204_483, 1_053_825) and round(mib, 2) == 8.61


def test_seeded_init_is_shared_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    g1, d1, _, _ = make_models("digits", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    g2, d2, _, _ = make_models("digits", seed=7)
    g3, _, _, _ = make_models("digits", seed=8)
    p1 = torch.nn.utils.parameters_to_vector(list(g1.parameters()) + list(d1.parameters()))
    p2 = torch.nn.utils.parameters_to_vector(list(g2.parameters()) + list(d2.parameters()))
    assert torch.equal(p1, p2)
    v1, v3 = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (g1, g3))
    assert not torch.equal(v1, v3)


def test_options_and_errors() -> None:
    g, d, k, shape = make_models("dcgan32", channels=1, latent_dim=16, width=8)
    assert k == 16 and shape == (1, 32, 32)
    assert tuple(g(torch.randn(2, 16)).shape) == (2, 1, 32, 32)
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*allowed: mlp2d"):
        make_models("vgg")
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        make_models("digits", channels=2)
    with pytest.raises(ConfigError, match="unknown loss"):
        make_loss("hinge")


def test_wgan_gp_penalty_is_zero_for_unit_slope_critic() -> None:
    """D(x) = <a, x> with |a| = 1 has gradient norm 1 everywhere: penalty 0; with |a| = 2 it is (2-1)^2 = 1."""
    loss = make_loss("wgan-gp")
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    for scale, expected in ((1.0, 0.0), (2.0, 1.0)):
        lin = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[0.6, 0.8]]) * scale)
        d = lambda x, lin=lin: lin(x).view(-1)  # noqa: E731
        gp = loss.gradient_penalty(d, real, fake, torch.Generator().manual_seed(0))
        assert gp.item() == pytest.approx(expected, abs=1e-5)
        l_d = loss.discriminator(d, real, fake, torch.Generator().manual_seed(0))
        assert l_d.item() == pytest.approx((d(fake).mean() - d(real).mean()).item() + 10 * expected, abs=1e-4)


def test_ns_loss_values() -> None:
    loss = make_loss("ns")
    d = lambda x: x.view(-1)  # noqa: E731
    zero = torch.zeros(4, 1)
    assert float(loss.discriminator(d, zero, zero)) == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert float(loss.generator(d, torch.full((4, 1), 50.0))) == pytest.approx(0.0, abs=1e-6)
