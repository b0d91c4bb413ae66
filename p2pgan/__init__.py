"""p2pgan: peer-to-peer training of GANs and other min-max models with DPOSG.

Layers (one subpackage each): ``topology`` (who mixes with whom, with what weights), ``mixing`` (the
mixer interface and its in-process, gRPC and torch.distributed implementations), ``algorithm`` (DPOSG
and the optimistic directions), ``wire`` (protocol, codec, mutual-TLS transport), ``security``
(federation certificates), ``discovery`` (roster, zeroconf), ``trainer`` (models, losses, data,
evaluation), ``daemon`` (the peer process), ``harness`` (many peers on one machine).
"""

from __future__ import annotations

from p2pgan.errors import P2PGANError

__all__ = ["P2PGANError", "__version__"]
__version__ = "0.1.0"
