"""The wire fuzzer's short form: mutated messages with a member's key into a running federation (issue 9)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_short_fuzz_run_against_real_daemons(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_wire.py"), "--messages", "150", "--seed", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "fuzz.json").read_text())
    assert sum(result["by_status"].values()) == 150
    assert result["crashes"] == 0 and result["internal"] == 0 and result["non_finite_models"] == 0
    assert len(result["by_mutation"]) == 9  # every kind of mutation was tried
    assert result["by_status"].get("INVALID_ARGUMENT", 0) > 50  # most mutations are refused as malformed
    for daemon in result["daemons"].values():
        assert daemon["final_model_finite"] and daemon["exit_code"] == 0 and daemon["tracebacks_in_log"] == 0
        assert daemon["steps_during_fuzz"] > 0  # the federation kept training


# -- the other direction: a malicious SERVER's replies (issue 16 item 6) ------------------------------------
class _LyingServer:
    """A real gRPC server holding a member certificate, whose Hello, FetchState and Push replies are whatever
    the test sets (raw bytes, so that they may be anything a hostile peer can put on the wire)."""

    def __init__(self, tls: Any) -> None:
        import grpc

        from p2pgan.wire import transport

        self.hello: bytes = b""
        self.state: list[bytes] = []
        self.push: bytes = b""
        handler = grpc.method_handlers_generic_handler(transport.SERVICE, {
            "Hello": grpc.unary_unary_rpc_method_handler(lambda req, ctx: self.hello),
            "FetchState": grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(list(self.state))),
            "Push": grpc.stream_unary_rpc_method_handler(lambda reqs, ctx: (sum(1 for _ in reqs), self.push)[1]),
        })
        self.server, self.port = transport.open_server("127.0.0.1", 0, [handler], tls, max_workers=8)


def _mutations(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """One hostile variant of a valid reply stream: bit flips, truncation, garbage, dropped, duplicated or
    swapped frames."""
    out = list(frames)
    kind = rng.randrange(6)
    i = rng.randrange(len(out))
    if kind == 0:
        b = bytearray(out[i])
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out[i] = bytes(b)
    elif kind == 1:
        out[i] = out[i][: rng.randrange(len(out[i]))]
    elif kind == 2:
        out[i] = rng.randbytes(rng.randint(0, 64))
    elif kind == 3:
        del out[i]
    elif kind == 4:
        out.insert(i, out[i])
    else:
        j = rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


@pytest.mark.timeout(240)
def test_malicious_server_replies_are_refused_cleanly(tmp_path: Path) -> None:
    """A member that answers Hello, FetchState and Push with lies or garbage: the honest client raises only
    the project's errors (or marks the member absent or a suspect), never crashes, adopts nothing unchecked,
    and a lying step never becomes the agreed step."""
    import torch

    from p2pgan.errors import P2PGANError
    from p2pgan.membership import PeerEntry
    from p2pgan.security.certs import make_federation
    from p2pgan.wire.config import NetworkConfig
    from p2pgan.wire.mixer import GrpcMixer
    from p2pgan.wire.state import StateLayout, StateSnapshot, encode_state
    from p2pgan.wire.v1 import gossip_pb2 as pb

    rng = random.Random(16)
    dim, fed = 2000, "fz"
    tls = make_federation(tmp_path / "ca", fed, ["p0", "p1", "p2", "p3"])
    liar = _LyingServer(tls["p1"])
    good = pb.HelloReply(federation=fed, peer_id="p1", protocol_version=1, layout_digest="L", element_count=dim,
                         step=5, training=True).SerializeToString()
    hello_lies = [
        good,
        pb.HelloReply(federation=fed, peer_id="p2", element_count=dim, step=5).SerializeToString(),  # wrong id
        pb.HelloReply(federation="other", peer_id="p1", element_count=dim).SerializeToString(),
        pb.HelloReply(federation=fed, peer_id="p1", element_count=dim + 1).SerializeToString(),
        pb.HelloReply(federation=fed, peer_id="p1", element_count=dim, step=-7, training=True).SerializeToString(),
        pb.HelloReply(federation=fed, peer_id="p1", element_count=dim, step=2 ** 62, training=True).SerializeToString(),
        pb.HelloReply(federation=fed, peer_id="p1" * 10_000, element_count=dim).SerializeToString(),
        b"\xff\xff\xff",  # undecodable
    ]
    layout = StateLayout("DPOSG/exact/osg", {"x": dim}, frozenset({"x"}), frozenset({"step"}))
    x = torch.randn(dim)
    valid = list(encode_state(StateSnapshot(7, layout.algorithm, (("x", x),), {"step": 7}), federation=fed,
                              sender="p1", layout_digest="L", shard_bytes=4096))
    state_lies: list[list[bytes]] = [valid]
    for step, counters in ((10 ** 9, {"step": 10 ** 9}), (7, {"step": 8}), (7, {"step": 7, "direction.step": -1}),
                           (-1, {"step": -1})):
        state_lies.append(list(encode_state(StateSnapshot(step, layout.algorithm, (("x", x),), counters),
                                            federation=fed, sender="p1", layout_digest="L", shard_bytes=4096)))
    moments = StateSnapshot(7, layout.algorithm, (("x", x), ("direction.exp_avg_sq", -torch.ones(dim))), {"step": 7})
    state_lies.append(list(encode_state(moments, federation=fed, sender="p1", layout_digest="L", shard_bytes=4096)))
    state_lies += [_mutations(rng, valid) for _ in range(150)]
    outcomes: dict[str, int] = {}
    try:
        for i, hello in enumerate(hello_lies):
            liar.hello = hello
            roster = (PeerEntry("p0", "127.0.0.1", 0), PeerEntry("p1", "127.0.0.1", liar.port))
            mixer = GrpcMixer(NetworkConfig(federation=fed, peer_id="p0", tls=tls["p0"], topology="ring", rounds=1,
                                            round_timeout_s=1.0, start_quorum=1), dim=dim, layout_digest="L")
            with mixer:
                mixer.join(roster)
                try:
                    mixer.wait_ready(5)
                    outcomes["hello-ready"] = outcomes.get("hello-ready", 0) + 1
                except P2PGANError:
                    outcomes["hello-refused"] = outcomes.get("hello-refused", 0) + 1
                m = mixer.membership
                assert m is not None
                if i == 0:  # a valid reply: now the state replies, then a Push answered with garbage
                    for frames in state_lies:
                        liar.state = frames
                        try:
                            snap = mixer.fetch_state("p1", layout, timeout=10)
                        except P2PGANError as exc:
                            key = type(exc).__name__
                        else:
                            assert snap.step == snap.counters["step"] and snap.step >= 0
                            assert torch.isfinite(dict(snap.parts)["x"]).all()
                            key = "adopted"
                        outcomes[f"state-{key}"] = outcomes.get(f"state-{key}", 0) + 1
                    liar.push = b"\x00garbage"
                    for k in range(3):
                        mixer.mix(torch.randn(1, dim), k)  # the reply is garbage: the link breaks, no crash
                # whatever the step claim was, it never moves the agreed step of two members beyond the bound
                assert m.agreed(0, m.reported_steps(), 1000, "Hello") <= 1000
    finally:
        liar.server.stop(0).wait(10)
    assert outcomes.get("state-adopted", 0) >= 1 and outcomes.get("state-ProtocolError", 0) > 100, outcomes
    assert outcomes["hello-ready"] + outcomes["hello-refused"] == len(hello_lies), outcomes
