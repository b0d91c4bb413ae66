"""Trust: the federation CA, peer certificates whose identity is the peer id, fingerprints."""

from __future__ import annotations

from p2pgan.security.certs import fingerprint, init_ca, issue_peer, make_federation, peer_files, peer_identity

__all__ = ["fingerprint", "init_ca", "issue_peer", "make_federation", "peer_files", "peer_identity"]
