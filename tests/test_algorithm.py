"""DPOSG, its directions and the optimistic optimizer against independent reference implementations."""

from __future__ import annotations

import io
import math

import pytest
import torch

from p2pgan.algorithm import (
    DGDA,
    DPOSG,
    MinMaxGame,
    OAdam,
    OptimisticOptimizer,
    lr_vector,
    make_algorithm,
    make_direction,
)
from p2pgan.errors import CheckpointError, ConfigError, P2PGANError
from p2pgan.mixing import IdentityMixer, InProcessMixer
from p2pgan.topology import make_topology

pytestmark = pytest.mark.timeout(60)

DT = torch.float64


class LinearGame:
    """Row i plays ``g_i(z) = A_i z + b_i`` (a bilinear game plus a small quadratic part)."""

    def __init__(self, rows: int, dim_u: int = 3, dim_v: int = 2, seed: int = 0, hetero: float = 0.3) -> None:
        gen = torch.Generator().manual_seed(seed)
        d = dim_u + dim_v
        self.dim_u, self.dim_v = dim_u, dim_v
        b = torch.randn(d, d, generator=gen, dtype=DT)
        skew = b - b.T  # rotation: the hard part of a min-max game
        self.a = skew + 0.05 * torch.eye(d, dtype=DT) + hetero * torch.randn(rows, d, d, generator=gen, dtype=DT)
        self.b = torch.randn(rows, d, generator=gen, dtype=DT)
        self.calls = 0

    def field(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.einsum("nij,nj->ni", self.a, z) + self.b


# -- reference formulas written out by hand (not using the library's direction classes) ---------------
def ref_direction(name: str):
    state: dict[str, object] = {"k": 0}

    def oadam(g: torch.Tensor, b1: float = 0.5, b2: float = 0.9, eps: float = 1e-8) -> torch.Tensor:
        k = state["k"] = int(state["k"]) + 1
        m = state["m"] = b1 * state.get("m", torch.zeros_like(g)) + (1 - b1) * g
        v = state["v"] = b2 * state.get("v", torch.zeros_like(g)) + (1 - b2) * g * g
        return (m / (1 - b1**k)) / (torch.sqrt(v / (1 - b2**k)) + eps)

    def oadagrad(g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        s = state["s"] = state.get("s", torch.zeros_like(g)) + g * g
        return g / (eps + torch.sqrt(s))

    return {"osg": lambda g: g, "oadam": oadam, "oadagrad": oadagrad}[name]


@pytest.mark.parametrize("name", ["osg", "oadam", "oadagrad"])
@pytest.mark.parametrize("schedule", ["exact", "overlap"])
def test_one_peer_is_the_one_line_optimistic_update(name: str, schedule: str) -> None:
    game = LinearGame(1)
    z0 = torch.randn(1, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    lr = 0.03
    algo = DPOSG(z0, IdentityMixer(1), name, lr, schedule=schedule)
    # reference: z_{k+1} = z_k - 2 lr d_k + lr d_{k-1}
    direction = ref_direction(name)
    z, d_prev = z0[0].clone(), torch.zeros(5, dtype=DT)
    # the torch.optim flavour
    p = torch.nn.Parameter(z0[0].clone())
    opt = OptimisticOptimizer([p], lr=lr, direction=name)
    for _ in range(100):
        assert torch.allclose(algo.z[0], z, atol=1e-6, rtol=0)
        assert torch.allclose(p.detach(), z, atol=1e-6, rtol=0)
        d = direction(game.field(z[None])[0])
        z, d_prev = z - 2 * lr * d + lr * d_prev, d
        algo.step(game)
        p.grad = game.field(p.detach()[None])[0]
        opt.step()
    assert torch.allclose(algo.z[0], z, atol=1e-6, rtol=0)
    assert algo.steps == 100
    assert game.calls == 300  # exactly one gradient per iteration for each of the three runs


def _reference_dposg(game: LinearGame, x0: torch.Tensor, ws: list[torch.Tensor], lr: float, schedule: str, steps: int):
    """Algorithm 1 written with explicit matrices ``ws[k]`` (t rounds already multiplied) and OAdam per peer."""
    dirs = [ref_direction("oadam") for _ in range(x0.shape[0])]
    rows = x0.clone()
    d_prev = torch.zeros_like(x0)
    for k in range(steps):
        if schedule == "exact":
            xbar = ws[k] @ rows
            z = xbar - lr * d_prev
            g = game.field(z)
            d = torch.stack([dirs[i](g[i]) for i in range(len(dirs))])
            rows = xbar - lr * d
        else:
            g = game.field(rows)
            d = torch.stack([dirs[i](g[i]) for i in range(len(dirs))])
            rows = ws[k] @ rows - 2 * lr * d + lr * d_prev
        d_prev = d
    return rows


@pytest.mark.parametrize("topology", ["ring", "random-ring", "one-peer-exponential", "torus"])
@pytest.mark.parametrize("schedule", ["exact", "overlap"])
def test_dposg_with_mixing_matches_the_matrix_form_of_algorithm_1(topology: str, schedule: str) -> None:
    m, t, steps, lr = 8, 2, 30, 0.02
    topo = make_topology(topology, m, seed=5)
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    algo = DPOSG(x0, InProcessMixer(topo, t), "oadam", lr, schedule=schedule)
    for _ in range(steps):
        algo.step(game)
    ws = [topo.product(k, t) for k in range(steps)]
    expected = _reference_dposg(game, x0, ws, lr, schedule, steps)
    got = algo.x if schedule == "exact" else algo.z
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)


def test_complete_graph_is_the_centralized_parallel_average() -> None:
    """W = J, t = 1: every iteration starts from the exact average of the peers (CP-OAdam)."""
    m, lr = 6, 0.05
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT, generator=torch.Generator().manual_seed(3))
    mixer = InProcessMixer(make_topology("complete", m), 1)
    algo = make_algorithm("cp", x0, mixer, "oadam", lr)
    # centralized reference: a server holds x, each worker i computes at x - lr d_prev_i
    dirs = [ref_direction("oadam") for _ in range(m)]
    x = x0.mean(0)
    d_prev = torch.zeros_like(x0)
    for _ in range(50):
        z = x - lr * d_prev
        g = game.field(z)
        d = torch.stack([dirs[i](g[i]) for i in range(m)])
        x = x - lr * d.mean(0)
        d_prev = d
        algo.step(game)
        assert torch.allclose(algo.x.mean(0), x, atol=1e-6, rtol=0)
        # where the next gradients will be taken: the average minus each peer's own last direction
        assert torch.allclose(mixer.mix(algo.x, 0) - lr * algo.d_prev, x - lr * d_prev, atol=1e-6, rtol=0)


def test_cp_refuses_a_mixer_that_is_not_the_complete_graph() -> None:
    x0 = torch.zeros(4, 3)
    with pytest.raises(ConfigError, match="complete topology with 1 round"):
        make_algorithm("cp", x0, InProcessMixer(make_topology("ring", 4), 1))
    with pytest.raises(ConfigError, match="allowed: dposg, overlap, dgda, cp"):
        make_algorithm("adam", x0, IdentityMixer(4))


def test_dgda_is_mix_minus_lr_gradient() -> None:
    m, lr = 5, 0.1
    topo = make_topology("ring", m)
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT)
    algo = DGDA(x0, InProcessMixer(topo, 1), "osg", lr)
    x = x0.clone()
    for _ in range(10):
        x = topo.matrix() @ x - lr * game.field(x)
        algo.step(game)
    assert torch.allclose(algo.x, x, atol=1e-10, rtol=0)
    assert algo.z is algo.x


def test_separate_learning_rates_for_u_and_v() -> None:
    game = LinearGame(1, dim_u=3, dim_v=2)
    z0 = torch.randn(1, 5, dtype=DT)
    lr = lr_vector(3, 2, 0.01, 0.04, dtype=DT)
    assert lr.tolist() == [0.01] * 3 + [0.04] * 2
    algo = DPOSG(z0, IdentityMixer(1), "oadam", lr)
    u = torch.nn.Parameter(z0[0, :3].clone())
    v = torch.nn.Parameter(z0[0, 3:].clone())
    opt = OptimisticOptimizer([{"params": [u], "lr": 0.01}, {"params": [v], "lr": 0.04}], direction="oadam")
    for _ in range(40):
        algo.step(game)
        g = game.field(torch.cat((u, v)).detach()[None])[0]
        u.grad, v.grad = g[:3].clone(), g[3:].clone()
        opt.step()
    assert torch.allclose(algo.z[0], torch.cat((u, v)).detach(), atol=1e-6)


def test_directions_work_elementwise_on_any_shape() -> None:
    g = torch.randn(3, 4, 5, dtype=DT)
    for name in ("osg", "oadam", "oadagrad"):
        direction, ref = make_direction(name), ref_direction(name)
        for scale in (1.0, -2.0, 0.5):
            assert torch.allclose(direction(scale * g), ref(scale * g), atol=1e-12)
        assert direction.steps == 3
    assert isinstance(make_direction("oadam", betas=(0.0, 0.99)), OAdam)


@pytest.mark.parametrize(
    ("name", "kwargs", "shown"),
    [
        ("oadam", {"betas": (1.0, 0.9)}, "1.0"),
        ("oadam", {"betas": (0.5, -0.1)}, "-0.1"),
        ("oadam", {"eps": -1e-3}, "-0.001"),
        ("oadagrad", {"eps": float("nan")}, "nan"),
        ("adam", {}, "'adam'"),
        ("osg", {"betas": (0.5, 0.9)}, "betas"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_value(name: str, kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        make_direction(name, **kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize("lr", [0.0, -1.0, float("inf")])
def test_bad_learning_rates_are_refused(lr: float) -> None:
    with pytest.raises(ValueError, match="lr"):
        DPOSG(torch.zeros(1, 2), IdentityMixer(1), "osg", lr)
    with pytest.raises(ValueError):
        OptimisticOptimizer([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_field_of_the_wrong_shape_is_a_clear_error() -> None:
    algo = DPOSG(torch.zeros(2, 3), IdentityMixer(2), "osg", 0.1)
    with pytest.raises(P2PGANError, match="one gradient row per row"):
        algo.step(lambda z: z[:, :2])
    with pytest.raises(ConfigError, match="mixer hosts 1 peers"):
        DPOSG(torch.zeros(2, 3), IdentityMixer(1), "osg", 0.1)


def test_minmax_game_protocol() -> None:
    assert isinstance(LinearGame(1), MinMaxGame)


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("algorithm", ["dposg", "overlap", "dgda"])
@pytest.mark.parametrize("topology", ["ring", "random-ring"])
def test_state_dict_resumes_bit_for_bit(algorithm: str, topology: str) -> None:
    m = 6
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT)
    topo = make_topology(topology, m, seed=11)
    a = make_algorithm(algorithm, x0, InProcessMixer(topo, 2), "oadam", 0.02)
    for _ in range(15):
        a.step(game)
    saved = _roundtrip(a.state_dict())
    for _ in range(10):
        a.step(game)
    b = make_algorithm(algorithm, torch.zeros(m, 5, dtype=DT), InProcessMixer(topo, 2), "oadam", 0.02)
    b.load_state_dict(saved)
    assert b.steps == 15
    for _ in range(10):
        b.step(game)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.d_prev, b.d_prev)
    assert a.steps == b.steps == 25


def test_state_dict_of_another_run_is_refused() -> None:
    a = DPOSG(torch.zeros(4, 3), IdentityMixer(4), "oadam", 0.1)
    b = DPOSG(torch.zeros(4, 5), IdentityMixer(4), "oadam", 0.1)
    with pytest.raises(CheckpointError, match="shape"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError, match="lacks"):
        b.load_state_dict({"x": torch.zeros(4, 5)})


def test_optimizer_state_dict_resumes_bit_for_bit() -> None:
    def make() -> tuple[torch.nn.Module, OptimisticOptimizer]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        groups = [{"params": net[0].parameters(), "lr": 0.01}, {"params": net[2].parameters(), "lr": 0.05}]
        return net, OptimisticOptimizer(groups, direction="oadam")

    data = torch.randn(16, 3, generator=torch.Generator().manual_seed(5))

    def train(net: torch.nn.Module, opt: OptimisticOptimizer, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            net(data).pow(2).mean().backward()
            opt.step()

    net_a, opt_a = make()
    train(net_a, opt_a, 5)
    saved = _roundtrip({"model": net_a.state_dict(), "opt": opt_a.state_dict()})
    train(net_a, opt_a, 5)
    net_b, opt_b = make()
    net_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    train(net_b, opt_b, 5)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)


def test_maximize_group_ascends() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = OptimisticOptimizer([w], lr=0.1, direction="osg", maximize=True)
    w.grad = torch.tensor([1.0])  # d f / d w > 0: ascending increases w
    opt.step()
    assert math.isclose(w.item(), 1.0 + 2 * 0.1, rel_tol=1e-6)
