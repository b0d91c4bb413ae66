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


class Recorder:
    """Wraps a game and records every point its field is evaluated at (one row per call)."""

    def __init__(self, game: LinearGame) -> None:
        self.game, self.points = game, []
        self.dim_u, self.dim_v = game.dim_u, game.dim_v

    def field(self, z: torch.Tensor) -> torch.Tensor:
        self.points.append(z[0].clone())
        return self.game.field(z)


def _algorithm1_one_peer(game: LinearGame, z0: torch.Tensor, name: str, lr: float, n: int) -> list[torch.Tensor]:
    """Algorithm 1 with M = 1, W = I, written literally with its two sequences; the gradient points.

    Z_0 = X_0; Z_k = X_{k-1} - lr P(g(Z_{k-1})); X_k = X_{k-1} - lr P(g(Z_k)).
    """
    direction = ref_direction(name)
    x = z = z0.clone()
    d = direction(game.field(z[None])[0])  # g(Z_0)
    points = [z.clone()]
    while len(points) < n:
        z = x - lr * d  # line 3
        d = direction(game.field(z[None])[0])
        x = x - lr * d  # line 4
        points.append(z.clone())
    return points


def _zero_start_one_peer(game: LinearGame, z0: torch.Tensor, name: str, lr: float, n: int) -> list[torch.Tensor]:
    """The one-line update z_{k+1} = z_k - 2 lr d_k + lr d_{k-1} from d_{-1} = 0; the gradient points."""
    direction = ref_direction(name)
    z, d_prev, points = z0.clone(), torch.zeros_like(z0), []
    while len(points) < n:
        points.append(z.clone())
        d = direction(game.field(z[None])[0])
        z, d_prev = z - 2 * lr * d + lr * d_prev, d
    return points


@pytest.mark.parametrize("first_step", ["gradient", "zero"])
@pytest.mark.parametrize("name", ["osg", "oadam", "oadagrad"])
@pytest.mark.parametrize("schedule", ["exact", "overlap"])
def test_one_peer_is_algorithm_1_and_the_one_line_optimistic_update(name: str, schedule: str, first_step: str) -> None:
    """M = 1, W = I: every gradient is taken where Algorithm 1 (or the zero start) takes it, to 1e-12."""
    steps, lr = 100, 0.03
    z0 = torch.randn(1, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    reference = _algorithm1_one_peer if first_step == "gradient" else _zero_start_one_peer
    game = Recorder(LinearGame(1))
    algo = DPOSG(z0, IdentityMixer(1), name, lr, schedule=schedule, first_step=first_step)
    for _ in range(steps):
        algo.step(game)
    # the exact schedule's first step takes the extra gradient at X_0 (Algorithm 1, line 3 at k = 1)
    extra = int(schedule == "exact" and first_step == "gradient")
    assert len(game.points) == steps + extra and algo.steps == steps
    want = reference(LinearGame(1), z0[0], name, lr, steps + extra)
    assert torch.allclose(torch.stack(game.points), torch.stack(want), atol=1e-12, rtol=0)
    # the torch.optim flavour: p is where the next gradient is taken
    p = torch.nn.Parameter(z0[0].clone())
    opt = OptimisticOptimizer([p], lr=lr, direction=name, first_step=first_step)
    opt_game, seen = LinearGame(1), []
    for _ in range(steps):
        seen.append(p.detach().clone())
        p.grad = opt_game.field(p.detach()[None])[0]
        opt.step()
    assert torch.allclose(torch.stack(seen), torch.stack(reference(LinearGame(1), z0[0], name, lr, steps)), atol=1e-12)


def test_the_two_first_steps_differ_and_bad_names_are_refused() -> None:
    """The gradient start moves the trajectory (so the tests above can tell the two apart)."""
    z0 = torch.randn(1, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    runs = {}
    for first_step in ("gradient", "zero"):
        algo = DPOSG(z0, IdentityMixer(1), "oadam", 0.03, first_step=first_step)
        for _ in range(5):
            algo.step(LinearGame(1))
        runs[first_step] = algo.x
    assert (runs["gradient"] - runs["zero"]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="first_step 'ones'.*allowed: gradient, zero"):
        DPOSG(z0, IdentityMixer(1), "oadam", 0.03, first_step="ones")
    with pytest.raises(ConfigError, match="allowed: gradient, zero"):
        OptimisticOptimizer([torch.nn.Parameter(torch.zeros(2))], first_step="ones")


def _algorithm_2_points(delta: float, lr: float, steps: int, z0: torch.Tensor, *, literal: bool):
    """Liu et al. ICLR 2020 Algorithm 2 written with explicit matrices, seeded as Algorithm 1 is (g_0 = g(z_0)).

    z_k = x_{k-1} - lr H_{k-1}^{-1} g_{k-1};  x_k = x_{k-1} - lr H_k^{-1} g_k;  g_k = g(z_k);
    H_k = delta I + diag(s_k), s_{k,i} = ||g_{1:k,i}||_2: the accumulator of step k holds g_k itself.
    ``literal``: H_0 = delta I and g_0 stays out of g_{1:k}; else g_0 enters the accumulator too.
    """
    game = LinearGame(1)
    n = z0.numel()
    grads: list[torch.Tensor] = []

    def h_inv() -> torch.Tensor:
        s = torch.stack(grads).pow(2).sum(0).sqrt() if grads else torch.zeros(n, dtype=DT)  # s_k
        return torch.linalg.inv(delta * torch.eye(n, dtype=DT) + torch.diag(s))

    x = z = z0.clone()
    g0 = game.field(z[None])[0]
    if literal:
        step_prev = h_inv() @ g0  # H_0 = delta I
    else:
        grads.append(g0)
        step_prev = h_inv() @ g0  # H_0 = delta I + diag(|g_0|)
    points = [z.clone()]
    for _ in range(steps):
        z = x - lr * step_prev
        grads.append(game.field(z[None])[0])
        step_prev = h_inv() @ grads[-1]  # H_k includes g_k
        x = x - lr * step_prev
        points.append(z.clone())
    return points, x


def test_oadagrad_is_liu_et_al_iclr_2020_algorithm_2_with_the_seeding_gradient_in_the_accumulator() -> None:
    """The default OAdagrad: Algorithm 2, except that the seeding gradient g_0 enters the accumulator
    (H_0 = delta I + diag(|g_0|)); with Algorithm 2's H_0 = delta I the first z step is lr / delta times g_0."""
    delta, lr, steps = 1e-3, 0.05, 60
    z0 = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(4))
    points, x = _algorithm_2_points(delta, lr, steps, z0, literal=False)
    rec = Recorder(LinearGame(1))
    algo = DPOSG(z0[None], IdentityMixer(1), "oadagrad", lr, eps=delta)
    for _ in range(steps):
        algo.step(rec)
    assert torch.allclose(torch.stack(rec.points), torch.stack(points), atol=1e-12, rtol=0)
    assert torch.allclose(algo.x[0], x, atol=1e-12, rtol=0)
    # an accumulator that left out the current gradient (H_{k-1} in line 4) takes other points
    bad = make_direction("oadagrad", eps=delta)
    g = torch.tensor([3.0, -1.0], dtype=DT)
    assert torch.allclose(bad(g), g / (delta + g.abs()), atol=1e-15)
    # and the literal form differs from this one from the first z step on
    literal, _ = _algorithm_2_points(delta, lr, steps, z0, literal=True)
    assert (literal[1] - points[1]).abs().max() > 1.0


def test_oadagrad_literal_first_z_step_is_liu_et_al_iclr_2020_algorithm_2() -> None:
    """``first_z_step="literal"``: Algorithm 2's H_0 = delta I (first z step lr / delta times g_0, g_0 out of
    the accumulator), point for point; delta = 1 keeps that step of the order of the gradient."""
    delta, lr, steps = 1.0, 0.05, 60
    z0 = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(4))
    points, x = _algorithm_2_points(delta, lr, steps, z0, literal=True)
    rec = Recorder(LinearGame(1))
    algo = DPOSG(z0[None], IdentityMixer(1), "oadagrad", lr, eps=delta, first_z_step="literal")
    for _ in range(steps):
        algo.step(rec)
    assert torch.allclose(torch.stack(rec.points), torch.stack(points), atol=1e-12, rtol=0)
    assert torch.allclose(algo.x[0], x, atol=1e-12, rtol=0)
    assert algo.direction.steps == steps  # the seeding gradient was not counted into the accumulator
    with pytest.raises(ConfigError, match="first_z_step 'paper' is not one of accumulator, literal"):
        make_direction("oadagrad", first_z_step="paper")
    with pytest.raises(ConfigError, match="eps must be > 0"):
        make_direction("oadagrad", eps=0.0, first_z_step="literal")


def _reference_dposg(game: LinearGame, x0: torch.Tensor, ws: list[torch.Tensor], lr: float, schedule: str, steps: int):
    """Algorithm 1 written with explicit matrices ``ws[k]`` (t rounds already multiplied) and OAdam per peer.

    First step as in Algorithm 1: the exact schedule seeds d_prev with P(g(X_0)); the overlap one
    takes z_1 = W z_0 - lr d_0.
    """
    dirs = [ref_direction("oadam") for _ in range(x0.shape[0])]
    rows = x0.clone()
    g0 = game.field(rows) if schedule == "exact" else None
    d_prev = torch.stack([dirs[i](g0[i]) for i in range(len(dirs))]) if g0 is not None else None
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
            rows = ws[k] @ rows - 2 * lr * d + lr * (d if k == 0 else d_prev)
        d_prev = d
    return rows


@pytest.mark.parametrize("topology", ["ring", "random-ring", "one-peer-exponential", "torus"])
@pytest.mark.parametrize("schedule", ["exact", "overlap"])
def test_dposg_with_mixing_matches_the_matrix_form_of_algorithm_1(topology: str, schedule: str) -> None:
    m, t, steps, lr = 8, 2, 30, 0.02
    topo = make_topology(topology, m, seed=5, rounds=t)
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    algo = DPOSG(x0, InProcessMixer(topo, t), "oadam", lr, schedule=schedule)
    for _ in range(steps):
        algo.step(game)
    ws = [topo.product(k, t) for k in range(steps)]
    expected = _reference_dposg(LinearGame(m), x0, ws, lr, schedule, steps)
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
    g0 = LinearGame(m).field(x0)  # Algorithm 1's first step: g(Z_0) at Z_0 = X_0, before any averaging
    d_prev = torch.stack([dirs[i](g0[i]) for i in range(m)])
    game.calls += 1
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
    with pytest.raises(ConfigError, match="allowed: dposg, dgda, cp"):
        make_algorithm("adam", x0, IdentityMixer(4))


def test_overlap_is_a_schedule_not_an_algorithm() -> None:
    x0 = torch.zeros(4, 3)
    assert make_algorithm("dposg", x0, IdentityMixer(4), schedule="overlap").schedule == "overlap"
    assert make_algorithm("dposg", x0, IdentityMixer(4)).schedule == "exact"
    with pytest.raises(ConfigError, match="schedule='overlap'"):
        make_algorithm("overlap", x0, IdentityMixer(4))
    with pytest.raises(ConfigError, match="dgda has no schedule"):
        make_algorithm("dgda", x0, IdentityMixer(4), schedule="overlap")


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
    # the overlap schedule takes its gradients where the optimizer does (no extra first gradient)
    algo = DPOSG(z0, IdentityMixer(1), "oadam", lr, schedule="overlap")
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


@pytest.mark.parametrize(("algorithm", "schedule"), [("dposg", "exact"), ("dposg", "overlap"), ("dgda", "exact")])
@pytest.mark.parametrize("topology", ["ring", "random-ring"])
def test_state_dict_resumes_bit_for_bit(algorithm: str, schedule: str, topology: str) -> None:
    m = 6
    game = LinearGame(m)
    x0 = torch.randn(m, 5, dtype=DT)
    topo = make_topology(topology, m, seed=11)
    a = make_algorithm(algorithm, x0, InProcessMixer(topo, 2), "oadam", 0.02, schedule=schedule)
    for _ in range(15):
        a.step(game)
    saved = _roundtrip(a.state_dict())
    for _ in range(10):
        a.step(game)
    b = make_algorithm(algorithm, torch.zeros(m, 5, dtype=DT), InProcessMixer(topo, 2), "oadam", 0.02,
                       schedule=schedule)
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
    opt = OptimisticOptimizer([w], lr=0.1, direction="osg", maximize=True, first_step="zero")
    w.grad = torch.tensor([1.0])  # d f / d w > 0: ascending increases w
    opt.step()
    assert math.isclose(w.item(), 1.0 + 2 * 0.1, rel_tol=1e-6)
    opt.step()  # - 2 lr d_1 + lr d_0 = + 0.1
    assert math.isclose(w.item(), 1.0 + 3 * 0.1, rel_tol=1e-6)
