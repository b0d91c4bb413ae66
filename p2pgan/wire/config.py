"""What a network peer needs to join a federation: frozen and already validated.

The daemon builds a :class:`NetworkConfig` from its YAML file (``p2pgan.daemon.config``), the harness
and ``p2pgan selftest`` build one directly; ``p2pgan.wire.mixer.open_mixer(net, dim=d)`` turns it into
a running :class:`p2pgan.mixing.Mixer` (server started, neighbours connected lazily).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from p2pgan.membership.members import PeerEntry
from p2pgan.mixing.robust_config import RobustConfig

WireDType = Literal["float32", "bfloat16", "float16"]
Discovery = Literal["roster", "zeroconf"]
#: listen addresses that name no one address (a zeroconf announcement needs one the others can dial)
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of one peer: the federation CA certificate, the peer's certificate and its private key."""

    ca: Path
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Everything the gRPC mixer needs. Rank of a peer = its index in the sorted list of member ids."""

    federation: str
    peer_id: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0 = any free port (reported by the server)
    advertise_host: str | None = None  # address others should dial (zeroconf); default listen_host
    tls: TLSFiles | None = None  # None only together with insecure=True
    insecure: bool = False
    discovery: Discovery = "roster"
    roster: tuple[PeerEntry, ...] = ()  # all members, self included (roster discovery)
    expected_peers: int | None = None  # zeroconf: members (self included) to wait for before step 0
    allowed_members: tuple[str, ...] | None = None  # zeroconf: the only ids accepted (required to discover)
    topology: str = "ring"  # a name of p2pgan.topology.TOPOLOGY_NAMES or a YAML adjacency path
    seed: int = 0  # shared seed of random topologies
    rounds: int = 1  # t, mixing rounds per step
    round_timeout_s: float = 10.0  # bound on how long a round waits for a neighbour (then it is absent)
    adaptive_deadline: bool = True  # wait less once complete rounds show how long they take (membership.deadline)
    connect_timeout_s: float = 120.0  # how long to wait for the membership to come up at start
    #: members (self included) that must answer before step 0 when no member trains yet; None = all
    start_quorum: int | None = None
    wire_dtype: WireDType = "float32"  # bf16 / fp16 halve the bytes on the wire
    shard_bytes: int = 2 * 1024 * 1024  # bound on one shard message
    #: compressed gossip (p2pgan.compression): none | identity | bf16-delta | int8 | topk:FRACTION; the same
    #: for every member (compared at Hello)
    compression: str = "none"
    consensus_step: float = 1.0  # CHOCO's gamma: how far a round moves x toward the mixed public copies
    key_interval: int = 100  # compressed gossip: every this many steps each link gets the public copy in full
    streaming: bool = True  # compressed gossip: messages sent while written, applied while arriving (wire.compressed)
    #: gRPC connections (each its own TCP + TLS session) to every neighbour, a message's shards striped over
    #: them (p2pgan.wire.striping); the same for every member (compared at Hello)
    connections: int = 1
    robust: RobustConfig = RobustConfig()  # robust mixing (clip by default); see p2pgan.mixing.robust
