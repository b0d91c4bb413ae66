"""``mixing.compression`` names, read without torch (config validation and ``--help`` stay light)."""

from __future__ import annotations

import math

from p2pgan.errors import ConfigError

#: mixing.compression values (topk takes a fraction: ``topk:0.01``)
COMPRESSIONS = ("none", "identity", "bf16-delta", "int8", "topk:FRACTION")
#: CHOCO's consensus step when a topk compression does not set one: this many times its fraction, and at most
#: TOPK_MAX_CONSENSUS_STEP. CHOCO's admissible step grows with the share of the difference a message carries
#: (Koloskova et al. 2019: about in proportion, for small shares); on digits (OAdam, 800 steps) top-k 1 % kept
#: its consensus distance bounded at 0.05, let it creep up at 0.1 and diverged at 0.3; top-k 5 % stayed bounded
#: at 0.1 and 0.25, and at 8 peers 0.1 gave the better and steadier FID (17.3 +- 0.2 against 20.3 +- 3.3;
#: docs/results.md)
TOPK_CONSENSUS_STEP_PER_FRACTION = 5.0
TOPK_MAX_CONSENSUS_STEP = 0.1


def parse_compression(spec: str, field: str = "mixing.compression") -> tuple[str, float | None]:
    """``spec`` -> (kind, topk fraction or None); a one-line :class:`ConfigError` naming ``field`` otherwise."""
    text = spec.strip().lower() if isinstance(spec, str) else ""
    if text in ("none", "identity", "bf16-delta", "int8"):
        return text, None
    if text.startswith("topk:"):
        try:
            fraction = float(text[5:])
        except ValueError:
            fraction = math.nan
        if not 0 < fraction <= 1:
            raise ConfigError(f"{field}: {spec!r}: topk needs a fraction in (0, 1], e.g. topk:0.01")
        return "topk", fraction
    raise ConfigError(f"{field}: {spec!r} is not allowed; allowed: {', '.join(COMPRESSIONS)}")


def canonical(spec: str, field: str = "mixing.compression") -> str:
    """The name peers compare at Hello (``topk:0.010`` and ``topk:0.01`` are the same setting)."""
    kind, fraction = parse_compression(spec, field)
    return kind if fraction is None else f"topk:{fraction:g}"


def default_consensus_step(spec: str, field: str = "mixing.compression") -> float:
    """CHOCO's step size when none is given: 1 (uncompressed mixing bit for bit with exact copies) except for
    top-k, which diverges at 1: 5 x its fraction, at most 0.1 (0.05 for topk:0.01, 0.1 for topk:0.05; see
    :data:`TOPK_CONSENSUS_STEP_PER_FRACTION`)."""
    kind, fraction = parse_compression(spec, field)
    if kind != "topk":
        return 1.0
    assert fraction is not None
    return min(TOPK_MAX_CONSENSUS_STEP, TOPK_CONSENSUS_STEP_PER_FRACTION * fraction)
