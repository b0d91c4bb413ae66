"""The committed gRPC stubs are current, and the hand-written shard encoding is valid protobuf."""

from __future__ import annotations

import importlib.util
import math
import queue
import threading
from pathlib import Path

import pytest
import torch

from p2pgan.errors import ProtocolError
from p2pgan.wire import codec, outgoing
from p2pgan.wire.v1 import gossip_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_committed_stubs_are_not_stale(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for fresh in gen.generate(tmp_path):
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python scripts/gen_protos.py"
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale: run python scripts/gen_protos.py"


def header(n: int, dtype: str = "float32", shard_bytes: int = 1024) -> codec.MessageHeader:
    nbytes = n * codec.WIRE_DTYPES[dtype][0].itemsize
    return codec.MessageHeader("f", "a", 3, 1, "d", dtype, n, codec.shard_count(nbytes, shard_bytes))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_roundtrip_and_generated_parser_agree(dtype: str) -> None:
    vec = torch.randn(2500).to(codec.WIRE_DTYPES[dtype][0])
    h = header(2500, dtype)
    frames = codec.encode(h, codec.le_bytes(vec), 1024)
    assert codec.decode_frame(frames[0]) == h
    writer = codec.ShardAssembler(h)
    for i, f in enumerate(frames[1:]):
        parsed = pb.Frame.FromString(f).shard  # our hand encoding is what the proto says
        assert parsed.index == i and parsed.checksum == codec.checksum(parsed.data)
        # a non-canonical encoding of the same shard (generated serializer) decodes the same way
        assert codec.decode_frame(pb.Frame(shard=parsed).SerializeToString()).data == codec.decode_frame(f).data
        writer.add(codec.decode_frame(f))
    assert torch.equal(writer.vector().tensor(), vec)
    assert len(frames[1]) < 1024 + codec.FRAME_OVERHEAD_BYTES


def test_raw_bytes_are_little_endian_float32() -> None:
    vec = torch.tensor([1.0, -2.5], dtype=torch.float32)
    assert bytes(codec.le_bytes(vec)) == b"\x00\x00\x80\x3f\x00\x00\x20\xc0"


def test_non_finite_values_are_refused() -> None:
    vec = torch.ones(10)
    vec[3] = math.inf
    h = header(10)
    writer = codec.ShardAssembler(h)
    for f in codec.encode(h, codec.le_bytes(vec), 1024)[1:]:
        writer.add(codec.decode_frame(f))
    with pytest.raises(ProtocolError, match="non-finite"):
        writer.vector()


def test_shards_that_split_elements_reassemble() -> None:
    vec = torch.randn(1000)
    h = header(1000, shard_bytes=1025)  # 1025 is no multiple of 4: shards split float32 elements
    writer = codec.ShardAssembler(h)
    for f in codec.encode(h, codec.le_bytes(vec), 1025)[1:]:
        writer.add(codec.decode_frame(f))
    received = writer.vector()
    assert torch.equal(received.tensor(), vec)
    out = torch.ones(1000)
    received.add_to(out, 0.5)
    assert torch.allclose(out, 1 + 0.5 * vec)


# -- frames made on demand (issue 11 item 3) ---------------------------------------------------------------
def test_outgoing_message_gives_every_link_the_encoded_frames_and_keeps_only_what_is_still_due() -> None:
    vec = torch.randn(2500)
    h = header(2500, shard_bytes=1024)
    want = codec.encode(h, codec.le_bytes(vec), 1024)
    message = codec.OutgoingMessage(h, codec.le_bytes(vec), 1024)
    assert message.nbytes == sum(len(f) for f in want)
    fast, slow = message.subscribe(), message.subscribe()
    got_fast = list(fast)  # the fast link runs ahead: every shard it built waits for the slow one
    assert got_fast == want and len(message._frames) == h.shard_count
    got_slow = [next(slow) for _ in range(3)]  # header + shards 0 and 1: those two are dropped
    assert sorted(message._frames) == list(range(2, h.shard_count))
    got_slow += list(slow)
    assert got_slow == want and message._frames == {}  # nobody needs anything: nothing is kept
    late = message.subscribe()  # a link that comes late rebuilds the same bytes
    assert list(late) == want


def test_a_message_being_written_sends_each_shard_once_it_is_final() -> None:
    """A payload still being written (compressed gossip's streamed encoding) goes out shard by shard as its
    writer reports progress: a link reading ahead waits for the bytes, so every frame carries the final ones;
    a writer that fails releases the links with an error instead of sending what it had not written."""
    final = torch.randn(2500)
    h = header(2500, shard_bytes=1024)  # 10 000 bytes: 10 shards of 1 KiB
    want = codec.encode(h, codec.le_bytes(final), 1024)
    vec = torch.full((2500,), float("nan"))  # not yet written
    filling = outgoing.Filling(2500)
    message = codec.OutgoingMessage(h, codec.le_bytes(vec), 1024, filling=filling, needs=lambda end: -(-end // 4))
    got: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()

    def link() -> None:  # a link's sender thread, as transport._Stream reads a queued message
        try:
            for frame in message.subscribe():
                got.put(frame)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            got.put(exc)

    reader = threading.Thread(target=link, daemon=True)
    reader.start()
    assert got.get(timeout=30) == want[0]  # the header needs no payload
    for lo in range(0, 2500, 700):  # the writer's chunks, not aligned with the shards
        hi = min(2500, lo + 700)
        vec[lo:hi] = final[lo:hi]
        filling.advance(hi)
    frames = [got.get(timeout=30) for _ in want[1:]]
    reader.join(timeout=30)
    assert frames == want[1:]  # built after their bytes were written: no NaN went out

    half = torch.full((2500,), float("nan"))
    failing = outgoing.Filling(2500)
    message = codec.OutgoingMessage(h, codec.le_bytes(half), 1024, filling=failing, needs=lambda end: -(-end // 4))
    reader = threading.Thread(target=link, daemon=True)
    reader.start()
    assert got.get(timeout=30) == want[0]
    half[:600] = final[:600]
    failing.advance(600)  # shards 0 and 1 (bytes 0..2047) are final, shard 2 is not
    assert [got.get(timeout=30) for _ in range(2)] == want[1:3]
    failing.fail()
    error = got.get(timeout=30)
    assert isinstance(error, RuntimeError) and "failed" in str(error)
    message.detach()  # builds nothing from the half-written payload
    with pytest.raises(RuntimeError):
        list(message.subscribe())
    reader.join(timeout=30)
    with pytest.raises(RuntimeError, match="did not reach"):
        outgoing.Filling(10).wait(5, timeout=0.01)  # the bound on a writer that never comes
    head = outgoing.Filling(10)  # bytes that need no element, only the writer's first report (int8's scales)
    with pytest.raises(RuntimeError, match="did not reach"):
        head.wait(0, timeout=0.01)
    head.advance(0)
    head.wait(0, timeout=0.01)


def test_outgoing_message_detach_keeps_what_was_due_and_ignores_later_changes_of_the_payload() -> None:
    vec = torch.randn(2500)
    h = header(2500, shard_bytes=1024)
    want = codec.encode(h, codec.le_bytes(vec), 1024)
    message = codec.OutgoingMessage(h, codec.le_bytes(vec), 1024)
    closed, slow = message.subscribe(), message.subscribe()
    closed.close()  # a link that did not take the message: it holds nothing back
    first = [next(slow) for _ in range(4)]
    message.detach()
    vec.fill_(7.0)  # the caller changes its row once mix() returned
    assert first + list(slow) == want
    with pytest.raises(RuntimeError, match="detached"):
        list(message.subscribe())
