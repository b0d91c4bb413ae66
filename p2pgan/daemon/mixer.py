"""The one seam between the daemon and the network: :func:`make_mixer` picks the mixer backend.

``mixing.backend: grpc`` (the product) opens the mutual-TLS gRPC gossip mixer of :mod:`p2pgan.wire`;
``mixing.backend: torch`` joins a torch.distributed process group (Gloo on CPU, NCCL on CUDA) at
``mixing.torch_init`` for clusters that already run it (no TLS: the config must say ``insecure: true``).
"""

from __future__ import annotations

import logging

from p2pgan.daemon.config import PeerConfig, network_config
from p2pgan.errors import config_error
from p2pgan.mixing.base import Mixer
from p2pgan.wire.config import PeerEntry

log = logging.getLogger(__name__)


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
            roster = loaded.peers
        net = network_config(config, roster)
        mixer = open_mixer(net, dim=dim, layout_digest=digest, discover=member_finder(net))
        log.info("peer %s: listening on port %d; waiting up to %.0f s for the members %s",
                 net.peer_id, mixer.port, net.connect_timeout_s, list(mixer.members))
        try:
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
