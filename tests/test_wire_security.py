"""Mutual TLS and message validation against a real gRPC server on loopback (port 0).

The server is a GrpcMixer "a" in a federation {a, b, c}; the tests speak to it as "b" (or as intruders)
over raw client streams, so they can send exactly the malformed frames they want.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from p2pgan.security.certs import fingerprint, identity_dns, make_federation
from p2pgan.wire import codec, transport
from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
from p2pgan.wire.mixer import GrpcMixer
from p2pgan.wire.v1 import gossip_pb2 as pb

pytestmark = pytest.mark.timeout(120)

DIM = 1000
DIGEST = "layout-v1"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.fed = f"sec-{secrets.token_hex(3)}"
        self.tls = make_federation(tmp / "good", self.fed, ["a", "b", "c", "mallory"])
        # another CA that even uses the same federation name and peer id
        self.evil = make_federation(tmp / "evil", self.fed, ["b"])["b"]
        # c never sends: each mix waits this long for it, then drops it
        net = NetworkConfig(federation=self.fed, peer_id="a", tls=self.tls["a"], rounds=1, round_timeout_s=0.5)
        self.mixer = GrpcMixer(net, dim=DIM, layout_digest=DIGEST)
        self.mixer.join(tuple(PeerEntry(p, "127.0.0.1", self.mixer.port if p == "a" else 1) for p in "abc"))

    def channel(self, tls: TLSFiles | None, *, expect: str = "a") -> grpc.Channel:
        return transport.open_channel(PeerEntry(expect, "127.0.0.1", self.mixer.port), self.fed, tls)

    def push(self, frames: list[bytes], tls: TLSFiles | None = None, *, unlimited: bool = False) -> pb.PushSummary:
        tls = self.tls["b"] if tls is None else tls
        ch = (
            grpc.secure_channel(f"127.0.0.1:{self.mixer.port}", transport.channel_credentials(tls), options=[
                ("grpc.ssl_target_name_override", identity_dns(self.fed, "a")), ("grpc.max_send_message_length", -1)])
            if unlimited else self.channel(tls)
        )
        with ch:
            call = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                                   response_deserializer=pb.PushSummary.FromString)
            return call(iter(frames), timeout=10)

    def hello(self, tls: TLSFiles | None, *, expect: str = "a") -> pb.HelloReply:
        return hello(self.channel(tls, expect=expect), self.fed)


def hello(channel: grpc.Channel, federation: str) -> pb.HelloReply:
    with channel:
        call = channel.unary_unary(transport.HELLO_METHOD, request_serializer=pb.HelloRequest.SerializeToString,
                                   response_deserializer=pb.HelloReply.FromString)
        return call(pb.HelloRequest(federation=federation, sender="b"), timeout=10)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.mixer.close()


def message(env: Env, vec: torch.Tensor | None = None, *, shard_bytes: int = 1024, **over: object) -> list[bytes]:
    vec = torch.randn(DIM) if vec is None else vec
    fields = dict(federation=env.fed, sender="b", step=0, round=0, layout_digest=DIGEST, dtype="float32",
                  element_count=DIM, shard_count=codec.shard_count(DIM * 4, shard_bytes))
    fields.update(over)
    return codec.encode(codec.MessageHeader(**fields), codec.le_bytes(vec), shard_bytes)  # type: ignore[arg-type]


def refused(env: Env, frames: list[bytes], code: grpc.StatusCode, words: str, tls: TLSFiles | None = None,
            *, unlimited: bool = False) -> None:
    with pytest.raises(grpc.RpcError) as info:
        env.push(frames, tls, unlimited=unlimited)
    assert info.value.code() == code, info.value.details()
    assert words in info.value.details()


def assert_still_serving(env: Env, step: int = 0) -> None:
    """A correct message from b is accepted and mixed: the server survived and the model was not touched."""
    vec = torch.randn(DIM)
    assert env.push(message(env, vec, step=step)).messages == 1
    x = torch.randn(1, DIM)
    y = env.mixer.mix(x, step)  # ring of 3: a averages itself, b and c (c is silent: dropped after deadline)
    torch.testing.assert_close(y[0], x[0] * (2 / 3) + vec / 3, rtol=1e-5, atol=1e-5)


def test_malformed_messages_are_refused_and_server_keeps_serving(env: Env) -> None:
    ok = message(env)
    nan = torch.randn(DIM)
    nan[7] = math.nan
    cases = [
        (message(env, sender="zed"), grpc.StatusCode.PERMISSION_DENIED, "not a member"),
        (message(env, federation="other"), grpc.StatusCode.PERMISSION_DENIED, "federation"),
        (message(env, sender="c"), grpc.StatusCode.PERMISSION_DENIED, "does not match the TLS identity"),
        (message(env, layout_digest="layout-v2"), grpc.StatusCode.INVALID_ARGUMENT, "layout digest"),
        (message(env, element_count=DIM + 1), grpc.StatusCode.INVALID_ARGUMENT, "elements"),
        (ok[:1] + ok[2:], grpc.StatusCode.INVALID_ARGUMENT, "arrived where shard 0 was due"),
        (ok[:-1], grpc.StatusCode.INVALID_ARGUMENT, "stream ended after"),
        (message(env, shard_count=1), grpc.StatusCode.INVALID_ARGUMENT, "add up"),
        (message(env, nan), grpc.StatusCode.INVALID_ARGUMENT, "non-finite"),
        (message(env, element_count=codec.MAX_ELEMENTS + 1), grpc.StatusCode.INVALID_ARGUMENT, "outside"),
        (ok[1:], grpc.StatusCode.INVALID_ARGUMENT, "before any header"),
        ([b"\xff\xff\xff garbage"], grpc.StatusCode.INVALID_ARGUMENT, "undecodable"),
        (ok + ok[:1], grpc.StatusCode.INVALID_ARGUMENT, "duplicate"),  # leaves (0, 0, b) held
    ]
    for frames, code, words in cases:
        refused(env, frames, code, words)
    # a frame over the server's message limit is refused by gRPC itself, before our code sees it
    big = codec.shard_frame(0, memoryview(bytes(codec.MAX_SHARD_BYTES + 4096)))
    refused(env, message(env, step=1)[:1] + [big], grpc.StatusCode.RESOURCE_EXHAUSTED, "", unlimited=True)
    assert_still_serving(env, step=1)
    # now that a has mixed step 1, a message far ahead of ours is not held (no memory for it) but heard:
    # that is how a peer that fell behind learns the federation's step
    assert env.push(message(env, step=100)).messages == 0
    assert env.mixer.membership.furthest()[0] == (100, "b")
    assert env.hello(env.tls["b"]).peer_id == "a"


def _flip_a_data_bit(frames: list[bytes]) -> list[bytes]:
    """The message with one bit of shard 0's data flipped after its checksum was computed."""
    return [frames[0], frames[1][:-1] + bytes([frames[1][-1] ^ 1]), *frames[2:]]


def test_shard_checksums_are_verified_on_insecure_links_only(env: Env, tmp_path: Path) -> None:
    """Over mutual TLS the records authenticate every byte, so a member's shard is not hashed again (a bad
    checksum can only come from the member itself, which could as well compute a good one); an insecure
    link has nothing else and keeps refusing it."""
    assert env.push(_flip_a_data_bit(message(env))).messages == 1  # TLS: not verified again
    net = NetworkConfig(federation=env.fed, peer_id="a", insecure=True, rounds=1, round_timeout_s=0.5)
    with GrpcMixer(net, dim=DIM, layout_digest=DIGEST) as plain:
        plain.join(tuple(PeerEntry(p, "127.0.0.1", plain.port if p == "a" else 1) for p in "abc"))
        with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
            push = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                                   response_deserializer=pb.PushSummary.FromString)
            with pytest.raises(grpc.RpcError) as info:
                push(iter(_flip_a_data_bit(message(env))), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "checksum" in info.value.details()
            assert push(iter(message(env)), timeout=10).messages == 1  # and the intact message is accepted


def test_other_ca_is_refused(env: Env) -> None:
    with pytest.raises(grpc.RpcError) as info:
        env.push(message(env), tls=env.evil)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert_still_serving(env)


def test_right_ca_but_not_in_roster_is_refused(env: Env) -> None:
    refused(env, message(env, sender="mallory"), grpc.StatusCode.PERMISSION_DENIED, "not a member", env.tls["mallory"])
    with pytest.raises(grpc.RpcError) as info:
        env.hello(env.tls["mallory"])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert_still_serving(env)


def test_plaintext_client_is_refused(env: Env) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{env.mixer.port}") as ch:
        call = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None, response_deserializer=pb.PushSummary.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(iter(message(env)), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert_still_serving(env)


def test_client_checks_the_server_identity(env: Env) -> None:
    """Dialing a's address while expecting c fails the handshake: c's identity name is not in a's certificate."""
    with pytest.raises(grpc.RpcError) as info:
        env.hello(env.tls["b"], expect="c")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_fingerprint_pin_mismatch_is_refused(tmp_path: Path) -> None:
    fed = f"pin-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path, fed, ["a", "b"])
    wrong = fingerprint(tls["a"].cert.read_bytes())  # a's fingerprint pinned for b
    with GrpcMixer(NetworkConfig(federation=fed, peer_id="a", tls=tls["a"]), dim=DIM) as m:
        m.join((PeerEntry("a", "127.0.0.1", m.port), PeerEntry("b", "127.0.0.1", 1, wrong)))
        with pytest.raises(grpc.RpcError) as info:
            hello(transport.open_channel(PeerEntry("a", "127.0.0.1", m.port), fed, tls["b"]), fed)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "pinned" in info.value.details()
