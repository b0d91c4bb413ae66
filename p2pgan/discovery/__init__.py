"""Who is in the federation: a static YAML roster or zeroconf (mDNS), giving the member list.

Discovery only *finds* members (:class:`~p2pgan.membership.PeerEntry`); who of them is live and at
which step is :mod:`p2pgan.membership`'s business, and moving vectors is the wire's. The wire never
imports discovery: callers hand :func:`member_finder`'s result to :func:`p2pgan.wire.mixer.open_mixer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from p2pgan.discovery.roster import Roster, load_roster, write_roster
from p2pgan.membership.members import PeerEntry
from p2pgan.wire.config import NetworkConfig


class _Server(Protocol):
    """What discovery needs of the peer's server: the bound port, and something to close with."""

    port: int

    def close_with(self, closer: Callable[[], None]) -> None: ...


def member_finder(net: NetworkConfig) -> Callable[[_Server], tuple[PeerEntry, ...]]:
    """A function that returns the members for ``net.discovery`` once the server is up (zeroconf
    announces the bound port and stays registered until the server closes)."""

    def find(server: _Server) -> tuple[PeerEntry, ...]:
        if net.discovery != "zeroconf":
            return net.roster
        from p2pgan.discovery.mdns import ZeroconfDiscovery

        zc = ZeroconfDiscovery(net, port=server.port)
        server.close_with(zc.close)
        return zc.discover(net.expected_peers, timeout=net.connect_timeout_s)

    return find


__all__ = ["Roster", "load_roster", "member_finder", "write_roster"]
