"""One direction of an emulated link's rate: a token bucket that every connection of that direction shares."""

from __future__ import annotations

import threading

from p2pgan.errors import ConfigError

#: bytes read from a socket at once
CHUNK_BYTES = 256 * 1024
#: on a paced link, a chunk is at most this many seconds of the link's time (finer pacing at low rates)
PACED_CHUNK_S = 0.002
#: smallest chunk read on a paced link, bytes (one TLS record is up to 16 KiB)
MIN_PACED_CHUNK_BYTES = 16 * 1024


class Pacer:
    """One direction of an emulated link: a token bucket of ``rate_bps`` whose burst is one chunk.

    :meth:`depart` books a chunk on the link and returns when its last bit has left (the link is free
    again then): chunks of every connection sharing the pacer queue behind each other, so they share the
    rate as flows on one real link do. Thread-safe. :attr:`bytes` and :attr:`busy_s` count what it carried.
    """

    def __init__(self, rate_bps: float) -> None:
        if not rate_bps > 0:
            raise ConfigError(f"link rate must be > 0 bit/s, got {rate_bps}")
        self.rate_bps = rate_bps
        self._free_at = 0.0
        self._lock = threading.Lock()
        self.bytes = 0
        self.busy_s = 0.0

    def depart(self, now: float, nbytes: int) -> float:
        """Book ``nbytes`` arriving at ``now`` (monotonic seconds); the time their last bit has left."""
        cost = nbytes * 8 / self.rate_bps
        with self._lock:
            self._free_at = max(self._free_at, now) + cost
            self.bytes += nbytes
            self.busy_s += cost
            return self._free_at

    def backlog_s(self, now: float) -> float:
        """Seconds of the link's time already booked beyond ``now``."""
        with self._lock:
            return max(0.0, self._free_at - now)

    @property
    def chunk_bytes(self) -> int:
        """How many bytes to read at once for this rate (about :data:`PACED_CHUNK_S` of the link's time)."""
        return int(min(CHUNK_BYTES, max(MIN_PACED_CHUNK_BYTES, self.rate_bps / 8 * PACED_CHUNK_S)))
