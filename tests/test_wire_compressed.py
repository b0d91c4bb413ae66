"""Compressed gossip on the real wire (issue 18): mutual-TLS gRPC mixers on loopback, OS processes for the
cross-process check, a real client holding a real member certificate for the malformed messages."""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from p2pgan.compression.compressors import INT8_BLOCK, Int8Blocks
from p2pgan.compression.topk import TOPK_SPAN, TopK
from p2pgan.errors import ConfigError
from p2pgan.wire import codec
from p2pgan.wire.config import NetworkConfig
from p2pgan.wire.mixer import GrpcMixer
from p2pgan.wire.selftest import run_selftest
from tests.mixers import mixer_federations
from tests.test_wire_security import Env, refused

DIM = 3000


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Callable[..., list[GrpcMixer]]]:
    """Factory of M joined mixers (ring) with the given network settings, not yet ready (:func:`_ready`);
    closes them all at the end."""
    with mixer_federations(tmp_path, "cmp", DIM) as make:
        yield lambda m, rounds, *, each=None, **net: make(m, each=each, ready=False, topology="ring", rounds=rounds,
                                                           **net)


def _ready(mixers: list[GrpcMixer]) -> list[GrpcMixer]:
    with concurrent.futures.ThreadPoolExecutor(len(mixers)) as pool:
        list(pool.map(lambda m: m.wait_ready(30), mixers))
    return mixers


def mix_all(mixers: list[GrpcMixer], x: torch.Tensor, step: int) -> torch.Tensor:
    handles = [mx.start(x[mx.rank : mx.rank + 1], step) for mx in mixers]
    return torch.cat([h.wait() for h in handles])


@pytest.mark.timeout(120)
def test_identity_compression_with_step_one_is_raw_gossip_bit_for_bit(federation) -> None:
    raw = _ready(federation(3, 2))
    ident = _ready(federation(3, 2, compression="identity", consensus_step=1.0))
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(3, DIM, generator=g)
        a, b = mix_all(raw, x, step), mix_all(ident, x, step)
        assert torch.equal(a, b)
    assert all(m.stats.dropped == 0 for m in raw + ident)
    assert all(m.compressed is not None and m.compressed.deltas_sent == 0 for m in ident)  # keys, every round


@pytest.mark.timeout(60)
def test_hello_refuses_a_member_with_another_compression(federation) -> None:
    mixers = federation(2, 1, each=[{"compression": "int8"}, {"compression": "topk:0.01"}])
    with pytest.raises(ConfigError, match="mixing.compression 'topk:0.01'.*ours is 'int8'"):
        mixers[0].wait_ready(20)


def _agree(digests: dict[str, list]) -> int:
    """Every copy a peer holds of a neighbour equals (same version, same digest) the neighbour's own public copy
    at that version, and after every round it is at the version the neighbour reached in that round.
    Returns the number of (round, copy) pairs checked."""
    own = {(pid, tuple(rec[2])[0]): tuple(rec[2])[1] for pid, recs in digests.items() for rec in recs}
    own_at = {(pid, rec[0], rec[1]): tuple(rec[2])[0] for pid, recs in digests.items() for rec in recs}
    checked = 0
    for recs in digests.values():
        for step, r, _, theirs in recs:
            for sender, (version, dig) in theirs.items():
                assert own[sender, version] == dig, (sender, version)
                assert own_at[sender, step, r] == version, (sender, step, r)
                checked += 1
    return checked


@pytest.mark.timeout(120)
def test_public_copies_equal_on_both_ends_after_every_round_across_processes() -> None:
    report = run_selftest(3, "ring", 2, size_mb=0.02, steps=4, compression="int8")
    digests = {s["id"]: s["copy_digests"] for s in report["per_peer"]}
    assert all(len(d) == 8 for d in digests.values())  # 4 steps of 2 rounds
    assert _agree(digests) == 3 * 8 * 2  # each peer holds copies of its two ring neighbours
    assert report["dropped"] == 0 and report["max_abs_error"] < 0.1  # int8 gossip stays near the exact mix


@pytest.mark.timeout(180)
def test_a_restarted_peer_is_resynchronised_by_keys(federation, tmp_path: Path) -> None:
    """p1 goes away and comes back as a new process would: a new mixer on the same port with no copies. Keys
    on the re-opened links (key_interval 0: no periodic keys to hide behind) make every copy agree again."""
    mixers = _ready(federation(3, 1, compression="int8", key_interval=0, round_timeout_s=5.0))
    for m in mixers:
        m.compressed.record_digests = True
    g = torch.Generator().manual_seed(2)
    for step in range(3):
        mix_all(mixers, torch.randn(3, DIM, generator=g), step)
    keys_before = [m.compressed.keys_sent for m in mixers]
    old = mixers[1]
    net, roster = old.net, tuple(old.membership.entries.values())
    old.close()
    reborn = GrpcMixer(NetworkConfig(**{**vars(net), "listen_port": old.port}), dim=DIM)
    try:
        reborn.join(roster)
        reborn.compressed.record_digests = True
        mixers[1] = reborn
        reborn.wait_ready(30)
        synced = False
        for step in range(3, 15):
            mix_all(mixers, torch.randn(3, DIM, generator=g), step)
            last = {m.net.peer_id: m.compressed.digests[-1] for m in mixers}
            synced = all(len(rec[3]) == 2 and all(v == last[s][2] for s, v in rec[3].items()) for rec in last.values())
            if synced:
                break
        assert synced, "copies did not agree again after the restart"
        assert mixers[0].compressed.keys_sent > keys_before[0] and mixers[2].compressed.keys_sent > keys_before[2]
        assert _agree({m.net.peer_id: [r for r in m.compressed.digests if r[0] >= step] for m in mixers}) == 6
    finally:
        reborn.close()


# -- malformed compressed messages: a real member (b) with its real certificate pushes them ------------------
def _frames(env: Env, encoding: str, payload: torch.Tensor, **over: object) -> list[bytes]:
    data = codec.le_bytes(payload)
    fields = dict(federation=env.fed, sender="b", step=0, round=0, layout_digest="layout-v1",
                  dtype=codec.ENCODING_DTYPES.get(encoding, "float32"), element_count=1000, encoding=encoding,
                  copy_version=5,
                  shard_count=codec.shard_count(len(data), 1024))
    fields.update(over)
    return codec.encode(codec.MessageHeader(**fields), data, 1024)  # type: ignore[arg-type]


@pytest.fixture
def compressed_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Env]:
    real = NetworkConfig.__init__

    def with_compression(self, *args, **kwargs):  # Env's mixer "a", with the compression under test
        kwargs.setdefault("compression", request.param)
        real(self, *args, **kwargs)

    monkeypatch.setattr(NetworkConfig, "__init__", with_compression)
    e = Env(tmp_path)
    monkeypatch.undo()
    try:
        yield e
    finally:
        e.mixer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressed_env", ["int8"], indirect=True)
def test_malformed_int8_messages_are_refused_with_invalid_argument(compressed_env: Env) -> None:
    env = compressed_env
    good = Int8Blocks().encode(torch.randn(1000)).payload
    assert env.push(_frames(env, "key", torch.randn(1000))).messages == 1
    assert env.push(_frames(env, "int8", good, block_elements=INT8_BLOCK, copy_version=6, step=1)).messages == 1
    for step in (0, 1):  # a mixes them (c is silent: dropped at the deadline); its copy of b is at version 6
        env.mixer.mix(torch.randn(1, 1000), step)
    assert env.mixer.compressed.copies.version("b") == 6

    def bad_scale(value: float) -> torch.Tensor:
        p = good.clone()
        p[:4] = torch.tensor([value], dtype=torch.float32).view(torch.uint8)
        return p

    code = good.clone()
    code[-1] = 128  # int8 -128
    cases = [
        (_frames(env, "int8", bad_scale(math.nan), block_elements=INT8_BLOCK, step=2), "scale"),
        (_frames(env, "int8", bad_scale(-2.0), block_elements=INT8_BLOCK, step=2), "scale"),
        (_frames(env, "int8", bad_scale(1e35), block_elements=INT8_BLOCK, step=2), "scale"),
        (_frames(env, "int8", code, block_elements=INT8_BLOCK, step=2), "-128"),
        (_frames(env, "int8", good, block_elements=8, step=2), "block_elements"),
        (_frames(env, "int8", good[:-5], block_elements=INT8_BLOCK, step=2), "bytes"),  # counts do not add up
        (_frames(env, "int8", good, block_elements=INT8_BLOCK, dtype="bfloat16", step=2), "dtype float32"),
        (_frames(env, "topk-spans", TopK(0.01).encode(torch.randn(1000)).payload, value_count=10,
                 block_elements=TOPK_SPAN, step=2), "encoding topk-spans"),
        (_frames(env, "raw", torch.randn(1000), step=2), "compressed"),
    ]
    for frames, words in cases:
        refused(env, frames, grpc.StatusCode.INVALID_ARGUMENT, words)
    assert env.push(_frames(env, "int8", good, block_elements=INT8_BLOCK, copy_version=7, step=2)).messages == 1
    env.mixer.mix(torch.randn(1, 1000), 2)
    assert env.mixer.compressed.copies.version("b") == 7  # none of the refused messages touched the copy


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressed_env", ["topk:0.01"], indirect=True)
def test_malformed_topk_messages_are_refused_with_invalid_argument(compressed_env: Env) -> None:
    env = compressed_env

    def topk(indices: list[int], values: list[float] | None = None) -> torch.Tensor:
        vals = torch.tensor(values if values is not None else [1.0] * len(indices), dtype=torch.float32)
        return torch.cat([torch.tensor(indices, dtype=torch.int32).view(torch.uint8), vals.view(torch.uint8)])

    def spans(*parts: tuple[list[int], list[float]]) -> torch.Tensor:  # a topk-spans payload: counts, spans
        counts = torch.tensor([len(i) for i, _ in parts], dtype=torch.int32).view(torch.uint8)
        return torch.cat([counts, *[topk(i, v) for i, v in parts]])

    key = torch.randn(1000)
    assert env.push(_frames(env, "key", key)).messages == 1
    # the legacy layout (every index, then every value) moves the copy as the span layout does
    assert env.push(_frames(env, "topk", topk([1, 2, 999]), value_count=3, copy_version=6, step=1)).messages == 1
    for step in (0, 1):  # a mixes them (c is silent: dropped at the deadline)
        env.mixer.mix(torch.randn(1, 1000), step)
    want = key.clone()
    want[[1, 2, 999]] += 1.0
    assert env.mixer.compressed.copies.version("b") == 6 and torch.equal(env.mixer.compressed.copies.get("b"), want)
    good = spans(([3, 400], [2.0, -1.0]), ([500, 998], [0.5, 4.0]))  # spans of 500, two pairs each
    assert env.push(_frames(env, "topk-spans", good, value_count=4, block_elements=500, copy_version=7,
                            step=2)).messages == 1
    env.mixer.mix(torch.randn(1, 1000), 2)
    want[[3, 400, 500, 998]] += torch.tensor([2.0, -1.0, 0.5, 4.0])
    assert env.mixer.compressed.copies.version("b") == 7 and torch.equal(env.mixer.compressed.copies.get("b"), want)
    inside = dict(value_count=4, block_elements=500, step=3)
    for frames, words in [
        (_frames(env, "topk-spans", spans(([3, 600], [1.0, 1.0]), ([700, 998], [1.0, 1.0])), **inside),
         "outside its 500 elements"),
        (_frames(env, "topk-spans", spans(([3, 4], [1.0, 1.0]), ([998, 700], [1.0, 1.0])), **inside),
         "strictly increasing"),
        (_frames(env, "topk-spans", good, value_count=4, block_elements=8, step=3), "block_elements 8"),
        (_frames(env, "topk-spans", good, value_count=3, block_elements=500, step=3), "bytes"),
        (_frames(env, "topk-spans", torch.cat([torch.tensor([-1, 5], dtype=torch.int32).view(torch.uint8),
                                               good[8:]]), **inside), "table"),
    ]:
        refused(env, frames, grpc.StatusCode.INVALID_ARGUMENT, words)
    cases = [
        (_frames(env, "topk", topk([1, 2, 1000]), value_count=3, step=1), "outside 0..999"),
        (_frames(env, "topk", topk([-5, 2, 3]), value_count=3, step=1), "outside 0..999"),
        (_frames(env, "topk", topk([3, 2, 4]), value_count=3, step=1), "strictly increasing"),
        (_frames(env, "topk", topk([2, 2, 4]), value_count=3, step=1), "strictly increasing"),
        (_frames(env, "topk", topk([1, 2, 3], [1.0, math.nan, 2.0]), value_count=3, step=1), "not finite"),
        (_frames(env, "topk", topk([1, 2, 3]), value_count=4, step=1), "bytes"),  # count and payload disagree
        (_frames(env, "topk", topk([1, 2, 3]), value_count=0, step=1), "value_count 0"),
        (_frames(env, "topk", topk([1] * 3), value_count=1001, step=1), "value_count 1001"),
    ]
    for frames, words in cases:
        refused(env, frames, grpc.StatusCode.INVALID_ARGUMENT, words)


@pytest.mark.timeout(60)
def test_a_federation_of_one_compressing_peer_keeps_its_vector(federation) -> None:
    (alone,) = _ready(federation(1, 2, compression="int8"))
    x = torch.randn(1, DIM)
    assert torch.equal(alone.mix(x, 0), x) and torch.equal(alone.mix(x, 1), x)


def _mixes_as_in_process(wire: list[GrpcMixer], local: object, dim: int, *, steps: int, seed: int) -> None:
    """``steps`` rounds of vectors that drift as training moves them, mixed by the network mixers ``wire`` and by
    the in-process ``local`` (a ChocoMixer): the same numbers to float32 rounding, and the mixing moves them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(wire), dim, generator=g)
    for step in range(steps):
        x = x + 0.1 * torch.randn(len(wire), dim, generator=g)
        a, b = mix_all(wire, x, step), local.mix(x, step)  # type: ignore[attr-defined]
        assert torch.allclose(a, b, rtol=0, atol=1e-5), (step, float((a - b).abs().max()))
        assert not torch.equal(b, x)


@pytest.mark.timeout(120)
def test_scales_that_span_several_shards_go_out_and_in_whole(tmp_path: Path) -> None:
    """An int8 payload whose scales fill more than one shard (a 67 MB model at the overlap's 256 KiB shards;
    here 300 k elements at 4 KiB shards): the first shards leave only once every scale is written, and a
    receiver applying the message as it arrives gathers them all before the codes. The network mixer stays
    the in-process one to float32 rounding, and the copies moved while arriving."""
    from p2pgan.compression.choco import ChocoMixer
    from p2pgan.topology import make_topology

    dim = 300_000  # 1172 scales: 4.6 KiB of them
    with mixer_federations(tmp_path, "span", dim) as make:
        wire = make(3, topology="ring", rounds=1, compression="int8", consensus_step=0.5, key_interval=0,
                    shard_bytes=codec.MIN_SHARD_BYTES)
        local = ChocoMixer(make_topology("ring", 3, rounds=1), 1, Int8Blocks(), gamma=0.5)
        _mixes_as_in_process(wire, local, dim, steps=3, seed=5)
        assert all(m.stats.dropped == 0 for m in wire)
        assert sum(m.compressed.copies.arrived for m in wire if m.compressed is not None) >= 3 * 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "serial"])
def test_topk_goes_out_span_by_span_and_is_the_in_process_choco_mixer(tmp_path: Path, overlap: bool) -> None:
    """Top-k in spans of 4096 elements over shards of 4 KiB (each span's 205 pairs fill 1.6 KiB): with overlap
    the links send the first spans while the rest are chosen, and receivers apply each span as it is in. The
    network mixer computes the in-process ChocoMixer's numbers (to float32 rounding) either way, so every byte
    that left early was final, and every span applied early was the one sent."""
    from p2pgan.compression.choco import ChocoMixer
    from p2pgan.topology import make_topology

    dim = 100_000  # 25 spans, the last one short
    with mixer_federations(tmp_path, "spans", dim) as make:
        wire = make(3, topology="ring", rounds=1, compression="topk:0.05", consensus_step=0.5, key_interval=0,
                    shard_bytes=codec.MIN_SHARD_BYTES, streaming=overlap)
        for m in wire:
            assert m.compressed is not None
            m.compressed.compressor.span = 4096
        local = ChocoMixer(make_topology("ring", 3, rounds=1), 1, TopK(0.05, span=4096), gamma=0.5)
        _mixes_as_in_process(wire, local, dim, steps=4, seed=6)
        assert all(m.stats.dropped == 0 and m.compressed is not None and m.compressed.deltas_sent == 2 * 3
                   for m in wire)
        # every delta (steps 1-3, 3 x 2 links) comes after a step every peer finished, into a free copy: with
        # overlap each moves its copy span by span as it arrives (18 of 18 here, run after run; a shard whose
        # claim meets another link's brief hold of the lock leaves it to the next, so most, not all, is bound)
        arrived = sum(m.compressed.copies.arrived for m in wire if m.compressed is not None)
        assert arrived > 3 * 3 if overlap else arrived == 0, arrived


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "serial"])
def test_int8_gossip_on_the_wire_is_the_in_process_choco_mixer(federation, overlap: bool) -> None:
    """scripts/exp_compression.py measures quality with peers in one process (ChocoMixer); that stands for
    the network only if the network's compressed rounds compute the same numbers: the same operators, the
    same copies, the same consensus step, the same keys (every key_interval-th step). They agree to float32
    rounding; an in-process mixer without the keys does not. With the round's CPU overlapping its link (sent
    while written, applied while arriving) and without (``mixing.streaming: false``; bench_wan's --serial rows)."""
    from p2pgan.compression.choco import ChocoMixer
    from p2pgan.topology import make_topology

    wire = _ready(federation(3, 2, compression="int8", consensus_step=0.5, key_interval=3, streaming=overlap))
    local = ChocoMixer(make_topology("ring", 3, rounds=2), 2, Int8Blocks(), gamma=0.5, key_interval=3)
    keyless = ChocoMixer(make_topology("ring", 3, rounds=2), 2, Int8Blocks(), gamma=0.5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, DIM, generator=g)
    for step in range(5):
        x = x + 0.1 * torch.randn(3, DIM, generator=g)  # a training step moves every vector
        a, b, c = mix_all(wire, x, step), local.mix(x, step), keyless.mix(x, step)
        assert torch.allclose(a, b, rtol=0, atol=1e-5), (step, float((a - b).abs().max()))
        assert not torch.equal(b, x)
        if step == 3:  # the key step: only the mixer that sends keys stays with the wire
            assert not torch.allclose(a, c, rtol=0, atol=1e-4)
    assert all(m.compressed is not None and m.compressed.deltas_sent > 0 and m.compressed.keys_sent > 2 for m in wire)
    # round 0 of steps 1, 2 and 4 (deltas after a step every peer finished): every neighbour's copy is free
    # when its delta arrives, so with overlap each of the 3 x 2 links applied at least those while arriving
    arrived = sum(m.compressed.copies.arrived for m in wire if m.compressed is not None)
    assert arrived >= 3 * 2 * 3 if overlap else arrived == 0, arrived
    # what one peer sends one neighbour: rounds of int8 codes and scales, and two rounds of float32 keys
    keys = 2 * 4 * DIM
    assert local.bytes_sent > keys and local.bytes_sent - keys == 8 * local.bytes_per_round, local.bytes_sent
