"""Plain logic of issue 16: agreed states, bounded FetchState serving, adopting a state without moments."""

from __future__ import annotations

import threading

import pytest
import torch

from p2pgan.daemon.transfer import AGREE_RELATIVE, Offer, agree
from p2pgan.errors import ProtocolError, ResourceLimitError
from p2pgan.wire.state import (
    SNAPSHOT_REUSE_STEPS,
    ServeGate,
    StateBoard,
    StateLayout,
    StateSnapshot,
    decode_state,
    encode_state,
)

DIM = 500


def _honest(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(DIM, generator=g)
    return [base + 0.002 * torch.randn(DIM, generator=g) for _ in range(n)]


def test_agreeing_states_are_combined_by_their_median_and_liars_are_named() -> None:
    h = _honest(3)
    huge = h[0].clone()
    huge[7] = 3e38
    offers = [Offer("p1", 40, h[0]), Offer("p2", 41, h[1]), Offer("p4", 40, h[2]), Offer("p3", 40, -h[0]),
              Offer("p5", 40, huge), Offer("p6", 10 ** 9, h[0])]
    got = agree(offers, size=5, target=40, bound=100, own=torch.zeros(DIM))
    assert got.point is not None and set(got.agreed) == {"p1", "p2", "p4"} and got.step == 40
    torch.testing.assert_close(got.point, torch.stack(h).median(0).values)
    assert set(got.refused) == {"p3", "p5", "p6"}
    assert "implausible" in got.refused["p5"] and "outside what the agreed step 40 allows" in got.refused["p6"]
    assert f"further than {AGREE_RELATIVE:g}" in got.refused["p3"]


def test_states_ahead_of_the_agreed_step_count_but_stale_ones_do_not() -> None:
    """The federation moves on while a joiner asks: a late answer is ahead, not a lie; a stale one is refused."""
    h = _honest(3)
    offers = [Offer("p1", 40, h[0]), Offer("p2", 63, h[1]), Offer("p4", 31, h[2])]
    got = agree(offers, size=4, target=40, bound=100, own=torch.zeros(DIM))
    assert got.point is not None and set(got.agreed) == {"p1", "p2"} and got.step == 40  # the lower of the two
    assert set(got.refused) == {"p4"} and "at most 8 behind" in got.refused["p4"]
    # one member's word cannot move the step: a liar far ahead with an honest vector gets the honest step
    liar = agree([Offer("p1", 40, h[0]), Offer("p3", 99, h[0])], size=4, target=40, bound=100, own=torch.zeros(DIM))
    assert liar.point is not None and liar.step == 40


def test_too_few_agreeing_states_adopt_nothing_and_name_nobody_for_disagreeing() -> None:
    h = _honest(1)
    # four members tolerate one liar: one honest state and a sign-flipped one cannot be told apart
    got = agree([Offer("p1", 40, h[0]), Offer("p3", 40, -h[0])], size=4, target=40, bound=100, own=torch.zeros(DIM))
    assert got.point is None and got.refused == {} and "2 are needed" in got.why_not
    # two members tolerate none: the other one's state is taken (documented)
    two = agree([Offer("p1", 40, h[0])], size=2, target=40, bound=100, own=torch.zeros(DIM))
    assert two.point is not None and two.agreed == ("p1",)
    torch.testing.assert_close(two.point, h[0])


def test_serve_gate_bounds_calls_per_member_in_all_and_by_rate() -> None:
    now = [0.0]
    gate = ServeGate(max_serves=2, per_member=1, burst=2, interval_s=10.0, clock=lambda: now[0])
    with gate.admit("a"):
        with pytest.raises(ResourceLimitError, match="in progress"):
            with gate.admit("a"):
                pass
        with gate.admit("b"):
            with pytest.raises(ResourceLimitError, match="2 FetchState calls are in progress"):
                with gate.admit("c"):
                    pass
    with gate.admit("a"):  # a's second call of its burst
        pass
    with pytest.raises(ResourceLimitError, match="too often"):
        with gate.admit("a"):
            pass
    now[0] = 10.0  # one more token
    with gate.admit("a"):
        pass
    assert gate.refused == 3


def test_state_board_hands_one_snapshot_to_every_caller_of_a_step() -> None:
    board = StateBoard()
    board.serve(lambda: pytest.fail("nobody asked"), 0)  # training now; nobody waits: nothing is made
    made: list[int] = []
    got: list[StateSnapshot] = []

    def make(step: int) -> StateSnapshot:
        made.append(step)
        return StateSnapshot(step, "A", (("x", torch.zeros(DIM)),), {"step": step})

    threads = [threading.Thread(target=lambda: got.append(board.request(30))) for _ in range(6)]
    for t in threads:
        t.start()
    while True:  # the training loop: serve at step boundaries until every caller got its state
        board.serve(lambda: make(1), 1)
        if len(got) == 6:
            break
        threading.Event().wait(0.01)
    for t in threads:
        t.join(10)
    assert made == [1] and all(g is got[0] for g in got)  # one copy, however many asked
    later = board.request(1)  # a caller a little later takes the same snapshot without waiting
    assert later is got[0] and made == [1]
    board.serve(lambda: make(9), 1 + SNAPSHOT_REUSE_STEPS + 1)  # too old now: dropped, nobody waits
    with pytest.raises(Exception, match="no state snapshot"):
        board.request(0.05)


def test_a_state_whose_steps_disagree_is_refused() -> None:
    layout = StateLayout("A", {"x": DIM}, frozenset({"x"}), frozenset({"step"}))
    x = torch.randn(DIM)
    for step, counters in ((5, {"step": 6}), (5, {})):
        frames = list(encode_state(StateSnapshot(step, "A", (("x", x),), counters), federation="f", sender="p1",
                                   layout_digest="L", shard_bytes=4096))
        with pytest.raises(ProtocolError):
            decode_state(frames, federation="f", sender="p1", layout_digest="L", expected=layout)
    ok = list(encode_state(StateSnapshot(5, "A", (("x", x),), {"step": 5}), federation="f", sender="p1",
                           layout_digest="L", shard_bytes=4096))
    assert decode_state(ok, federation="f", sender="p1", layout_digest="L", expected=layout).step == 5


def test_a_state_from_another_gossip_compression_is_refused() -> None:
    layout = StateLayout("A", {"x": DIM}, frozenset({"x"}), frozenset({"step"}))
    snap = StateSnapshot(5, "A", (("x", torch.randn(DIM)),), {"step": 5})

    def frames(compression: str) -> list[bytes]:
        return list(encode_state(snap, federation="f", sender="p1", layout_digest="L", shard_bytes=4096,
                                 compression=compression))

    with pytest.raises(ProtocolError, match="mixing.compression 'int8' differs from ours 'none'"):
        decode_state(frames("int8"), federation="f", sender="p1", layout_digest="L", expected=layout)
    with pytest.raises(ProtocolError, match="mixing.compression 'none' differs from ours 'topk:0.01'"):
        decode_state(frames("none"), federation="f", sender="p1", layout_digest="L", expected=layout,
                     compression="topk:0.01")
    got = decode_state(frames("int8"), federation="f", sender="p1", layout_digest="L", expected=layout,
                       compression="int8")
    assert got.step == 5


def test_adopting_a_point_seeds_the_direction_with_one_gradient_and_keeps_our_moments() -> None:
    from p2pgan.algorithm import DPOSG
    from p2pgan.mixing import IdentityMixer

    torch.manual_seed(0)
    a = torch.randn(4, 4)

    def field(z: torch.Tensor) -> torch.Tensor:  # a bilinear game's field, one row
        u, v = z[:, :4], z[:, 4:]
        return torch.cat([v @ a.T, -(u @ a)], dim=1)

    algo = DPOSG(torch.randn(1, 8), IdentityMixer(1), "oadam", 0.01)
    for _ in range(3):
        algo.step(field)
    moments_before = algo.direction.state_dict()
    point = torch.randn(8)
    algo.adopt(point, 40, field)
    assert algo.steps == 40
    torch.testing.assert_close(algo.x[0], point)
    assert algo.direction.state_dict()["step"] == moments_before["step"] + 1  # one more gradient, our own moments
    assert not torch.equal(algo.d_prev, torch.zeros_like(algo.d_prev))
