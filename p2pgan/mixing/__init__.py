"""Mixers: t gossip rounds over some medium, behind one interface (:class:`p2pgan.mixing.base.Mixer`)."""

from __future__ import annotations

from p2pgan.mixing.base import MixHandle, Mixer, MixStats

__all__ = ["MixHandle", "Mixer", "MixStats"]
