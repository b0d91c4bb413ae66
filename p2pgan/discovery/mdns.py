"""Zeroconf discovery: announce this peer as ``_p2pgan._tcp.local.`` and find the federation's others.

TXT record: ``federation``, ``id``, ``pv`` (protocol version), ``fp`` (SHA-256 certificate fingerprint).
mDNS is unauthenticated, so a discovered service is only a *candidate*: it becomes a member once a TLS
handshake with our client certificate shows that it holds a certificate of our federation CA naming the
announced id (and, when announced, the announced fingerprint). The membership is the sorted list of
verified ids once ``expected_peers`` (self included) are verified; later arrivals are not added.

A stranger cannot jam it: candidates are resolved and probed concurrently, each with a short timeout
(:data:`PROBE_TIMEOUT_S`), so announcements pointing at silent ports cost nothing but a retry later,
and discovery keeps looking past them. ``allowed_members`` (``discovery.zeroconf_members``) is required:
it makes the membership deterministic: only those ids are accepted, every peer with the same list ends
with the same members, and any other holder of a federation certificate that announces itself is refused
with one log line. (Without it whoever announced first would be a member, and two honest peers could
end with different member lists; :meth:`ZeroconfDiscovery.discover` refuses that with a ConfigError.)
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from concurrent import futures

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from p2pgan.errors import ConfigError, DiscoveryError
from p2pgan.security.certs import fingerprint, read_tls
from p2pgan.wire.codec import PROTOCOL_VERSION
from p2pgan.membership.members import PeerEntry
from p2pgan.wire.config import WILDCARD_HOSTS, NetworkConfig
from p2pgan.wire.transport import probe_identity

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pgan._tcp.local."
#: how long one ServiceInfo resolution may take
RESOLVE_TIMEOUT_S = 3.0
#: how often the discovery loop re-checks candidates that failed verification (they may still be starting)
RETRY_S = 0.5
#: how long one TLS identity probe of a candidate may take (a silent port must not hold discovery up)
PROBE_TIMEOUT_S = 1.5
#: candidates resolved and probed at the same time
PROBE_WORKERS = 8


class ZeroconfDiscovery:
    """Registers this peer and browses for the others; a context manager (close() unregisters)."""

    def __init__(self, net: NetworkConfig, *, port: int) -> None:
        self.net = net
        self.host = net.advertise_host or net.listen_host
        if self.host in WILDCARD_HOSTS:
            raise ConfigError(
                f"peer.advertise: set the address other peers should dial (zeroconf announces it; the listen "
                f"address {self.host!r} is a wildcard), e.g. `peer: {{advertise: 192.168.1.20}}`"
            )
        self._fp = fingerprint(read_tls(net.tls)[1]) if net.tls and not net.insecure else ""
        self._zc = Zeroconf(interfaces=[self.host], ip_version=IPVersion.V4Only)
        self.info = ServiceInfo(
            SERVICE_TYPE,
            f"{net.federation}-{net.peer_id}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(socket.gethostbyname(self.host))],
            port=port,
            properties={"federation": net.federation, "id": net.peer_id, "pv": str(PROTOCOL_VERSION), "fp": self._fp},
            server=f"{net.peer_id}-{net.federation}.local.",
        )
        self._zc.register_service(self.info)
        self._names: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])
        self.me = PeerEntry(net.peer_id, self.host, port, self._fp or None)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            self._names.put(name)

    def _candidate(self, name: str) -> PeerEntry | None:
        info = self._zc.get_service_info(SERVICE_TYPE, name, timeout=int(RESOLVE_TIMEOUT_S * 1000))
        if info is None or not info.parsed_addresses():
            return None
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        if txt.get("federation") != self.net.federation or txt.get("id") == self.net.peer_id:
            return None
        if txt.get("pv") != str(PROTOCOL_VERSION):
            log.warning("ignoring %s: protocol version %s, ours is %d", name, txt.get("pv"), PROTOCOL_VERSION)
            return None
        return PeerEntry(txt.get("id", ""), info.parsed_addresses()[0], int(info.port or 0), txt.get("fp") or None)

    def _verify(self, cand: PeerEntry) -> None:
        """Raise unless the candidate's TLS identity matches what it announced."""
        if self.net.insecure or self.net.tls is None:
            log.warning("INSECURE: accepting zeroconf candidate %s unverified", cand.id)
            return
        fed, pid, fp = probe_identity(cand.host, cand.port, self.net.tls, timeout=PROBE_TIMEOUT_S)
        if (fed, pid) != (self.net.federation, cand.id):
            raise DiscoveryError(f"{cand.host}:{cand.port} announced {cand.id!r} but its certificate names {pid!r} of {fed!r}")
        if cand.fingerprint and cand.fingerprint != fp:
            raise DiscoveryError(f"{cand.id}: announced fingerprint {cand.fingerprint} but presented {fp}")

    def _check(self, name: str) -> PeerEntry | None:
        """Resolve and verify one announcement (a worker thread); None if it is not for us."""
        cand = self._candidate(name)
        if cand is None:
            return None
        allowed = self.net.allowed_members or ()  # discover() refuses to run without a list
        if cand.id not in allowed:
            raise DiscoveryError(f"{cand.id!r} at {cand.host}:{cand.port} is not in discovery.zeroconf_members "
                                 f"{list(allowed)}: refused")
        self._verify(cand)
        return cand

    def discover(self, expected: int | None, *, timeout: float) -> tuple[PeerEntry, ...]:
        """Wait until ``expected`` verified members (self included) are known; return them."""
        if expected is None or expected < 1:
            raise ConfigError("discovery.zeroconf_peers: zeroconf discovery needs the number of peers to wait for "
                              "(>= 1)")
        allowed = self.net.allowed_members
        if allowed is None:
            raise ConfigError("discovery.zeroconf_members: required with zeroconf discovery (the ids of the "
                              "federation's members, the same list on every host), so that every peer ends with "
                              "the same members")
        if self.net.peer_id not in allowed:
            raise ConfigError(f"discovery.zeroconf_members {list(allowed)} does not list this peer "
                              f"{self.net.peer_id!r}")
        verified: dict[str, PeerEntry] = {self.me.id: self.me}
        rejected: dict[str, str] = {}
        retry: set[str] = set()
        pending: dict[futures.Future[PeerEntry | None], str] = {}
        deadline = time.monotonic() + timeout
        pool = futures.ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="p2pgan-mdns")
        try:
            while len(verified) < expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DiscoveryError(
                        f"zeroconf: found {len(verified)} of {expected} peers of federation {self.net.federation!r} "
                        f"within {timeout:g} s: {sorted(verified)}; rejected candidates: {rejected or 'none'}"
                    )
                try:
                    names = {self._names.get(timeout=min(remaining, RETRY_S))}
                except queue.Empty:
                    names, retry = retry, set()  # quiet: look again at those that failed (maybe still starting)
                busy = set(pending.values())
                for name in names - busy:
                    pending[pool.submit(self._check, name)] = name
                done = [f for f in pending if f.done()]
                for fut in done:
                    name = pending.pop(fut)
                    try:
                        cand = fut.result()
                    except Exception as exc:  # P2PGANError, or a resolver failure: not a member (yet)
                        if rejected.get(name) != str(exc):
                            log.warning("zeroconf: %s", exc)
                        rejected[name] = str(exc)
                        retry.add(name)  # maybe still starting; a real impostor stays rejected
                        continue
                    if cand is None or cand.id in verified:
                        continue
                    log.info("zeroconf: verified peer %s at %s:%d", cand.id, cand.host, cand.port)
                    verified[cand.id] = cand
                    rejected.pop(name, None)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a probe still running ends by its own timeout
        return tuple(sorted(verified.values(), key=lambda p: p.id))

    def close(self) -> None:
        self._browser.cancel()
        self._zc.unregister_service(self.info)
        self._zc.close()

    def __enter__(self) -> ZeroconfDiscovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
