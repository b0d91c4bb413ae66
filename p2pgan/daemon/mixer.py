"""The one seam between the daemon and the network: :func:`make_mixer` picks the mixer backend.

``mixing.backend: grpc`` (the product) opens the mutual-TLS gRPC gossip mixer of :mod:`p2pgan.wire`;
``mixing.backend: torch`` joins a torch.distributed process group (Gloo on CPU, NCCL on CUDA) at
``mixing.torch_init`` for clusters that already run it (no TLS: the config must say ``insecure: true``).
"""

from __future__ import annotations

import logging
import socket

import grpc

from p2pgan.daemon.config import PeerConfig, network_config
from p2pgan.errors import ConfigError, config_error
from p2pgan.mixing.base import Mixer
from p2pgan.security.certs import check_own_tls
from p2pgan.wire import transport
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.v1 import gossip_pb2 as pb

log = logging.getLogger(__name__)

#: how long the start-up Hello to our own roster address waits (a second daemon answers at once)
SELF_HELLO_TIMEOUT_S = 2.0


def make_mixer(config: PeerConfig, dim: int, digest: str, *, start_step: int = 0) -> Mixer:
    """Open the mixer ``config.mixing.backend`` names for vectors of ``dim`` entries of layout ``digest``.

    ``start_step`` is the step this peer starts at (its checkpoint's), which Hello replies report to
    the other members while they start up (so that a federation restarted as a whole agrees on a step).

    The returned mixer is ready (listening, membership found, the members answered, or a quorum of
    them, or one that already trains) and must be closed (it is a context manager).
    """
    backend = config.mixing.backend
    if backend == "grpc":
        from p2pgan.discovery import load_roster, member_finder
        from p2pgan.wire.mixer import open_mixer

        roster: tuple[PeerEntry, ...] = ()
        if config.discovery.roster is not None:
            loaded = load_roster(config.discovery.roster)
            if loaded.federation != config.peer.federation:
                raise config_error(
                    str(config.source), "peer.federation",
                    f"{config.peer.federation!r} but the roster {config.discovery.roster} is for {loaded.federation!r}",
                )
            if config.peer.id not in loaded.members:  # a mistake to fix, not a condition that passes: exit 2
                raise config_error(
                    str(config.source), "peer.id",
                    f"{config.peer.id!r} is not in the roster {config.discovery.roster} (members: "
                    f"{', '.join(loaded.members)}); add this peer to the roster or fix peer.id",
                )
            roster = loaded.peers
        net = network_config(config, roster)
        if net.tls is not None:
            check_own_tls(net.tls, net.federation, net.peer_id, source=f"{config.source}: security")
        mixer = open_mixer(net, dim=dim, layout_digest=digest, discover=member_finder(net))
        log.info("peer %s: listening on port %d; waiting up to %.0f s for the members %s",
                 net.peer_id, mixer.port, net.connect_timeout_s, list(mixer.members))
        try:
            refuse_second_instance(net, mixer.port)
            assert mixer.membership is not None
            mixer.membership.step = start_step
            mixer.wait_ready(net.connect_timeout_s)
        except BaseException:
            mixer.close()
            raise
        return mixer
    if backend == "torch":
        return _torch_mixer(config)
    raise config_error(str(config.source), "mixing.backend", f"{backend!r} has no mixer here")


def refuse_second_instance(net: NetworkConfig, bound_port: int) -> None:
    """Refuse to start when another daemon already serves this peer id at its roster address.

    Our own port cannot be shared (``grpc.so_reuseport`` is off). When the roster lists our id at
    another port or host (a relay, a port forward, or a second daemon), a Hello there tells which: our
    own server answers with this process's instance id (:data:`transport.INSTANCE_ID`), another daemon
    holding our identity answers as our id with another one.
    """
    own = next((p for p in net.roster if p.id == net.peer_id), None)
    if own is None or (own.port == bound_port and _is_local_address(own.host)):
        return
    channel = transport.open_channel(own, net.federation, net.tls)
    try:
        hello = channel.unary_unary(transport.HELLO_METHOD, request_serializer=pb.HelloRequest.SerializeToString,
                                    response_deserializer=pb.HelloReply.FromString)
        reply, call = hello.with_call(pb.HelloRequest(federation=net.federation, sender=net.peer_id),
                                      timeout=SELF_HELLO_TIMEOUT_S)
        instance = dict(call.trailing_metadata() or ()).get(transport.INSTANCE_METADATA_KEY)
    except grpc.RpcError:
        return  # nobody there (or not us): we are the only one
    finally:
        channel.close()
    if instance != transport.INSTANCE_ID and (reply.peer_id, reply.federation) == (net.peer_id, net.federation):
        raise ConfigError(
            f"another daemon already runs as peer {net.peer_id!r} of {net.federation!r} at {own.host}:{own.port} "
            f"(the roster's address for this id); this one listens on port {bound_port}. Stop the other one, or "
            "give this daemon its own peer id and certificate"
        )


def _is_local_address(host: str) -> bool:
    """True when ``host`` resolves to an address of this machine (one can bind to it)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))
                return True
        except OSError:
            continue
    return False


def _torch_mixer(config: PeerConfig) -> Mixer:
    """torch.distributed over the roster's membership: rank = index of the peer id in the sorted ids."""
    from p2pgan.discovery import load_roster
    from p2pgan.mixing.torchdist import open_torch_mixer
    from p2pgan.topology import make_topology

    if config.discovery.roster is None:
        raise config_error(str(config.source), "discovery.roster", "the torch backend needs a roster")
    ids = tuple(sorted(p.id for p in load_roster(config.discovery.roster).peers))
    if config.peer.id not in ids:
        raise config_error(str(config.source), "peer.id", f"{config.peer.id!r} is not in the roster {config.discovery.roster}")
    mixing = config.mixing
    topology = make_topology(mixing.topology, len(ids), seed=mixing.seed, members=ids, rounds=mixing.rounds)
    return open_torch_mixer(topology, mixing.rounds, rank=ids.index(config.peer.id), world_size=len(ids),
                            init_method=mixing.torch_init, members=ids, timeout_s=mixing.connect_timeout_s)
