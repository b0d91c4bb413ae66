"""Mixers: t gossip rounds over some medium, behind one interface (:class:`p2pgan.mixing.base.Mixer`)."""

from __future__ import annotations

from p2pgan.mixing.base import DoneHandle, MixHandle, Mixer, MixStats
from p2pgan.mixing.inprocess import IdentityMixer, InProcessMixer

__all__ = ["DoneHandle", "IdentityMixer", "InProcessMixer", "MixHandle", "Mixer", "MixStats"]
