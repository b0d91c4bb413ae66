"""The gRPC mixer on real loopback servers with mutual TLS: results equal the matrix product.

In-process peers (one GrpcMixer each, real servers on port 0) cover every topology cheaply; real OS
processes cover the selftest command, a neighbour killed mid-run and zeroconf discovery.
"""

from __future__ import annotations

import concurrent.futures

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from p2pgan import cli
from p2pgan.mixing.robust import RobustConfig
from p2pgan.wire import codec
from p2pgan.wire.mixer import GrpcMixer
from p2pgan.wire.selftest import run_selftest
from tests.mixers import mixer_federations

DIM = 5000


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Callable[..., list[GrpcMixer]]]:
    """Factory of M joined, ready mixers; closes them all at the end."""
    with mixer_federations(tmp_path, "mix", DIM) as make:
        yield lambda m, topology, rounds, **net: make(m, topology=topology, rounds=rounds, seed=7, **net)


def mix_all(mixers: list[GrpcMixer], x: torch.Tensor, step: int) -> torch.Tensor:
    handles = [mx.start(x[mx.rank : mx.rank + 1], step) for mx in mixers]
    return torch.cat([h.wait() for h in handles])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("topology", "peers", "rounds"),
    [("ring", 4, 3), ("random-ring", 5, 3), ("exponential", 5, 2), ("complete", 4, 1),
     ("one-peer-exponential", 4, 1)],  # t = 1: the hop must follow the step (2 steps = log2 4 = exact J)
)
def test_mixing_equals_matrix_product(federation, topology: str, peers: int, rounds: int) -> None:
    mixers = federation(peers, topology, rounds)
    topo = mixers[0].topology
    for step in (0, 1):  # random-ring draws new neighbours per (step, round)
        x = torch.randn(peers, DIM, dtype=torch.float64)
        got = mix_all(mixers, x.float(), step).double()
        torch.testing.assert_close(got, topo.product(step, rounds) @ x, rtol=0, atol=2e-6)
    if topology == "one-peer-exponential":  # hops 1 then 2 across the two steps: their product is J
        torch.testing.assert_close(topo.product(1, 1) @ topo.product(0, 1), torch.full((peers, peers), 1 / peers,
                                   dtype=torch.float64), rtol=0, atol=1e-15)
    assert all(mx.stats.dropped == 0 and mx.stats.rounds == 2 * rounds for mx in mixers)
    assert all(mx.stats.bytes_sent > 0 and mx.stats.bytes_received > 0 for mx in mixers)


@pytest.mark.timeout(60)
def test_mix_lets_go_of_the_callers_row_before_returning(federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """mix() sends the caller's row without copying it (frames made on demand); before it returns, every
    message that reads that row is detached, so changing x afterwards cannot change what a slow link sends.
    Rounds after the first read the mixer's own tensors and stay on demand; start() works on a copy."""
    made: list[codec.OutgoingMessage] = []
    real = codec.OutgoingMessage

    def spy(*args: object, **kwargs: object) -> codec.OutgoingMessage:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(codec, "OutgoingMessage", spy)
    mixers = federation(3, "ring", 2)
    x = torch.randn(3, DIM)
    for step, run in enumerate((lambda m, row: m.mix(row, 0), lambda m, row: m.start(row, 1).wait())):
        made.clear()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda m: run(m, x[m.rank : m.rank + 1]), mixers))
        torch.testing.assert_close(torch.cat(got).double(), mixers[0].topology.product(step, 2) @ x.double(), rtol=0, atol=2e-6)
        round0 = [m for m in made if m.header.round == 0]
        assert len(round0) == 3 and len(made) == 6
        assert all((m._payload is None) == (step == 0 and m.header.round == 0) for m in made)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_wire(federation, dtype: str) -> None:
    mixers = federation(3, "ring", 1, wire_dtype=dtype)
    x = torch.randn(3, DIM, dtype=torch.float64)
    got = mix_all(mixers, x.float(), 0).double()
    expected = mixers[0].topology.product(0, 1) @ x
    err = (got - expected).abs().max().item()
    assert err < (2e-2 if dtype == "bfloat16" else 3e-3)
    assert err > 0  # half precision really was on the wire
    assert mixers[0].stats.bytes_sent < 2 * 2 * DIM + 4096  # 2 bytes per element to 2 neighbours
    # exactly: each peer's own share at full precision, only its neighbours' copies rounded to the wire dtype
    w = mixers[0].topology.matrix(0, 0)
    x32 = x.float()
    rounded = x32.to(getattr(torch, dtype)).double()
    own_full = torch.diag(w).unsqueeze(1) * x32.double() + (w - torch.diag(torch.diag(w))) @ rounded
    torch.testing.assert_close(got, own_full, rtol=0, atol=2e-6)
    all_rounded = w @ rounded  # what mixing a rounded copy of our own vector would give: measurably worse
    assert (all_rounded - got).abs().max().item() > 50 * 2e-6
    assert all(mx.wire_fallbacks == 0 for mx in mixers)


@pytest.mark.timeout(60)
def test_float16_wire_sends_float32_when_a_weight_overflows(federation, caplog: pytest.LogCaptureFixture) -> None:
    """A weight beyond float16's range (65504) would go out as inf and every neighbour would refuse the
    message (non-finite): the sender sends that message as float32 instead, logged, and nothing is dropped."""
    # robust mixing off: a 1e5 outlier is far outside a clipping radius learned from randn vectors
    mixers = federation(3, "ring", 1, wire_dtype="float16", round_timeout_s=3.0, robust=RobustConfig(kind="off"))
    x = torch.randn(3, DIM)
    x[0, 7], x[0, 11] = 1e5, -7e4  # would be +-inf in float16; peers 1 and 2 stay in range
    got = mix_all(mixers, x, 0).double()
    w = mixers[0].topology.matrix(0, 0)
    sent = torch.stack([x[0], x[1].half().float(), x[2].half().float()]).double()  # what each peer put on the wire
    expected = torch.diag(w).unsqueeze(1) * x.double() + (w - torch.diag(torch.diag(w))) @ sent
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
    assert [mx.wire_fallbacks for mx in mixers] == [1, 0, 0]
    assert all(mx.stats.dropped == 0 and mx.robust.stats.refused == 0 for mx in mixers)
    assert mixers[0].stats.bytes_sent > 2 * 4 * DIM  # 4 bytes per element to 2 neighbours
    assert mixers[1].stats.bytes_sent < 2 * 2 * DIM + 4096
    assert "float16 cannot carry a weight of magnitude 1e+05" in caplog.text


@pytest.mark.timeout(60)
def test_silent_neighbour_is_dropped_at_the_deadline(federation) -> None:
    """p2 stops mixing (still connected): p0 and p1 finish within the deadline, p2's weight goes to self."""
    mixers = federation(3, "ring", 1, round_timeout_s=0.5)
    x = torch.randn(3, DIM)
    handles = [mixers[i].start(x[i : i + 1], 0) for i in (0, 1)]
    y0, y1 = (h.wait() for h in handles)
    # ring of 3: everyone is everyone's neighbour; without p2 each keeps 2/3 itself + 1/3 the other
    torch.testing.assert_close(y0[0], x[0] * 2 / 3 + x[1] / 3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1[0], x[1] * 2 / 3 + x[0] / 3, rtol=1e-5, atol=1e-5)
    assert mixers[0].stats.dropped == mixers[1].stats.dropped == 1
    assert max(mixers[0].round_seconds) < 0.5 + 1.0


@pytest.mark.timeout(180)
def test_selftest_command_processes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", {"selftest": cli.COMMANDS["selftest"]})
    rc = cli.main(["selftest", "--peers", "3", "--topology", "random-ring", "--rounds", "2",
                   "--size-mb", "0.2", "--steps", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["max_abs_error"] < 1e-5 and report["checked_steps"] == 2
    assert report["round_ms"] > 0 and report["dropped"] == 0


@pytest.mark.timeout(180)
def test_killed_neighbour_does_not_stall_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # headroom for a loaded 2-core CI machine; a stall (no deadline) would last the connect timeout
    timeout_s = 3.0
    report = run_selftest(3, "ring", 1, size_mb=0.05, steps=4, round_timeout_s=timeout_s, crash=("peer2", 2))
    survivors = [p for p in report["per_peer"] if p["id"] != "peer2"]
    assert len(survivors) == 2 and len(report["per_peer"]) == 2  # peer2 was killed and wrote nothing
    assert report["checked_steps"] == 1 and report["max_abs_error"] < 1e-5  # step 0, surely before the kill, exact
    for p in survivors:
        # peer2 missed steps 2 and 3, and step 1 too when the kill overtook its last queued message
        assert p["dropped"] in (2, 3)
        assert max(p["step_seconds"][2:]) < timeout_s + 2.0  # dropped at the deadline, no stall


@pytest.mark.timeout(180)
def test_two_processes_find_each_other_by_zeroconf() -> None:
    report = run_selftest(2, "ring", 1, size_mb=0.01, steps=1, discovery="zeroconf")
    assert report["max_abs_error"] < 1e-5
    assert [p["members"] for p in report["per_peer"]] == [["peer0", "peer1"]] * 2
