"""Mixers: t gossip rounds over some medium, behind one interface (:class:`p2pgan.mixing.base.Mixer`).

The names below are imported on first use (PEP 562), so that a torch-free module of this package
(:mod:`p2pgan.mixing.robust_config`, read by the configuration) does not pull torch in through this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pgan.mixing.base import DoneHandle, MixHandle, Mixer, MixStats
    from p2pgan.mixing.inprocess import IdentityMixer, InProcessMixer

_HOMES = {"DoneHandle": "base", "MixHandle": "base", "Mixer": "base", "MixStats": "base",
          "IdentityMixer": "inprocess", "InProcessMixer": "inprocess"}

__all__ = ["DoneHandle", "IdentityMixer", "InProcessMixer", "MixHandle", "Mixer", "MixStats"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"p2pgan.mixing.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'p2pgan.mixing' has no attribute {name!r}")
