"""grpc.health.v1 on the gossip port, asked by a real health client over mutual TLS.

In-process mixers show the transitions (NOT_SERVING until every member answered, SERVING, NOT_SERVING
when leaving) and the TLS requirement; a real daemon process shows what a Kubernetes probe sees.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest
from daemon_helpers import federation as make_harness_federation
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deadlines import scaled
from p2pgan import cli
from p2pgan.commands.status import daemon_status
from p2pgan.daemon.processes import MetricsTail, PeerGroup, pid_alive, wait_for_record
from p2pgan.discovery import load_roster
from p2pgan.security.certs import make_federation
from p2pgan.wire import transport
from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
from p2pgan.wire.health import GOSSIP_SERVICE, check
from p2pgan.wire.mixer import GrpcMixer

WAIT_S = scaled(30.0)  # bounds a hang (x the machine's load, tests/deadlines.py)


def _probe_channel(host: str, port: int, federation: str, target_id: str, tls: object) -> grpc.Channel:
    return transport.open_channel(PeerEntry(target_id, host, port), federation, tls)  # type: ignore[arg-type]


def _status_stream(channel: grpc.Channel, service: str = ""):
    stub = health_pb2_grpc.HealthStub(channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_S, wait_for_ready=True)
    return call, (health_pb2.HealthCheckResponse.ServingStatus.Name(r.status) for r in call)


@pytest.mark.timeout(60)
def test_health_follows_membership_over_mutual_tls(tmp_path: Path) -> None:
    fed = f"health-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path, fed, ["p0", "p1", "probe"])
    mixers = [GrpcMixer(NetworkConfig(federation=fed, peer_id=p, tls=tls[p], topology="ring"), dim=16) for p in ("p0", "p1")]
    channel = _probe_channel("127.0.0.1", mixers[0].port, fed, "p0", tls["probe"])
    try:
        roster = tuple(PeerEntry(p, "127.0.0.1", m.port) for p, m in zip(("p0", "p1"), mixers))
        for m in mixers:
            m.join(roster)
        call, statuses = _status_stream(channel)
        assert next(statuses) == "NOT_SERVING"  # server up, membership not formed yet
        assert check(channel, GOSSIP_SERVICE) == "NOT_SERVING"
        mixers[0].wait_ready(WAIT_S)  # p1 answers Hello: the federation formed
        assert next(statuses) == "SERVING"
        assert check(channel) == check(channel, GOSSIP_SERVICE) == "SERVING"
        mixers[0].close()  # leaving: NOT_SERVING before the port closes
        assert next(statuses, "NOT_SERVING") == "NOT_SERVING"
        call.cancel()
    finally:
        channel.close()
        for m in mixers:
            m.close()


@pytest.mark.timeout(60)
def test_health_needs_a_federation_certificate(tmp_path: Path) -> None:
    fed = f"health-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path / "ours", fed, ["p0"])
    stranger = make_federation(tmp_path / "theirs", fed, ["probe"])  # same name, another CA
    with GrpcMixer(NetworkConfig(federation=fed, peer_id="p0", tls=tls["p0"], topology="ring"), dim=16) as mixer:
        mixer.join((PeerEntry("p0", "127.0.0.1", mixer.port),))
        mixer.wait_ready(WAIT_S)
        with _probe_channel("127.0.0.1", mixer.port, fed, "p0", tls["p0"]) as ok:
            assert check(ok) == "SERVING"
        for channel in (grpc.insecure_channel(f"127.0.0.1:{mixer.port}"),
                        _probe_channel("127.0.0.1", mixer.port, fed, "p0", stranger["probe"])):
            with channel, pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(240)
def test_probe_sees_a_real_daemon_start_serving(tmp_path: Path) -> None:
    """A daemon waiting for its second member is NOT_SERVING; SERVING once the member starts."""
    fed = make_harness_federation(tmp_path, 2, steps=100_000)
    roster = load_roster(fed.out / "federation" / "roster.yaml")
    port = {p.id: p.port for p in roster.peers}["peer0"]
    files = fed.out / "federation" / "peers" / "peer1"  # any certificate of the federation may probe
    probe_tls = TLSFiles(ca=files / "ca.pem", cert=files / "peer.pem", key=files / "peer.key")
    specs = fed.specs()
    first = PeerGroup(specs[:1])
    second = PeerGroup(specs[1:])
    with first, _probe_channel("127.0.0.1", port, "harness", "peer0", probe_tls) as channel:
        call, statuses = _status_stream(channel)
        assert next(statuses) == "NOT_SERVING"
        assert cli.main(["status", "--config", str(fed.configs["peer0"])]) == 1  # reachable, not serving yet
        with second:
            assert next(statuses) == "SERVING"
            call.cancel()
            wait_for_record(MetricsTail(specs[0].metrics), lambda r: r["type"] == "step" and r["step"] >= 2, 120,
                            group=first)
            st = daemon_status(fed.configs["peer0"])
            assert st["health"] == "SERVING" and st["step"] >= 2 and st["members"] == ["peer0", "peer1"]
            assert st["step_s"] > 0 and st["dropped_rounds"] == 0
    assert not [pid for pid in first.pids + second.pids if pid_alive(pid)]
    st = daemon_status(fed.configs["peer0"], timeout=1.0)  # stopped: the probe says so, no traceback
    assert st["health"] == "UNREACHABLE" and "UNAVAILABLE" in st["error"]
