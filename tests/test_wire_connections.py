"""Several gRPC connections per neighbour (mixing.connections): messages striped over real TCP + TLS sessions.

In-process mixers (real servers on port 0, mutual TLS) check that striping changes no bit of the result,
raw and compressed; selftest processes check that each connection is its own TCP session; a real member
pushing hand-made parts checks that malformed striping is refused; and a compressed federation of real
processes, one of them killed with SIGKILL and restarted, checks that keys resynchronise the copies.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from p2pgan.daemon.config import load_config, network_config
from p2pgan.errors import ConfigError
from p2pgan.security.certs import make_federation
from p2pgan.spawn import SPAWN_OPTIONS
from p2pgan.wire import codec, transport
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.mixer import GrpcMixer
from p2pgan.wire.selftest import run_selftest
from p2pgan.wire.v1 import gossip_pb2 as pb
from tests.mixers import mixer_federations
from tests.test_daemon_config import base_doc, folder, write  # noqa: F401
from tests.test_wire_security import DIGEST, DIM as SEC_DIM, Env, assert_still_serving, env, refused  # noqa: F401

DIM = 6000  # 24000 bytes: 6 shards of 4096 bytes
SHARD = 4096
WORKER = Path(__file__).with_name("gossip_worker.py")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Any]:
    """Factory of 3 joined, ready mixers in a ring; closes them all at the end."""
    with mixer_federations(tmp_path, "conn", DIM) as make:
        yield lambda **net: make(3, shard_bytes=SHARD, round_timeout_s=20.0, **net)


def _run(mixers: list[GrpcMixer], steps: int) -> list[torch.Tensor]:
    out = []
    for step in range(steps):
        x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(step))
        handles = [mx.start(x[mx.rank : mx.rank + 1], step) for mx in mixers]
        out.append(torch.cat([h.wait() for h in handles]))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", ["none", "int8"])
def test_striping_over_connections_changes_no_bit(federation, compression: str) -> None:
    results = {}
    for connections in (1, 2, 3):
        mixers = federation(rounds=2, compression=compression, connections=connections)
        results[connections] = _run(mixers, 3)
        assert all(mx.stats.dropped == 0 for mx in mixers), connections
        if connections > 1:  # every neighbour's vector came as `connections` parts on as many streams
            assert all(len(mx.service.streams.addresses(n)) == connections
                       for mx in mixers for n in mx.members if n != mx.net.peer_id)
    for connections in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[connections])), connections


@pytest.mark.timeout(120)
def test_each_connection_is_its_own_tcp_session_across_processes() -> None:
    report = run_selftest(3, size_mb=0.05, steps=3, shard_bytes=SHARD, connections=3)
    assert report["dropped"] == 0 and report["max_abs_error"] < 1e-5
    for peer in report["per_peer"]:
        for member, addresses in peer["push_addresses"].items():
            if member != peer["id"]:  # three streams from three client ports: three TCP (and TLS) sessions
                assert len(set(addresses)) == 3 and all(a.startswith("ipv4:127.0.0.1:") for a in addresses), peer


def test_hello_refuses_a_member_with_another_connection_count(tmp_path: Path) -> None:
    fed = "conn-hello"
    tls = make_federation(tmp_path, fed, ["a", "b"])
    a = GrpcMixer(NetworkConfig(federation=fed, peer_id="a", tls=tls["a"], connections=2), dim=10)
    b = GrpcMixer(NetworkConfig(federation=fed, peer_id="b", tls=tls["b"], connections=3), dim=10)
    try:
        roster = (PeerEntry("a", "127.0.0.1", a.port), PeerEntry("b", "127.0.0.1", b.port))
        a.join(roster)
        b.join(roster)
        with pytest.raises(ConfigError, match="peer 'b' keeps mixing.connections 3, ours is 2; every member needs"):
            a.wait_ready(30)
        # the slow-loris bound follows the setting: a member keeps one stream per connection, plus one
        assert (a.service.streams.per_member, b.service.streams.per_member) == (3, 4)
    finally:
        a.close()
        b.close()
    with pytest.raises(ConfigError, match=r"network.connections: 0 is outside 1\.\.16"):
        GrpcMixer(NetworkConfig(federation=fed, peer_id="a", tls=tls["a"], connections=0), dim=10)


@pytest.mark.parametrize(("value", "words"), [(0, ">= 1"), (17, "<= 16"), ("two", "must be an integer")])
def test_connections_config_field(folder: Path, value: object, words: str) -> None:  # noqa: F811
    doc = base_doc()
    assert network_config(load_config(write(folder, doc))).connections == 1
    doc.setdefault("mixing", {})["connections"] = 4
    assert network_config(load_config(write(folder, doc))).connections == 4
    doc["mixing"]["connections"] = value
    path = write(folder, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "mixing.connections" in str(info.value) and words in str(info.value)
    assert "\n" not in str(info.value)


# -- malformed striping: the real member b, with its real certificate, pushes hand-made parts ------------------
def _header(env: Env, **over: Any) -> codec.MessageHeader:
    fields = dict(federation=env.fed, sender="b", step=0, round=0, layout_digest=DIGEST, dtype="float32",
                  element_count=SEC_DIM, shard_count=codec.shard_count(SEC_DIM * 4, 1024))
    fields.update(over)
    return codec.MessageHeader(**fields)  # type: ignore[arg-type]


def _parts(env: Env, vec: torch.Tensor, parts: int, **over: Any) -> list[list[bytes]]:
    message = codec.OutgoingMessage(_header(env, **over), codec.le_bytes(vec), 1024)
    return [list(message.subscribe(c, parts)) for c in range(parts)]


@pytest.mark.timeout(60)
def test_malformed_parts_are_refused_and_good_parts_assemble(env: Env) -> None:  # noqa: F811
    vec = torch.randn(SEC_DIM)
    shards = codec.shard_count(SEC_DIM * 4, 1024)
    p0, p1 = _parts(env, vec, 2)
    cases = [
        ([_header(env, part=2, parts=2).to_frame()], "part 2 of 2"),  # part beyond parts
        ([_header(env, part=1).to_frame()], "part 1 of a message that is not striped"),
        (_parts(env, vec, shards + 1)[0][:1], f"the shard count {shards}"),  # more parts than shards
        (_parts(env, vec, 17)[0][:1], "parts up to 16"),
        ([p0[0], p1[1]], "shard 1 arrived on part 0 of 2 where shard 0 was due"),  # a shard of another stride
        ([p0[0], p0[1], p0[1]], "shard 0 arrived on part 0 of 2 where shard 2 was due"),  # repeated
        (p0[:-1], "stream ended inside part 0 of 2"),
    ]
    for frames, words in cases:
        refused(env, frames, grpc.StatusCode.INVALID_ARGUMENT, words)
    # both parts on one stream: the same part twice is refused; a part whose header differs is refused
    refused(env, [*p0, *p0], grpc.StatusCode.INVALID_ARGUMENT, "part 0 of 2 arrived twice")
    refused(env, [*_parts(env, vec, 2, step=1)[0], *_parts(env, vec, 2, step=1, copy_version=3)[1]],
            grpc.StatusCode.INVALID_ARGUMENT, "part 1 has a header that differs from its other parts'")
    # a stream that goes wrong after its part was done leaves that (good) part in place ...
    refused(env, [*p0, p0[1]], grpc.StatusCode.INVALID_ARGUMENT, "shard 0 arrived before any header")
    # ... and the other good part, on another stream, completes the message the mixer takes
    assert env.push(p1).messages == 1
    x = torch.randn(1, SEC_DIM)
    torch.testing.assert_close(env.mixer.mix(x, 0)[0], x[0] * (2 / 3) + vec / 3, rtol=1e-5, atol=1e-5)
    assert_still_serving(env, step=2)


# -- a compressed federation of real processes: one killed with SIGKILL and restarted ---------------------------
class _Peer:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, **SPAWN_OPTIONS)
        self.port = int(json.loads(self._line())["port"])

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"gossip worker exited (rc {self.proc.wait()})")
        return line

    def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        return json.loads(self._line())  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _step(peers: dict[str, _Peer], k: int) -> dict[str, dict[str, Any]]:
    for p in peers.values():
        p.tell(str(k))
    return {pid: p.reply() for pid, p in peers.items()}


def _copies_agree(replies: dict[str, dict[str, Any]]) -> bool:
    """Every copy a peer holds of a neighbour is that neighbour's own public copy (version and digest)."""
    return all(len(r["copies"]) == 2 and all(v == replies[n]["own"] for n, v in r["copies"].items())
               for r in replies.values())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("connections", [1, 2])
def test_a_peer_killed_and_restarted_is_resynchronised_by_keys(tmp_path: Path, connections: int) -> None:
    """key_interval 0: only (re)connects send keys, so nothing but the restart's keys can bring the copies back."""
    fed = f"restart-{secrets.token_hex(3)}"
    ids = ["p0", "p1", "p2"]
    tls = make_federation(tmp_path / "fed", fed, ids)
    configs = {}
    for pid in ids:
        configs[pid] = tmp_path / f"{pid}.json"
        configs[pid].write_text(json.dumps({
            "federation": fed, "peer_id": pid, "tls": {k: str(v) for k, v in vars(tls[pid]).items()},
            "round_timeout_s": 10.0, "shard_bytes": SHARD, "dim": DIM, "compression": "int8", "key_interval": 0,
            "connections": connections}))
    peers: dict[str, _Peer] = {}
    try:
        for pid in ids:
            peers[pid] = _Peer(configs[pid])
        roster = json.dumps([[pid, "127.0.0.1", p.port] for pid, p in peers.items()])
        for p in peers.values():
            p.tell(roster)
        for k in range(3):
            replies = _step(peers, k)
            assert _copies_agree(replies), (k, replies)
        keys = {pid: replies[pid]["keys_sent"] for pid in ("p0", "p2")}
        old = peers["p1"]
        old_pid = old.proc.pid
        old.kill()  # SIGKILL: no leave, no flush; its neighbours find broken streams
        survivors = {pid: peers[pid] for pid in ("p0", "p2")}
        alone = _step(survivors, 3)
        assert all(r["dropped"] > replies[pid]["dropped"] for pid, r in alone.items()), alone  # p1 was gone
        cfg = json.loads(configs["p1"].read_text())
        configs["p1"].write_text(json.dumps({**cfg, "listen_port": old.port}))  # the roster's address
        peers["p1"] = reborn = _Peer(configs["p1"])
        assert reborn.proc.pid != old_pid and reborn.port == old.port
        reborn.tell(roster)
        synced_at = None
        for k in range(4, 12):
            replies = _step(peers, k)
            if _copies_agree(replies):
                synced_at = k
                break
        assert synced_at is not None, f"copies did not agree again after the restart: {replies}"
        assert all(replies[pid]["keys_sent"] > keys[pid] for pid in keys), (keys, replies)
        replies = _step(peers, synced_at + 1)  # and they stay in step on deltas
        assert _copies_agree(replies), replies
    finally:
        for p in peers.values():
            p.kill()


@pytest.mark.timeout(120)
def test_a_member_keeps_at_most_connections_plus_one_streams(tmp_path: Path) -> None:
    """The slow-loris bound with mixing.connections 3: 20 silent Push streams with b's certificate, and
    each one beyond 3 + 1 replaces b's oldest (cancelled by the server)."""
    fed = "conn-loris"
    tls = make_federation(tmp_path, fed, ["a", "b", "c"])
    a = GrpcMixer(NetworkConfig(federation=fed, peer_id="a", tls=tls["a"], connections=3), dim=10)
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        release.wait(60)
        return
        yield  # a generator that sends nothing until released

    try:
        a.join(tuple(PeerEntry(p, "127.0.0.1", a.port if p == "a" else 1) for p in "abc"))
        ch = transport.open_channel(PeerEntry("a", "127.0.0.1", a.port), fed, tls["b"])
        push = ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                               response_deserializer=pb.PushSummary.FromString)
        done = threading.Semaphore(0)
        calls = [push.future(silent(), timeout=60) for _ in range(20)]
        for call in calls:
            call.add_done_callback(lambda _call: done.release())
        try:
            for _ in range(16):
                assert done.acquire(timeout=30)
            ended = [c for c in calls if c.done()]
            assert len(ended) == 16 and all(c.code() == grpc.StatusCode.CANCELLED for c in ended)
            assert not done.acquire(timeout=0.5)  # the newest four stay open
            assert len(a.service.streams.addresses("b")) == 4
        finally:
            release.set()
            for call in calls:
                call.cancel()
            ch.close()
    finally:
        a.close()
