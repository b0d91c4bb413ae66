"""Per-member bounds on the wire (issue 9 cases 2, 3, 6, 7) against a real mutual-TLS server on loopback."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

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


def test_replaced_stream_held_back_by_look_ahead_frees_its_thread_at_once(env: Env) -> None:
    """A stream waiting for look-ahead room (up to 30 s) is let go as soon as a newer stream replaces it."""
    assert env.push(message(env, step=1)).messages == 1
    assert env.push(message(env, step=2)).messages == 1  # b now holds its 2 look-ahead slots
    release, let_go = threading.Event(), threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "closed while held back" in record.getMessage():
                let_go.set()

    watch = Watch()
    logging.getLogger("p2pgan.wire.status").addHandler(watch)

    def header_then_silence(frames):
        yield frames[0]
        release.wait(60)

    ch = env.channel(env.tls["b"])
    push = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                           response_deserializer=pb.PushSummary.FromString)
    try:
        held = push.future(header_then_silence(message(env, step=3)), timeout=60)
        newer = [push.future(header_then_silence(message(env, step=0)), timeout=60) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as info:
            held.result(timeout=10)  # not the 30 s look-ahead wait
        assert info.value.code() == grpc.StatusCode.CANCELLED
        assert let_go.wait(10)  # the server thread left the look-ahead wait (it would block up to 30 s)
    finally:
        logging.getLogger("p2pgan.wire.status").removeHandler(watch)
        release.set()
        for call in [held, *newer]:
            call.cancel()
        ch.close()


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
