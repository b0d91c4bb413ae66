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
def test_one_peer_exponential_product_of_log2m_rounds_is_exact_average(m: int) -> None:
    topo = OnePeerExponential(m)
    tau = int(math.log2(m))
    j = torch.full((m, m), 1.0 / m, dtype=torch.float64)
    for step in (0, 5):
        assert torch.allclose(topo.product(step, tau), j, atol=1e-14, rtol=0)
    # one round fewer is not yet the average
    assert not torch.allclose(topo.product(0, tau - 1), j, atol=1e-6, rtol=0)


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


def test_random_ring_matrices_are_symmetric_doubly_stochastic_and_change_per_round() -> None:
    topo = RandomRing(10, seed=3)
    seen = set()
    for k in range(4):
        for r in range(3):
            w = topo.matrix(k, r)
            validate_mixing_matrix(w, require_connected=False)
            assert torch.equal(w, w.T)
            assert torch.allclose(w.sum(0), torch.ones(10, dtype=torch.float64))
            seen.add(tuple(topo.permutation(k, r)))
    assert len(seen) > 1
    assert RandomRing(10, seed=4).permutation(0, 0) != RandomRing(10, seed=3).permutation(0, 0)


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


# -- the in-process mixer equals the matrix product, for every topology ------------------------------
def _all_topologies(tmp_path: Path) -> list:
    graph = tmp_path / "graph.yaml"
    graph.write_text("edges: [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 0], [0, 3]]\n")
    topos = [make_topology(name, m, seed=9) for name in TOPOLOGY_NAMES for m in (1, 2, 3, 6, 16)]
    return [*topos, make_topology(str(graph), 6)]


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_in_process_mixer_equals_topology_product(tmp_path: Path, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for topo in _all_topologies(tmp_path):
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
        out = InProcessMixer(make_topology(name, 16, seed=2), 4).mix(x, 3)
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
