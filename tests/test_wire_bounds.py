"""Per-member bounds on the wire (issue 9 cases 2, 3, 6, 7) against a real mutual-TLS server on loopback."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
import torch

from p2pgan.errors import ResourceLimitError
from p2pgan.wire import codec, transport
from p2pgan.wire.streams import StreamGate
from p2pgan.wire.v1 import gossip_pb2 as pb
from tests.test_wire_security import DIM, Env, assert_still_serving, env, message, refused  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_slow_loris_streams_do_not_starve_hello(env: Env) -> None:
    """Case 2: 70 Push streams opened with b's certificate and never written to. Hello still answers,
    b keeps at most 2 streams (each new one replaces the oldest) and the server keeps mixing."""
    release = threading.Event()

    def silent():
        release.wait(60)
        return
        yield  # a generator that sends nothing until released

    ch = env.channel(env.tls["b"])
    push = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                           response_deserializer=pb.PushSummary.FromString)
    done = threading.Semaphore(0)
    calls = [push.future(silent(), timeout=60) for _ in range(70)]
    for call in calls:
        call.add_done_callback(lambda _call: done.release())
    try:
        assert env.hello(env.tls["c"], expect="a").peer_id == "a"  # answered, not starved
        for _ in range(68):  # each new stream replaced b's oldest: 68 end, CANCELLED by the server
            assert done.acquire(timeout=30)
        ended = [c for c in calls if c.done()]
        assert len(ended) == 68 and all(c.code() == grpc.StatusCode.CANCELLED for c in ended)
        assert not done.acquire(timeout=0.5)  # the newest two stay open
    finally:
        release.set()
        for call in calls:
            call.cancel()
        ch.close()
    assert_still_serving(env)


def test_stream_gate_total_bound_and_idle_timeout() -> None:
    gate = StreamGate(max_streams=3, per_member=2, idle_timeout_s=0.2)
    idle = threading.Event()
    streams = [gate.stream(None, idle.set, iter(())) for _ in range(3)]
    with pytest.raises(ResourceLimitError, match="maximum"):
        gate.stream(None, lambda: None, iter(()))
    assert idle.wait(10)  # an idle stream is cancelled by the watchdog
    assert gate.idle_closed >= 1
    for s in streams:
        s.__exit__(None, None, None)
    assert gate.open_streams == 0


def test_tiny_and_empty_shards_are_refused_not_internal(env: Env) -> None:
    """Case 3: the right total size cut into 4-byte shards; and an empty shard (was INTERNAL: ValueError)."""
    refused(env, message(env, shard_bytes=4), grpc.StatusCode.INVALID_ARGUMENT, "shard_count")
    vec = torch.randn(DIM)
    payload = codec.le_bytes(vec)
    header = codec.MessageHeader(federation=env.fed, sender="b", step=0, round=0, layout_digest="layout-v1",
                                 dtype="float32", element_count=DIM, shard_count=2)
    small_first = [header.to_frame(), codec.shard_frame(0, payload[:8]), codec.shard_frame(1, payload[8:])]
    refused(env, small_first, grpc.StatusCode.INVALID_ARGUMENT, "at least 1024")
    empty = [header.to_frame(), codec.shard_frame(0, payload), codec.shard_frame(1, payload[:0])]
    refused(env, empty, grpc.StatusCode.INVALID_ARGUMENT, "bytes")
    assert_still_serving(env)


def test_huge_peer_strings_are_truncated_and_repeats_summarized(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Case 7: a 1 MB sender string, 20 times. Logs and statuses quote at most a few dozen characters,
    and after the first refusals the rest are only counted."""
    caplog.set_level(logging.INFO)
    frames = message(env, sender="x" * 1_000_000)
    for _ in range(20):
        with pytest.raises(grpc.RpcError) as info:
            env.push(frames)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert len(info.value.details()) < 500
    lines = [r.getMessage() for r in caplog.records if r.name == "p2pgan.wire.status"]
    assert 1 <= len(lines) <= 4
    assert sum(len(line) for line in lines) < 4000
    assert "1000000 chars" in lines[0]


def test_cancelled_stream_held_back_by_look_ahead_lets_go_at_once() -> None:
    """A stream waiting for look-ahead room (up to 30 s) gives up as soon as the gate cancels it, so a
    member cannot keep server threads by opening streams whose headers wait (each replaced at once)."""
    from p2pgan.errors import PeerUnavailableError
    from p2pgan.wire.inbox import Inbox, InboxContext

    inbox = Inbox()
    inbox.configure(InboxContext(federation="f", self_id="a", members=frozenset("abc"), layout_digest="d",
                                 element_count=DIM, in_neighbours=lambda step, rnd: {"b", "c"}))

    def frames(step: int) -> list[bytes]:
        h = codec.MessageHeader(federation="f", sender="b", step=step, round=0, layout_digest="d", dtype="float32",
                                element_count=DIM, shard_count=1)
        return codec.encode(h, codec.le_bytes(torch.randn(DIM)), 1 << 20)

    assert inbox.receive("b", frames(1)) == 1 and inbox.receive("b", frames(2)) == 1  # b's 2 look-ahead slots
    cancelled = threading.Event()
    outcome: list[BaseException] = []
    ended = threading.Event()

    def held() -> None:
        try:
            inbox.receive("b", iter(frames(3)), cancelled.is_set)
        except BaseException as exc:  # noqa: BLE001 - the outcome is checked below
            outcome.append(exc)
        ended.set()

    thread = threading.Thread(target=held, daemon=True)
    thread.start()
    cancelled.set()
    inbox.wake()  # what the gate's cancel does besides cancelling the call
    assert ended.wait(5)  # not the 30 s look-ahead wait
    assert isinstance(outcome[0], PeerUnavailableError) and "held back" in str(outcome[0])


def test_refusal_log_summarizes_repeats_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    from p2pgan.logsafe import REFUSAL_SUMMARY_INTERVAL_S, RefusalLog, printable

    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.refusals")
    for i in range(100):
        now[0] = i * REFUSAL_SUMMARY_INTERVAL_S / 50  # 100 refusals over two intervals
        refusals.refused("host", "Push INVALID_ARGUMENT", f"refusal {i}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["refusal 0", "refusal 1", "refusal 2"]
    assert len(lines) == 4 and lines[3].startswith("50 more Push INVALID_ARGUMENT refusals from 'host'")
    assert printable("\x1b[2J" * 100).startswith("'\\x1b[2J") and "(400 chars)" in printable("\x1b[2J" * 100)
