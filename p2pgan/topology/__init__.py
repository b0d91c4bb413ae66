"""Mixing topologies: who averages with whom, with what weights, at step k and round r.

Every peer computes its own neighbours and weights from the sorted membership list, the topology name
and the shared seed alone, so no coordination messages are needed (this is what makes Rand-DP cheap).
"""

from __future__ import annotations

from p2pgan.topology.base import (
    Topology,
    rounds_for_consensus,
    spectral_rho,
    theorem1_contraction,
    theorem1_rounds,
    validate_mixing_matrix,
)
from p2pgan.topology.graphs import (
    TOPOLOGY_NAMES,
    Complete,
    Custom,
    Exponential,
    OnePeerExponential,
    RandomRing,
    Ring,
    Torus,
    make_topology,
)

__all__ = [
    "TOPOLOGY_NAMES",
    "Complete",
    "Custom",
    "Exponential",
    "OnePeerExponential",
    "RandomRing",
    "Ring",
    "Topology",
    "Torus",
    "make_topology",
    "rounds_for_consensus",
    "spectral_rho",
    "theorem1_contraction",
    "theorem1_rounds",
    "validate_mixing_matrix",
]
