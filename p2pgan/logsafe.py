"""Log hygiene for text that comes from outside: peer-supplied strings and repeated refusals.

A member's key can leak, so anything a peer sends (a sender id, a federation name, a digest) may be
a megabyte of control characters. :func:`printable` quotes, escapes and truncates such text before it
reaches a log line or a status message. :class:`RefusalLog` keeps a peer that is refused over and over
from flooding the log: the first refusals of a (peer, kind) are logged in full, then at most one summary
line per interval says how many more there were.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: characters of a peer-supplied string shown in a log line or status message
MAX_SHOWN_CHARS = 64
#: refusals of one (peer, kind) logged in full before they are only counted
REFUSALS_LOGGED_IN_FULL = 3
#: at most one summary line per (peer, kind) in this many seconds
REFUSAL_SUMMARY_INTERVAL_S = 30.0
#: distinct (peer, kind) keys remembered (bounded memory under a flood of made-up names)
MAX_REFUSAL_KEYS = 1024


def printable(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr`` of ``value`` (quotes, control characters escaped), cut to about ``limit`` characters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    shown = repr(text[:limit])
    return f"{shown}...({len(text)} chars)" if cut else shown


class RefusalLog:
    """Rate-limited logging of refusals, per (peer, kind); thread-safe."""

    def __init__(self, logger: logging.Logger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        # (peer, kind) -> [refusals so far, refusals not yet reported, time of the last line]
        self._seen: dict[tuple[str, str], list[float]] = {}
        self.total = 0

    def refused(self, peer: str, kind: str, message: str, level: int = logging.WARNING) -> None:
        """Record one refusal; log it in full, or count it into the next summary line."""
        key = (printable(peer), kind)
        now = self._clock()
        with self._lock:
            self.total += 1
            entry = self._seen.get(key)
            if entry is None:
                if len(self._seen) >= MAX_REFUSAL_KEYS:
                    self._seen.pop(next(iter(self._seen)))
                entry = self._seen[key] = [0, 0, now]
            entry[0] += 1
            if entry[0] <= REFUSALS_LOGGED_IN_FULL:
                entry[2] = now
                line = message
            else:
                entry[1] += 1
                if now - entry[2] < REFUSAL_SUMMARY_INTERVAL_S:
                    return
                line = (f"{int(entry[1])} more {kind} refusals from {key[0]} in the last {now - entry[2]:.0f} s "
                        f"({int(entry[0])} in all); the latest: {message}")
                entry[1], entry[2] = 0, now
        self._log.log(level, "%s", line)
