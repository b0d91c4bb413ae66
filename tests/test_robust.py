"""Robust mixing (issue 9): exact on honest rounds, bounded against a hostile neighbour, on a real server.

Unit tests drive :class:`p2pgan.mixing.robust.RobustMixing` with plain tensors; the network tests send a
poisoned vector as member "b" to a real mutual-TLS GrpcMixer (the Env of test_wire_security), with
robust mixing off (the attack of issue 9 case 1 works) and on (it is bounded).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import grpc
import pytest
import torch

from p2pgan.algorithm import DPOSG
from p2pgan.algorithm.guard import FiniteGuard
from p2pgan.checkpoint import CheckpointManager, NonFiniteStateError
from p2pgan.mixing import InProcessMixer
from p2pgan.mixing.robust import RobustConfig, RobustMixing
from p2pgan.topology import make_topology
from p2pgan.wire.codec import ReceivedVector
from p2pgan.wire.config import NetworkConfig
from p2pgan.wire.mixer import GrpcMixer
from tests.test_wire_security import DIGEST, DIM, Env, message

pytestmark = pytest.mark.timeout(120)


def combine(robust: RobustMixing, x: torch.Tensor, nbrs: dict[str, torch.Tensor], w: float, r: int = 0) -> torch.Tensor:
    """What GrpcMixer._round does: w_ii x + sum of the gated neighbour shares + moved weight times x."""
    out = x * (1.0 - w * len(nbrs))
    gate = robust.begin(x, r)
    extra = sum(gate.add(out, ReceivedVector((v,)), w, s) for s, v in nbrs.items())
    if extra:
        out.add_(x, alpha=extra)
    return out


@pytest.mark.parametrize("kind", ["clip", "trim"])
def test_honest_rounds_are_bit_for_bit_the_weighted_average(kind: str) -> None:
    torch.manual_seed(0)
    robust, plain = RobustMixing(RobustConfig(kind=kind)), RobustMixing(RobustConfig(kind="off"))
    x = torch.randn(1000)
    for _ in range(30):  # consensus: differences shrink round by round, the radius follows
        nbrs = {"b": x + 0.1 * torch.randn(1000), "c": x + 0.1 * torch.randn(1000)}
        got, want = combine(robust, x, nbrs, 1 / 3), combine(plain, x, nbrs, 1 / 3)
        assert torch.equal(got, want)
        x = got
    assert robust.stats.clipped == 0 and robust.stats.rejected == 0


@pytest.mark.parametrize("kind", ["clip", "trim"])
def test_fresh_vectors_every_step_with_consensus_rounds_stay_exact(kind: str) -> None:
    """Like `p2pgan selftest`: new random rows each step, 2 rounds on 3 peers (round 1 sees rounding noise)."""
    torch.manual_seed(2)
    robust = [RobustMixing(RobustConfig(kind=kind)) for _ in range(3)]
    plain = RobustMixing(RobustConfig(kind="off"))
    for _ in range(20):
        rows = list(torch.randn(3, 500))
        for r in range(2):
            new = []
            for i in range(3):
                nbrs = {str(j): rows[j] for j in range(3) if j != i}
                got = combine(robust[i], rows[i], nbrs, 1 / 3, r)
                assert torch.equal(got, combine(plain, rows[i], nbrs, 1 / 3, r))
                new.append(got)
            rows = new
    assert all(rb.stats.clipped == 0 for rb in robust)


@pytest.mark.parametrize("kind", ["clip", "trim"])
def test_one_huge_element_moves_the_peer_at_most_weight_times_radius(kind: str) -> None:
    torch.manual_seed(1)
    robust = RobustMixing(RobustConfig(kind=kind))
    x = torch.randn(1000)
    for _ in range(8):  # learn the honest scale of differences
        combine(robust, x, {"b": x + 0.01 * torch.randn(1000), "c": x + 0.01 * torch.randn(1000)}, 1 / 3)
    gate_radius = robust.begin(x).radius
    evil = x + 0.01 * torch.randn(1000)
    evil[999] = 3e38
    honest = x + 0.01 * torch.randn(1000)
    out = combine(robust, x, {"b": evil, "c": honest}, 1 / 3)
    assert bool(torch.isfinite(out).all())
    plain = combine(RobustMixing(RobustConfig(kind="off")), x, {"c": honest}, 1 / 3) + evil / 3
    assert plain[999] > 1e37  # without robust mixing the element lands in the model
    moved = (out - combine(RobustMixing(RobustConfig(kind="off")), x, {"b": x, "c": honest}, 1 / 3))
    bound = gate_radius / 3 * (1 if kind == "clip" else math.sqrt(1000))
    assert float(moved.norm()) <= bound * (1 + 1e-4)
    assert robust.stats.clipped == 1


def test_a_neighbour_clipped_again_and_again_is_reported_and_treated_as_absent(caplog) -> None:
    robust = RobustMixing(RobustConfig(kind="clip", suspect_after=3))
    x = torch.randn(100)
    honest = lambda: x + 0.01 * torch.randn(100)  # noqa: E731
    for _ in range(6):
        combine(robust, x, {"b": honest(), "c": honest()}, 1 / 3)
    with caplog.at_level(logging.WARNING, logger="p2pgan.mixing.robust"):
        for _ in range(5):
            out = combine(robust, x, {"b": x + 1e6, "c": x}, 1 / 3)
    assert robust.stats.reported == ["b"] and robust.stats.rejected == 3
    torch.testing.assert_close(out, x)  # b's weight went to ourselves (x/3 + x/3 + x/3, up to rounding)
    assert sum("treating it as absent" in r.message for r in caplog.records) == 1
    combine(robust, x, {"b": honest(), "c": honest()}, 1 / 3)  # back within the radius: mixed again
    assert robust.stats.rejected == 3


def test_the_radius_follows_honest_growth_but_not_one_hostile_neighbour() -> None:
    robust = RobustMixing(RobustConfig(kind="clip", window=16))
    x = torch.full((10,), 0.1)
    for scale in (1.0, 2.0, 4.0, 8.0):  # honest distances grow: every neighbour is clipped, the radius follows
        for _ in range(8):
            combine(robust, x, {"b": x + scale, "c": x - scale}, 1 / 3)
    assert robust.begin(x).radius >= 8.0 * math.sqrt(10)
    before = robust.begin(x).radius
    for _ in range(16):  # b pushes at the radius every round; c stays honest: the radius does not run away
        combine(robust, x, {"b": x + 1e30, "c": x + 8.0}, 1 / 3)
    assert robust.begin(x).radius <= before * 1.01


def _chunked(v: torch.Tensor, sizes: list[int]) -> ReceivedVector:
    """``v`` as a received vector whose shards have the given sizes (the last takes the rest)."""
    return ReceivedVector(tuple(v.split([*sizes, v.numel() - sum(sizes)])))


@pytest.mark.parametrize("kind", ["clip", "off", "trim"])
@pytest.mark.parametrize("block", [7, 64, 65536])
def test_single_pass_combine_is_the_reference_sum_bit_for_bit(kind: str, block: int, monkeypatch) -> None:
    """RobustMixing.combine (one blocked pass) against begin()/Round.add (neighbour after neighbour), with
    shard boundaries that do and do not line up with the blocks, a bf16 neighbour and t = 2 rounds."""
    import p2pgan.mixing.robust as robust_module

    monkeypatch.setattr(robust_module, "BLOCK_ELEMENTS", block)
    torch.manual_seed(3)
    fast, ref = RobustMixing(RobustConfig(kind=kind)), RobustMixing(RobustConfig(kind=kind))
    x = torch.randn(1000)
    for step in range(12):
        for r in range(2):
            b, c = x + 0.1 * torch.randn(1000), (x + 0.1 * torch.randn(1000)).to(torch.bfloat16)
            shares = [("b", _chunked(b, [3, 500, 130]), 0.25), ("c", _chunked(c, [64, 64]), 0.4)]
            got = fast.combine(x, 0.35, shares, r, f"step {step}")
            want = x * 0.35
            gate = ref.begin(x, r)
            extra = gate.add(want, shares[0][1], 0.25, "b") + gate.add(want, shares[1][1], 0.4, "c")
            if extra:
                want.add_(x, alpha=extra)
            assert torch.equal(got, want)
            x = got
    assert fast.stats == ref.stats and fast.stats.clipped == 0


def test_single_pass_combine_bounds_a_hostile_neighbour_like_the_reference(monkeypatch) -> None:
    """A clipped round (and then a suspect's) is recomputed: same result and same verdicts as Round.add."""
    import p2pgan.mixing.robust as robust_module

    monkeypatch.setattr(robust_module, "BLOCK_ELEMENTS", 100)
    torch.manual_seed(4)
    cfg = RobustConfig(kind="clip", suspect_after=3)
    fast, ref = RobustMixing(cfg), RobustMixing(cfg)
    x = torch.randn(1000)
    for i in range(10):
        b = x + 0.01 * torch.randn(1000)
        if i >= 5:
            b[999] = 3e38  # hostile from round 5: clipped, and a suspect (weight to ourselves) from round 7
        c = x + 0.01 * torch.randn(1000)
        shares = [("b", _chunked(b, [300]), 1 / 3), ("c", _chunked(c, []), 1 / 3)]
        got = fast.combine(x, 1 / 3, shares)
        gate = ref.begin(x)
        want = x * (1 / 3)
        extra = gate.add(want, shares[0][1], 1 / 3, "b") + gate.add(want, shares[1][1], 1 / 3, "c")
        if extra:
            want.add_(x, alpha=extra)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert bool(torch.isfinite(got).all())
    assert fast.stats.clipped == ref.stats.clipped == 5 and fast.stats.rejected == ref.stats.rejected == 3
    assert fast.stats.reported == ref.stats.reported == ["b"]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="robust"):
        RobustConfig(kind="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="robust_scale"):
        RobustConfig(scale=0.5)


# -- non-finite steps and checkpoints --------------------------------------------------------------------
def test_non_finite_step_rolls_back_and_is_never_checkpointed(tmp_path: Path) -> None:
    topo = make_topology("ring", 1)
    algo = DPOSG(torch.ones(1, 4), InProcessMixer(topo, 1), "oadam", 0.1)
    guard = FiniteGuard(algo)
    manager = CheckpointManager(tmp_path, keep=1)
    with guard:
        algo.step(lambda z: z)
    good = algo.state_dict()
    manager.save(algo.steps, good)
    with guard:
        algo.step(lambda z: torch.full_like(z, math.nan))
    assert guard.rollbacks == 1 and algo.steps == 2  # the counter advances: neighbours are at the next step
    assert torch.equal(algo.x, good["x"]) and torch.equal(algo.d_prev, good["d_prev"])
    bad = {**algo.state_dict(), "x": torch.full((1, 4), math.inf)}
    with pytest.raises(NonFiniteStateError):
        manager.save(3, bad)
    assert manager.steps() == [1]  # the last finite checkpoint is still there, nothing else was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000001.pt", "latest"]


# -- against a real server --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["off", "clip"])
def test_poisoned_vector_over_the_wire(tmp_path: Path, kind: str) -> None:
    """Issue 9 case 1: one finite element of 3e38 from member b. Off: it lands in the model. Clip: bounded."""
    env = Env(tmp_path)
    try:
        net = dataclasses.replace(env.mixer.net, robust=RobustConfig(kind=kind))  # type: ignore[arg-type]
        env.mixer.close()
        env.mixer = GrpcMixer(net, dim=DIM, layout_digest=DIGEST)
        env.mixer.join(tuple(env.mixer.net.roster) or _roster(env))
        x = torch.randn(1, DIM)
        vec = x[0] + 0.01 * torch.randn(DIM)
        vec[DIM - 1] = 3e38
        assert env.push(message(env, vec, step=0)).messages == 1
        y = env.mixer.mix(x, 0)
        if kind == "off":
            assert y[0, DIM - 1] > 1e37  # the attack works without robust mixing
        else:
            assert bool(torch.isfinite(y).all())
            radius = 4.0 * float(x.double().norm())  # warm-up radius
            assert float((y - x).norm()) <= radius / 3 * (1 + 1e-4)
            assert env.mixer.robust.stats.clipped == 1
    finally:
        env.mixer.close()


def _roster(env: Env):
    from p2pgan.wire.config import PeerEntry

    return tuple(PeerEntry(p, "127.0.0.1", env.mixer.port if p == "a" else 1) for p in "abc")


def test_network_config_defaults_to_clip() -> None:
    assert NetworkConfig(federation="f", peer_id="a", insecure=True).robust.kind == "clip"


def test_member_whose_messages_keep_being_refused_is_reported(tmp_path: Path, caplog) -> None:
    """Refused messages (here non-finite vectors) count toward reporting the member; a good vector ends it."""
    from tests.test_wire_security import assert_still_serving, refused

    env = Env(tmp_path)
    try:
        nan = torch.randn(DIM)
        nan[3] = math.nan
        with caplog.at_level(logging.WARNING, logger="p2pgan.mixing.robust"):
            for _ in range(RobustConfig().suspect_after):
                refused(env, message(env, nan), grpc.StatusCode.INVALID_ARGUMENT, "non-finite")
        stats = env.mixer.robust.stats
        assert stats.refused == RobustConfig().suspect_after and stats.reported == ["b"]
        assert sum("refused or outside the clipping radius" in r.message for r in caplog.records) == 1
        assert_still_serving(env)  # b's next good vector is mixed again
    finally:
        env.mixer.close()
