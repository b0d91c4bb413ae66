"""``mixing.robust*`` settings of robust mixing (:mod:`p2pgan.mixing.robust`), apart from its tensor code.

Kept free of torch so that reading a peer's configuration (``p2pgan status``, ``p2pgan certs``) stays light.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

RobustKind = Literal["clip", "trim", "off"]
ROBUST_KINDS: tuple[str, ...] = ("clip", "trim", "off")


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """``mixing.robust*`` settings. The defaults are the safe setting: clipped gossip."""

    kind: RobustKind = "clip"
    #: radius = scale x lower median of recent distances (honest distances vary by far less per window)
    scale: float = 8.0
    #: recent distances remembered (per peer, all neighbours together)
    window: int = 64
    #: non-zero distances needed before the history decides the radius
    warmup: int = 4
    #: radius during warm-up, relative to ||x_i|| (honest random starts differ by ~1.4 ||x_i||)
    warmup_scale: float = 4.0
    #: rounds in a row a sender's vector is clipped before it is reported and treated as absent
    suspect_after: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ROBUST_KINDS:
            raise ValueError(f"robust: {self.kind!r} is not one of {', '.join(ROBUST_KINDS)}")
        for name in ("scale", "warmup_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
                raise ValueError(f"robust_{name}: must be a finite number >= 1, got {value!r}")
        for name in ("window", "warmup", "suspect_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"robust_{name}: must be a positive integer, got {value!r}")


__all__ = ["ROBUST_KINDS", "RobustConfig", "RobustKind"]
