"""The simulator's claims (DGDA fails, DPOSG / OAdam converge) and the CLI commands end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2pgan.errors import ConfigError
from p2pgan.sim import SimConfig, simulate

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_identical_bilinear_games_on_a_ring_dgda_diverges_dposg_converges() -> None:
    common = dict(problem="bilinear", peers=8, topology="ring", rounds=1, steps=600, lr=0.1, dim=5, seed=1)
    start = simulate(SimConfig(**{**common, "steps": 1}))["history"][0]["distance"]
    dgda = simulate(SimConfig(**{**common, "algorithm": "dgda"}))
    dposg = simulate(SimConfig(**{**common, "algorithm": "dposg", "schedule": "exact"}))
    overlap = simulate(SimConfig(**{**common, "algorithm": "dposg"}))  # the overlap schedule, dposg's default
    assert (dposg["schedule"], overlap["schedule"], dgda["schedule"]) == ("exact", "overlap", None)
    assert dgda["distance"] > 5 * start  # spirals outwards: |1 + i lr| > 1 per step
    assert dposg["distance"] < 0.05 * start
    assert overlap["distance"] < 0.05 * start
    assert dposg["consensus"] < 1e-3 and not dposg["diverged"]
    distances = [h["distance"] for h in dgda["history"]]
    assert distances[-1] == max(distances)


def test_oadam_on_linear_wgan_converges_while_gradient_descent_ascent_does_not() -> None:
    common = dict(problem="linear-wgan", peers=4, topology="ring", steps=3000, lr=0.01, eval_every=500)
    oadam = simulate(SimConfig(**common, algorithm="dposg", optimizer="oadam"))
    gda = simulate(SimConfig(**common, algorithm="dgda", optimizer="osg"))
    start = oadam["history"][0]["distance"]
    assert start == pytest.approx(math.hypot(3 - 1.7, 4 - 1.7, 1.4, 1.4), rel=1e-5)
    assert oadam["distance"] < 0.2 * start / 3  # from 3.3 to below 0.22: theta near (3, 4), w near 0
    assert oadam["theta_error"] < 0.2
    assert gda["distance"] > start  # cycles outwards


def test_heterogeneous_noisy_bilinear_with_separate_rates_runs_and_reports_history() -> None:
    res = simulate(
        SimConfig(problem="bilinear", peers=6, topology="random-ring", rounds=2, steps=40, lr_u=0.05, lr_v=0.1,
                  hetero=0.5, sigma=0.01, optimizer="oadagrad", eval_every=10)
    )
    assert [h["step"] for h in res["history"]] == [0, 10, 20, 30, 40]
    assert math.isfinite(res["distance"]) and math.isfinite(res["consensus"])
    assert res["rounds"] == 2 and res["topology"] == "random-ring"


def test_gaussians_wgan_gp_runs_vectorised_over_peers() -> None:
    res = simulate(SimConfig(problem="gaussians", peers=3, steps=6, batch=16, eval_every=3, schedule="overlap"))
    assert res["distance"] is None
    assert (res["lr_u"], res["lr_v"]) == (2e-4, 2e-3)  # two time scales unless --lr is given
    assert 0 <= res["modes"] <= 8 and 0.0 <= res["high_quality"] <= 1.0
    assert math.isfinite(res["consensus"])


def test_gaussians_field_matches_per_peer_autograd() -> None:
    """The batched field of peer i equals autograd on peer i alone (no cross-peer leakage)."""
    from p2pgan.sim.base import ProblemConfig
    from p2pgan.sim.problems import make_problem

    both = make_problem("gaussians", ProblemConfig(peers=2, batch=8, seed=3))
    z = both.initial() + 0.01 * torch.randn(2, both.dim, generator=torch.Generator().manual_seed(0))
    g = both.field(z)
    assert g.shape == z.shape and torch.isfinite(g).all()
    z2 = z.clone()
    z2[1] += 1.0  # changing peer 1 must not change peer 0's gradient (same random draws)
    other = make_problem("gaussians", ProblemConfig(peers=2, batch=8, seed=3))
    other.initial()  # the same random draws from here on
    again = other.field(z2)
    assert torch.allclose(again[0], g[0], atol=1e-6) and not torch.allclose(again[1], g[1])


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"peers": 0}, "--peers"),
        ({"algorithm": "cp", "topology": "ring"}, "--topology"),
        ({"optimizer": "adam"}, "--optimizer"),
        ({"lr": -0.1}, "--lr"),
        ({"problem": "linear-wgan", "dim": 3}, "--dim"),
        ({"problem": "mnist"}, "--problem"),
        ({"schedule": "fast"}, "--schedule"),
        ({"algorithm": "dgda", "schedule": "exact"}, "--schedule"),
        ({"algorithm": "overlap"}, "--algorithm dposg --schedule overlap"),
    ],
)
def test_bad_settings_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        simulate(SimConfig(**{"steps": 2, **kwargs}))


# -- the commands, as a user runs them ---------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "p2pgan", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )


def test_schedule_defaults_as_the_daemon_and_reaches_the_algorithm() -> None:
    from p2pgan.sim import Simulation

    def built(**kwargs: object) -> object:
        return Simulation.build(SimConfig(problem="bilinear", peers=4, steps=1, dim=3, **kwargs)).algorithm

    assert built().schedule == "overlap"  # as dp / rand-dp peers
    assert built(topology="random-ring").schedule == "overlap"
    assert built(algorithm="cp").schedule == "exact"  # as cp peers
    assert built(schedule="exact").schedule == "exact"
    assert built(algorithm="cp", schedule="overlap").schedule == "overlap"
    assert built(algorithm="dgda").name == "dgda" and SimConfig(algorithm="dgda").effective_schedule is None


def test_cli_simulate_json_prints_one_object(tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    out = _cli("simulate", "--problem", "bilinear", "--peers", "16", "--topology", "ring", "--rounds", "1",
               "--steps", "200", "--lr", "0.1", "--algorithm", "dposg", "--optimizer", "osg", "--seed", "3", "--json",
               "--plot", str(png))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["peers"] == 16 and result["steps"] == 200 and result["schedule"] == "overlap"
    assert result["distance"] < result["history"][0]["distance"]
    assert result["consensus"] >= 0 and len(result["history"]) > 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_simulate_takes_the_daemons_consensus_step_for_top_k() -> None:
    """Without --consensus-step, top-k gets mixing.consensus_step's default (at 1 it diverges), the others 1."""
    def step(*flags: str) -> float:
        out = _cli("simulate", "--problem", "bilinear", "--peers", "4", "--steps", "3", "--dim", "4", "--json", *flags)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["consensus_step"]

    assert step("--compression", "topk:0.5") == 0.1 and step("--compression", "topk:0.01") == 0.05
    assert step("--compression", "topk:0.5", "--consensus-step", "0.2") == 0.2
    assert step("--compression", "int8") == 1.0


def test_cli_topology_json_and_errors_without_traceback(tmp_path: Path) -> None:
    out = _cli("topology", "ring", "--peers", "16", "--json", "--sigma", "0.1", "--batch-size", "16")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert round(info["rho"], 4) == 0.9493 and info["degree"] == 2
    assert 0.9493 ** info["suggested_rounds"] <= 0.0101
    assert info["theorem1_rounds"] == 151  # the hand computation in test_topology.py
    out = _cli("topology", "one-peer-exponential", "--peers", "8", "--json")
    info = json.loads(out.stdout)
    assert info["rho"] < 1e-12 and info["suggested_rounds"] == 3
    # the old flag took the parameter count, which is not Theorem 1's m: refused, saying what to write
    out = _cli("topology", "ring", "--peers", "16", "--sigma", "0.1", "--dim", "100")
    assert out.returncode == 2 and "--batch-size" in out.stderr and "Traceback" not in out.stderr
    out = _cli("topology", "ring", "--peers", "16", "--sigma", "0.1")
    assert out.returncode == 2 and "--batch-size" in out.stderr
    bad = tmp_path / "g.yaml"
    bad.write_text("edges: [[0, 1], [2, 3]]\n")
    out = _cli("topology", str(bad), "--peers", "4")
    assert out.returncode == 2
    assert "disconnected" in out.stderr and "Traceback" not in out.stderr
    out = _cli("simulate", "--algorithm", "sgd", "--steps", "1")
    assert out.returncode == 2
    assert "--algorithm" in out.stderr and "allowed: dposg, dgda, cp" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_simulate_refuses_algorithm_overlap_saying_what_to_write() -> None:
    out = _cli("simulate", "--algorithm", "overlap", "--steps", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "'overlap' is no longer an algorithm" in out.stderr
    assert "write `--algorithm dposg --schedule overlap`" in out.stderr
    out = _cli("simulate", "--problem", "bilinear", "--peers", "4", "--dim", "3", "--steps", "5",
               "--schedule", "exact", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schedule"] == "exact"
