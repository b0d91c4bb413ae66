"""An emulated link's figures: a rate and a one-way delay, and the ``RATE:DELAY`` text that names them.

:func:`parse_link` reads the form (``100mbit:20ms``, ``1gbit:5ms``, ``10mbit:20ms``) that ``p2pgan harness
--link``, the benchmarks and ``python -m p2pgan.netem`` take.
"""

from __future__ import annotations

import dataclasses
import re

from p2pgan.errors import ConfigError

#: bits per second of each rate unit of ``--link`` (decimal, as link rates are quoted)
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
#: seconds per delay unit of ``--link``
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
#: the fastest link emulated: beyond it the relay's Python threads, not the pacer, set the rate
MAX_RATE_BPS = 100 * 10**9
#: the longest one-way delay accepted
MAX_DELAY_S = 10.0


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    """An emulated link: ``rate_bps`` bits per second in each direction (None: unlimited) and a one-way delay."""

    rate_bps: float | None
    delay_s: float

    def __str__(self) -> str:
        rate = "unlimited" if self.rate_bps is None else _format_rate(self.rate_bps)
        return f"{rate}:{self.delay_s * 1e3:g}ms"

    def floor_s(self, nbytes: float) -> float:
        """The least time ``nbytes`` take over this link, one way: serialization plus the delay."""
        return (0.0 if self.rate_bps is None else nbytes * 8 / self.rate_bps) + self.delay_s


def _format_rate(bps: float) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bps >= RATE_UNITS[unit]:
            return f"{bps / RATE_UNITS[unit]:g}{unit}"
    return f"{bps:g}bit"


_LINK_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*:\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*$")


def parse_link(text: str, flag: str = "--link") -> LinkSpec:
    """``RATE:DELAY`` (``100mbit:20ms``, ``1gbit:5ms``, ``10mbit:0.5s``) -> :class:`LinkSpec`, or a one-line
    :class:`ConfigError` naming ``flag`` and what is allowed."""
    allowed = (f"expected RATE:DELAY such as 100mbit:20ms or 1gbit:5ms (rate units {', '.join(RATE_UNITS)}; "
               f"delay units {', '.join(DELAY_UNITS)})")
    m = _LINK_RE.match(text.lower())
    if m is None:
        raise ConfigError(f"{flag} {text!r}: {allowed}")
    rate, runit, delay, dunit = float(m[1]), m[2], float(m[3]), m[4]
    if runit not in RATE_UNITS:
        raise ConfigError(f"{flag} {text!r}: rate unit {runit!r} is not one of {', '.join(RATE_UNITS)}")
    if dunit not in DELAY_UNITS:
        raise ConfigError(f"{flag} {text!r}: delay unit {dunit!r} is not one of {', '.join(DELAY_UNITS)}")
    bps, delay_s = rate * RATE_UNITS[runit], delay * DELAY_UNITS[dunit]
    if not 1000 <= bps <= MAX_RATE_BPS:
        raise ConfigError(f"{flag} {text!r}: the rate must be within 1kbit..{_format_rate(MAX_RATE_BPS)}")
    if delay_s > MAX_DELAY_S:
        raise ConfigError(f"{flag} {text!r}: the delay must be at most {MAX_DELAY_S:g} s")
    return LinkSpec(bps, delay_s)
