"""Zeroconf discovery that a stranger cannot jam and that ends with the same members on every peer.

Real mDNS on 127.0.0.1, real TLS servers (the peers' gRPC servers) for the identity probes, and a silent
TCP port behind the fake announcements.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from p2pgan.discovery.mdns import SERVICE_TYPE, ZeroconfDiscovery
from p2pgan.errors import ConfigError
from p2pgan.security.certs import make_federation
from p2pgan.wire.codec import PROTOCOL_VERSION
from p2pgan.wire.config import NetworkConfig
from p2pgan.wire.mixer import GrpcMixer

FAKES = 6


@pytest.mark.timeout(120)
def test_fake_announcements_and_an_unlisted_certificate_do_not_change_the_membership(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fed = f"zc-{secrets.token_hex(3)}"
    tls = make_federation(tmp_path, fed, ["a", "b", "dave"])
    allowed = ("a", "b")

    def net(pid: str) -> NetworkConfig:
        return NetworkConfig(federation=fed, peer_id=pid, tls=tls[pid], discovery="zeroconf", expected_peers=2,
                             allowed_members=allowed if pid != "dave" else None, connect_timeout_s=60)

    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never answers the TLS handshake
    servers = {pid: GrpcMixer(net(pid), dim=10) for pid in ("a", "b", "dave")}
    announcers: list[ZeroconfDiscovery] = []
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    fakes = [ServiceInfo(SERVICE_TYPE, f"{fed}-ghost{i}.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")],
                         port=silent.getsockname()[1], server=f"ghost{i}.local.",
                         properties={"federation": fed, "id": "b", "pv": str(PROTOCOL_VERSION), "fp": ""})
             for i in range(FAKES)]  # six services claiming to be b, all pointing at the silent port
    try:
        for info in fakes:
            zc.register_service(info)
        announcers.append(ZeroconfDiscovery(net("dave"), port=servers["dave"].port))  # a CA-issued outsider
        results: dict[str, list[str]] = {}

        def find(pid: str) -> None:
            d = ZeroconfDiscovery(net(pid), port=servers[pid].port)
            announcers.append(d)
            results[pid] = [p.id for p in d.discover(2, timeout=45)]

        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="p2pgan.discovery.mdns"):
            threads = {pid: threading.Thread(target=find, args=(pid,)) for pid in allowed}
            threads["a"].start()  # a sees dave and the fakes first (b is not up yet) ...
            refused = threading.Event()  # never set: its wait() paces the look at the captured log
            deadline = time.monotonic() + 30
            while not any("'dave'" in r.message and "not in discovery.zeroconf_members" in r.message
                          for r in caplog.records):
                assert time.monotonic() < deadline, "dave's announcement was never refused"
                refused.wait(0.1)
            threads["b"].start()  # ... then b comes up
            for t in threads.values():
                t.join(60)
        assert results == {"a": ["a", "b"], "b": ["a", "b"]}, results
        assert time.monotonic() - t0 < 30, "the silent fakes held discovery up"
    finally:
        for info in fakes:
            zc.unregister_service(info)
        zc.close()
        for d in announcers:
            d.close()
        for m in servers.values():
            m.close()
        silent.close()


def test_a_peer_missing_from_its_own_allow_list_is_refused(tmp_path: Path) -> None:
    tls = make_federation(tmp_path, "zc-self", ["a"])
    net = NetworkConfig(federation="zc-self", peer_id="a", tls=tls["a"], discovery="zeroconf", expected_peers=1,
                        allowed_members=("b",))
    with GrpcMixer(net, dim=10) as server:
        d = ZeroconfDiscovery(net, port=server.port)
        try:
            with pytest.raises(ConfigError, match="does not list this peer 'a'"):  # a mistake: exit 2
                d.discover(1, timeout=5)
        finally:
            d.close()
