"""The one seam between the daemon and the network: :func:`make_mixer` picks the mixer backend.

``mixing.backend: grpc`` (the product) opens the mutual-TLS gRPC gossip mixer of :mod:`p2pgan.wire`;
another backend (torch.distributed for HPC clusters) plugs in here and nowhere else.
"""

from __future__ import annotations

from p2pgan.daemon.config import PeerConfig, network_config
from p2pgan.errors import config_error
from p2pgan.mixing.base import Mixer


def make_mixer(config: PeerConfig, dim: int, digest: str) -> Mixer:
    """Open the mixer ``config.mixing.backend`` names for vectors of ``dim`` entries of layout ``digest``.

    The returned mixer is ready (listening, membership found, every member answered) and must be
    closed (it is a context manager).
    """
    backend = config.mixing.backend
    if backend == "grpc":
        from p2pgan.discovery import load_roster
        from p2pgan.wire.mixer import open_mixer

        roster: tuple = ()
        if config.discovery.roster is not None:
            loaded = load_roster(config.discovery.roster)
            if loaded.federation != config.peer.federation:
                raise config_error(
                    str(config.source), "peer.federation",
                    f"{config.peer.federation!r} but the roster {config.discovery.roster} is for {loaded.federation!r}",
                )
            roster = loaded.peers
        net = network_config(config, roster)
        mixer = open_mixer(net, dim=dim, layout_digest=digest)
        try:
            mixer.wait_ready(net.connect_timeout_s)
        except BaseException:
            mixer.close()
            raise
        return mixer
    raise config_error(str(config.source), "mixing.backend", f"{backend!r} has no mixer here")
