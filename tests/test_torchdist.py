"""TorchDistMixer over real Gloo process groups: real OS processes on loopback, checked against W^t X."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deadlines import scaled
from p2pgan.errors import ConfigError, TopologyError
from p2pgan.mixing.torchdist import TorchDistMixer, process_group
from p2pgan.mixing.torchdist_check import reference_rows
from p2pgan.topology import make_topology

#: how long a group of check processes may take before the test fails (they finish in a few seconds)
GROUP_TIMEOUT_S = scaled(90.0)  # bounds a hang (x the machine's load, tests/deadlines.py)


class PeerGroup:
    """Starts ``size`` check processes that rendezvous through a file; kills them all on exit."""

    def __init__(self, tmp: Path, size: int, extra: list[str]) -> None:
        tmp.mkdir(parents=True)
        self.out = tmp / "rows"
        init = f"file://{tmp / 'rendezvous'}"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "p2pgan.mixing.torchdist_check", "--rank", str(r), "--world-size", str(size),
                 "--init-method", init, "--out", str(self.out), *extra],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            for r in range(size)
        ]

    def wait(self) -> list[tuple[int, str, str]]:
        results = []
        for p in self.procs:
            out, err = p.communicate(timeout=GROUP_TIMEOUT_S)
            results.append((p.returncode, out, err))
        return results

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def peer_group(tmp_path: Path) -> Iterator[type[PeerGroup]]:
    groups: list[PeerGroup] = []

    def start(size: int, extra: list[str]) -> PeerGroup:
        g = PeerGroup(tmp_path / f"g{len(groups)}", size, extra)
        groups.append(g)
        return g

    yield start  # type: ignore[misc]
    for g in groups:
        g.kill()


TOPOLOGIES = ["complete", "ring", "random-ring", "exponential", "one-peer-exponential"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("size", "rounds", "overlap"),
    [(4, 2, False), (5, 3, True)],
    ids=["M4-t2-exact", "M5-t3-queued"],
)
def test_gloo_mixing_equals_matrix_product(peer_group, size: int, rounds: int, overlap: bool) -> None:
    steps, dim, seed = 3, 33, 7
    extra = ["--topologies", ",".join(TOPOLOGIES), "--rounds", str(rounds), "--steps", str(steps),
             "--dim", str(dim), "--seed", str(seed)] + (["--overlap"] if overlap else [])
    group = peer_group(size, extra)
    results = group.wait()
    for rank, (rc, out, err) in enumerate(results):
        assert rc == 0, f"rank {rank} failed: {err[-2000:]}"
    summary = json.loads(results[0][1].strip().splitlines()[-1])
    assert summary["size"] == size and summary["backend"] == "gloo"
    for name in TOPOLOGIES:
        topo = make_topology(name, size, seed=seed, rounds=rounds)
        for k in range(steps):
            x = reference_rows(seed, k, size, dim)
            want = topo.product(k, rounds) @ x
            got = torch.tensor(
                [json.loads((group.out / f"rank{r}.json").read_text())["rows"][name][str(k)] for r in range(size)],
                dtype=torch.float64,
            )
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), f"{name} step {k}: max err {(got - want).abs().max()}"
            if name != "complete":
                # the mixing really moved the rows (not a no-op that happens to match a trivial case)
                assert (got - x).abs().max() > 1e-2
    assert summary["max_abs_error"] < 1e-5


def test_mixer_needs_a_process_group() -> None:
    with pytest.raises(ConfigError, match="process group"):
        TorchDistMixer(make_topology("ring", 1), 1)


def test_process_group_reads_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK"):
        with process_group(backend="gloo"):
            pass
    with pytest.raises(ConfigError, match="does not exist"):
        with process_group(backend="gloo", rank=0, world_size=1, init_method="file:///nonexistent/dir/rv"):
            pass
    with pytest.raises(ConfigError, match="backend 'mpi'"):
        with process_group(backend="mpi", rank=0, world_size=1, init_method="file:///nonexistent"):
            pass


@pytest.mark.timeout(60)
def test_single_rank_group_checks_arguments(tmp_path: Path) -> None:
    with process_group(backend="gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rv'}"):
        with pytest.raises(TopologyError, match="4 peers but the process group has 1"):
            TorchDistMixer(make_topology("ring", 4), 1)
        with TorchDistMixer(make_topology("ring", 1), 2) as mixer:
            x = torch.randn(1, 5)
            with pytest.raises(ValueError, match=r"shape \[1, d\]"):
                mixer.start(torch.randn(2, 5), 0)
            y = mixer.mix(x, 0)
            assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
        with pytest.raises(RuntimeError, match="closed"):
            mixer.start(x, 1)
        with pytest.raises(ConfigError, match="already initialised"):
            with process_group(backend="gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rv2'}"):
                pass
