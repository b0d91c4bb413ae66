"""Topologies and the in-process mixer: the identities of DESIGN section 1, checked numerically."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2pgan.errors import TopologyError
from p2pgan.mixing import IdentityMixer, InProcessMixer
from p2pgan.topology import (
    TOPOLOGY_NAMES,
    Custom,
    Exponential,
    OnePeerExponential,
    RandomRing,
    Ring,
    make_topology,
    rounds_for_consensus,
    theorem1_rounds,
    validate_mixing_matrix,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("m", [4, 5, 8, 16, 33])  # M = 3 is exactly J (rho 0)
def test_ring_rho_formula(m: int) -> None:
    expected = max(1 / 3 + 2 / 3 * math.cos(2 * math.pi / m), 1 / 3)
    assert Ring(m).rho() == pytest.approx(expected, abs=1e-12)


def test_ring_rho_for_16_peers_is_the_papers_value() -> None:
    assert round(Ring(16).rho(), 4) == 0.9493


@pytest.mark.parametrize("m", [2, 4, 8, 16, 32, 64])
def test_exponential_rho_formula(m: int) -> None:
    assert Exponential(m).rho() == pytest.approx(1 - 2 / (1 + math.log2(m)), abs=1e-12)


@pytest.mark.parametrize("m", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_one_peer_exponential_any_log2m_consecutive_rounds_across_steps_average_exactly(m: int, t: int) -> None:
    """The hop follows the global round index n = k t + r: every window of tau rounds, wherever it
    starts (within a step or across a step boundary), multiplies to exactly J."""
    topo = make_topology("one-peer-exponential", m, rounds=t)
    tau = int(math.log2(m))
    j = torch.full((m, m), 1.0 / m, dtype=torch.float64)
    seq = [topo.matrix(k, r) for k in range(2 * tau + 1) for r in range(t)]  # global round order
    assert [topo.hop(k, r) for k in range(3) for r in range(t)] == [2 ** (n % tau) for n in range(3 * t)]
    for start in range(len(seq) - tau + 1):
        p = torch.eye(m, dtype=torch.float64)
        for w in seq[start : start + tau]:
            p = w @ p
        assert torch.allclose(p, j, atol=1e-14, rtol=0), (start, t)
    if tau > 1:  # one round fewer is not yet the average
        p = torch.eye(m, dtype=torch.float64)
        for w in seq[:tau - 1]:
            p = w @ p
        assert not torch.allclose(p, j, atol=1e-6, rtol=0)
    # the mixer runs the same sequence: tau steps of t = 1 round average exactly (the old per-step
    # restart gave a fixed one-directional ring here, 0.856 from J after 8 steps of M = 8)
    mixer = InProcessMixer(make_topology("one-peer-exponential", m, rounds=1), 1)
    x = torch.randn(m, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(m))
    y = x
    for k in range(tau):
        y = mixer.mix(y, 7 + k)
    assert torch.allclose(y, x.mean(0, keepdim=True).expand_as(x), atol=1e-12, rtol=0)


def test_one_peer_exponential_reports_rho_zero_and_log2m_rounds_consistently() -> None:
    for m in (2, 8, 16, 64):
        topo = OnePeerExponential(m)
        assert topo.rho() < 1e-12 and topo.suggested_rounds() == int(math.log2(m))
        # t = suggested rounds per step makes every step's product exactly J, whatever the step
        t = topo.suggested_rounds()
        topo_t = make_topology("one-peer-exponential", m, rounds=t)
        for k in (0, 1, 9):
            assert torch.allclose(topo_t.product(k, t), torch.full((m, m), 1.0 / m, dtype=torch.float64), atol=1e-13)
    # not a power of two: the per-round factor over one period, strictly between 0 and 1
    assert 0.0 < OnePeerExponential(12).rho() < 1.0


def test_a_round_indexed_topology_refuses_a_mixer_with_other_rounds() -> None:
    topo = make_topology("one-peer-exponential", 8, rounds=2)
    with pytest.raises(TopologyError, match="built for 2 round.*runs 3.*rounds=3"):
        InProcessMixer(topo, 3)
    InProcessMixer(topo, 0)  # no mixing at all: nothing to index
    InProcessMixer(make_topology("ring", 8), 3)  # static graphs do not care


def _random_ring_matrices(seed: int, m: int, keys: list[tuple[int, int]]) -> list[list[list[float]]]:
    topo = RandomRing(m, seed=seed)
    return [topo.matrix(k, r).tolist() for k, r in keys]


def test_random_ring_same_matrix_on_every_peer_including_another_process() -> None:
    m, seed = 12, 42
    keys = [(0, 0), (0, 1), (7, 0), (123, 3)]
    here = _random_ring_matrices(seed, m, keys)
    again = _random_ring_matrices(seed, m, keys)  # a separately built object
    code = (
        "import json, sys; from tests.test_topology import _random_ring_matrices as f; "
        f"json.dump(f({seed}, {m}, {keys!r}), sys.stdout)"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    other = json.loads(out.stdout)
    assert here == again == other
    # and a peer computing only its own row from the membership alone agrees with the matrix
    topo = RandomRing(m, seed=seed)
    for (k, r), w in zip(keys, here):
        for rank in range(m):
            row = topo.in_weights(rank, k, r)
            assert row == pytest.approx({j: v for j, v in enumerate(w[rank]) if v != 0.0})


def test_random_ring_matrices_are_symmetric_doubly_stochastic_and_new_in_every_round() -> None:
    topo = RandomRing(16, seed=3)
    for k in range(5):
        ws = [topo.matrix(k, r) for r in range(4)]
        for w in ws:
            validate_mixing_matrix(w, require_connected=False)
            assert torch.equal(w, w.T)
        # every round of a step draws its own matrix (and so does the next step)
        assert all(not torch.equal(ws[a], ws[b]) for a in range(4) for b in range(a + 1, 4)), k
        assert not torch.equal(ws[0], topo.matrix(k + 1, 0))
    assert RandomRing(10, seed=4).permutation(0, 0) != RandomRing(10, seed=3).permutation(0, 0)


@pytest.mark.parametrize("m", [8, 16, 32])
def test_random_mixing_meets_the_papers_bound_on_average_over_seeds(m: int) -> None:
    """Remark 2: E ||W_1 ... W_t - J||_2 <= sqrt(M-1) / sqrt(3)^t (mean over 30 seeds, mixer included)."""
    j = torch.full((m, m), 1.0 / m, dtype=torch.float64)
    for t in (1, 2, 4, 6):
        norms = []
        for seed in range(30):
            mixer = InProcessMixer(make_topology("random-ring", m, seed=seed), t)
            p = mixer.mix(torch.eye(m, dtype=torch.float64), 3)  # W(3, t-1) ... W(3, 0)
            norms.append(float(torch.linalg.matrix_norm(p - j, ord=2)))
        assert sum(norms) / len(norms) < math.sqrt(m - 1) / math.sqrt(3) ** t, (m, t)


@pytest.mark.parametrize("m", [2, 4, 5, 8, 16, 32])
def test_random_ring_rho_is_the_rms_contraction_and_matches_monte_carlo(m: int) -> None:
    """rho = sqrt(lambda_2(E[W^T W])), checked against draws the topology never saw (seed 99, steps >= 10^6)."""
    topo = RandomRing(m, seed=99)
    draws = 4000
    acc = torch.zeros(m, m, dtype=torch.float64)
    for s in range(draws):
        order = torch.tensor(topo.permutation(10**6 + s, 0))
        w = torch.eye(m, dtype=torch.float64) / 3
        left, right = order.roll(1), order.roll(-1)
        w[order, left] += 1 / 3
        w[order, right] += 1 / 3
        acc += w.T @ w
    e = acc / draws - 1.0 / m
    # E[W^T W] - J is a multiple of (I - J) by symmetry, so its mean eigenvalue is an unbiased estimate
    mean_eig = float(torch.trace(e)) / (m - 1)
    assert topo.rho() ** 2 == pytest.approx(mean_eig, abs=0.004)
    assert topo.rho() == pytest.approx(math.sqrt(float(torch.linalg.eigvalsh(e).abs().max())), abs=0.02)
    if m >= 5:
        assert topo.rho() == pytest.approx(math.sqrt((m - 3) / (3 * (m - 1))), abs=1e-12)
        assert topo.rho() < 1 / math.sqrt(3)


@pytest.mark.parametrize("name", TOPOLOGY_NAMES)
def test_every_peer_computes_its_own_row_and_neighbours(name: str) -> None:
    topo = make_topology(name, 8, seed=1)
    for step, rnd in ((0, 0), (3, 2)):
        w = topo.matrix(step, rnd)
        for rank in range(8):
            row = topo.in_weights(rank, step, rnd)
            assert sum(row.values()) == pytest.approx(1.0)
            assert row == pytest.approx({j: float(v) for j, v in enumerate(w[rank]) if v != 0})
            assert topo.out_neighbours(rank, step, rnd) == sorted(
                i for i in range(8) if i != rank and w[i, rank] != 0
            )


def test_rounds_for_target_reach_it_and_no_fewer_do() -> None:
    for topo in (Ring(16), Exponential(16), make_topology("torus", 16)):
        t = topo.suggested_rounds(0.01)
        assert topo.rho() ** t <= 0.01 < topo.rho() ** (t - 1)
    assert OnePeerExponential(16).suggested_rounds() == 4
    assert rounds_for_consensus(0.5, 0.1) == 4


def test_theorem1_rounds_against_a_hand_computation() -> None:
    """Ring, M = 16 (rho = 1/3 + 2/3 cos(pi/8) = 0.949253), m = 16 per peer, G = 1, sigma = 0.1:
    1 + (16 * sqrt(16) * 16 * 1 + 0.01) / 0.4 = 2561.025 and ln(2561.025) / ln(1/0.949253) = 150.69."""
    rho = Ring(16).rho()
    assert theorem1_rounds(rho, peers=16, batch_size=16, grad_bound=1.0, sigma=0.1) == 151
    # m enters as sqrt(m): m = 1000 gives 1 + (16 * 31.623 * 16 + 0.01) / 0.4 = 20240.6, t = 191
    assert theorem1_rounds(rho, peers=16, batch_size=1000, grad_bound=1.0, sigma=0.1) == 191
    # G and sigma: G = 2 quadruples the M^2 sqrt(m) G^2 term; rho = 0 needs one round
    assert theorem1_rounds(rho, peers=16, batch_size=16, grad_bound=2.0, sigma=0.1) == math.ceil(
        math.log(1 + (16 * 4 * 16 * 4 + 0.01) / 0.4) / math.log(1 / rho)
    )
    assert theorem1_rounds(0.0, peers=16, batch_size=16, grad_bound=1.0, sigma=0.1) == 1
    with pytest.raises(ValueError, match="minibatch size per peer"):
        theorem1_rounds(rho, peers=16, batch_size=0, grad_bound=1.0, sigma=0.1)


# -- the in-process mixer equals the matrix product, for every topology ------------------------------
def _all_topologies(tmp_path: Path, rounds: int = 1) -> list:
    graph = tmp_path / "graph.yaml"
    graph.write_text("edges: [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 0], [0, 3]]\n")
    topos = [make_topology(name, m, seed=9, rounds=rounds) for name in TOPOLOGY_NAMES for m in (1, 2, 3, 6, 16)]
    return [*topos, make_topology(str(graph), 6)]


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_in_process_mixer_equals_topology_product(tmp_path: Path, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for topo in _all_topologies(tmp_path, rounds):
        mixer = InProcessMixer(topo, rounds)
        x = torch.randn(topo.size, 7, generator=gen, dtype=torch.float64)
        for step in (0, 1, 17):
            expected = topo.product(step, rounds) @ x
            got = mixer.mix(x, step)
            assert torch.allclose(got, expected, atol=1e-12, rtol=0), (topo, rounds, step)
        x32 = x.float()
        assert torch.allclose(mixer.mix(x32, 5), (topo.product(5, rounds) @ x).float(), atol=1e-5)


def test_in_process_mixer_leaves_input_alone_and_preserves_the_average() -> None:
    x = torch.randn(16, 5)
    before = x.clone()
    for name in TOPOLOGY_NAMES:
        out = InProcessMixer(make_topology(name, 16, seed=2, rounds=4), 4).mix(x, 3)
        assert torch.equal(x, before)
        assert torch.allclose(out.mean(0), x.mean(0), atol=1e-5)
    assert torch.equal(IdentityMixer(16).mix(x, 0), x)


def test_complete_graph_mixes_to_the_exact_average() -> None:
    x = torch.randn(9, 4, dtype=torch.float64)
    out = InProcessMixer(make_topology("complete", 9), 1).mix(x, 0)
    assert torch.allclose(out, x.mean(0, keepdim=True).expand(9, 4), atol=1e-15)


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size", "message"),
    [
        ("weights: [[1.5, -0.5], [-0.5, 1.5]]\n", 2, "negative weight W[0, 1]"),
        ("weights: [[0.5, 0.5, 0], [0.25, 0.5, 0.25], [0.25, 0, 0.75]]\n", 3, "not symmetric"),
        ("weights: [[0.5, 0.3], [0.3, 0.5]]\n", 2, "not doubly stochastic: row 0 sums to 0.8"),
        ("edges: [[0, 1], [2, 3]]\n", 4, "disconnected: peers [2, 3]"),
        ("neighbors: {0: [1], 1: [7]}\n", 3, "node 7 is not a rank 0..2"),
        ("weights: [[1.0]]\n", 2, "weights: must be a list of 2 rows"),
        ("nodes: 3\n", 3, "expected a mapping with 'edges"),
    ],
)
def test_custom_yaml_validation_errors_name_the_file_and_problem(
    tmp_path: Path, text: str, size: int, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        make_topology(str(path), size)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_custom_yaml_metropolis_hastings_weights_and_peer_ids(tmp_path: Path) -> None:
    path = tmp_path / "star.yaml"
    path.write_text("neighbors: {hub: [a, b, c]}\n")
    topo = Custom.from_yaml(path, 4, members=["a", "b", "c", "hub"])
    w = topo.matrix()
    assert w[3, 0] == pytest.approx(1 / 4)  # 1 / (1 + max(3, 1))
    assert w[0, 0] == pytest.approx(3 / 4)
    assert w[3, 3] == pytest.approx(1 / 4)
    validate_mixing_matrix(w)


def test_unknown_topology_name_lists_the_allowed_ones() -> None:
    with pytest.raises(TopologyError, match="allowed: ring, complete"):
        make_topology("star", 4)


def test_theorem1_sigma_squared_term() -> None:
    """Where sigma^2 dominates, the rounds follow it: M = 2, m = 1, G = 0.001, sigma = 100, rho = 1/2:
    1 + (2 * 1 * 2 * 1e-6 + 100^2) / (4 * 100) = 26.00000001, so t = ceil(log2 26) = 5. Dropping sigma^2,
    writing sigma for sigma^2 or 4 sigma^2 for 4 sigma each gives arg ~ 1 or 1.25, hence t = 1."""
    assert theorem1_rounds(0.5, peers=2, batch_size=1, grad_bound=0.001, sigma=100.0) == 5
    # and where sigma is small, sigma^2 / (4 sigma) = sigma / 4 matters no more than the rest says
    assert theorem1_rounds(0.5, peers=2, batch_size=1, grad_bound=0.001, sigma=1000.0) == math.ceil(
        math.log2(1 + (4e-6 + 1e6) / 4000))


def test_one_peer_exponential_rounds_come_from_what_its_rounds_do() -> None:
    """Its rho (the period's average) is 0 at M = 16, yet one round is cos(pi/16) = 0.98 from J: a schedule
    needs the tau = 4 rounds that make J, whatever Theorem 1 asks for beyond 'rho^t <= target'."""
    topo = make_topology("one-peer-exponential", 16)
    assert topo.rho() == pytest.approx(0.0, abs=1e-12)
    assert topo.one_round_rho() == pytest.approx(math.cos(math.pi / 16), abs=1e-12)
    assert topo.rounds_needed(0.01) == 4 and topo.suggested_rounds(0.01) == 4
    # fewer rounds never do, whatever the target: a lone round of hop 8 leaves some disagreement untouched
    assert topo.rounds_needed(0.999) == 4
    assert make_topology("one-peer-exponential", 2).rounds_needed(0.01) == 1  # M = 2: one round is J
    out = subprocess.run([sys.executable, "-m", "p2pgan", "topology", "one-peer-exponential", "--peers", "16",
                          "--sigma", "1", "--batch-size", "8", "--json"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    result = json.loads(out)
    assert result["theorem1_rounds"] == 4 and result["suggested_rounds"] == 4
    assert result["one_round_rho"] == pytest.approx(0.980785, abs=1e-6)
    # a static graph: Theorem 1's rounds are rounds_for_consensus of its rho, as before
    ring = make_topology("ring", 16)
    assert ring.rounds_needed(0.5) == rounds_for_consensus(ring.rho(), 0.5)
