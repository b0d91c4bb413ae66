"""The wire: versioned gossip protocol, tensor codec, mutual-TLS gRPC transport and the gRPC mixer.

Entry point for the daemon: ``open_mixer(NetworkConfig, dim=...)`` (in :mod:`p2pgan.wire.mixer`).
"""

from __future__ import annotations

from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles

__all__ = ["NetworkConfig", "PeerEntry", "TLSFiles"]
