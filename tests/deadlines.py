"""How long a test waits before it calls a hang a hang, scaled to the machine that runs the suite.

A deadline in a test bounds a hang; it is never a timing claim. On a loaded machine (2 cores with a CPU
hog beside pytest) everything takes longer, so every deadline a test names (pytest-timeout's markers and
the ini default, which conftest.py scales, and the waits of the tests that use :func:`scaled`) is
multiplied by :data:`SCALE`: ``P2PGAN_TEST_TIMEOUT_SCALE`` when set, else from the load the machine
already carries when the suite starts (2 x (1 + load average) / cores, between 1 and 4).
"""

from __future__ import annotations

import os

SCALE_ENV = "P2PGAN_TEST_TIMEOUT_SCALE"


def _scale() -> float:
    named = os.environ.get(SCALE_ENV)
    if named:
        try:
            value = float(named)
        except ValueError:
            raise SystemExit(f"{SCALE_ENV}: {named!r} is not a number (e.g. 2 doubles every test deadline)") from None
        if not value > 0:
            raise SystemExit(f"{SCALE_ENV}: {named!r} must be > 0")
        return value
    cores = os.cpu_count() or 1
    return min(4.0, max(1.0, 2.0 * (1.0 + os.getloadavg()[0]) / cores))


#: the factor every deadline of the suite is multiplied by
SCALE = _scale()


def scaled(seconds: float) -> float:
    """``seconds`` as a deadline on this machine (multiplied by :data:`SCALE`)."""
    return seconds * SCALE
