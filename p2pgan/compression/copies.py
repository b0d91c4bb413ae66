"""The public copies of compressed gossip (CHOCO-SGD): what every peer and its neighbours agree it holds.

Peer ``i`` keeps ``x_hat_i``, the public copy of its own vector (:class:`OwnCopy`), and each neighbour
``j`` keeps an identical copy of it (:class:`NeighbourCopies`). Every round ``i`` sends
``q = Q(x_i - x_hat_i)`` and both ends add it: ``x_hat_i += q``; the difference left out is not lost,
it is still in ``x_i - x_hat_i`` and goes out in a later round (error feedback; nothing accumulates).

Copies are versioned: a delta moves a copy from version ``v - 1`` to ``v``, and a receiver applies it only
to a copy at ``v - 1``; otherwise (a restarted receiver, a lost message) it ignores the delta and waits
for a key: the sender's copy in full, which replaces the receiver's. Versions start at a random 48-bit
number per :class:`OwnCopy`, so a restarted sender's deltas never match a copy of its previous life.
:func:`digest` fingerprints a copy so that tests (and logs) can check both ends agree.
"""

from __future__ import annotations

import secrets
import threading

import torch
import xxhash

from p2pgan.compression.compressors import Compressor, Delta, Encoded, Fill, apply, no_progress


def digest(copy: torch.Tensor) -> str:
    """xxh3_64 of the copy's float32 bytes, as hex (cheap: ~50 GB/s)."""
    return xxhash.xxh3_64_hexdigest(copy.detach().contiguous().numpy().tobytes())


class OwnCopy:
    """``x_hat_i`` of the peer that owns it, and the version its neighbours' copies should be at."""

    def __init__(self, compressor: Compressor, dim: int) -> None:
        self.compressor = compressor
        self.dim = dim
        self.copy: torch.Tensor | None = None  # none yet: the first round sends keys
        self._difference: torch.Tensor | None = None  # x - copy, reused every round (no fresh vector)
        self.version = secrets.randbits(48)

    def reset(self) -> None:
        """Forget the copy (after a state transfer or a jump in steps): the next round is a key round."""
        self.copy = None

    def advance(self, x: torch.Tensor, key_round: bool) -> tuple[Encoded | None, Encoded]:
        """One round: update the copy toward ``x``; returns ``(delta or None, key)``, both at the new version.

        A key round (``key_round``, no copy yet, or an exact compressor) sets the copy to ``x`` exactly and
        sends keys only. Otherwise the copy moves by ``Q(x - copy)``; the key (the new copy in full) goes to
        neighbours whose copy may be out of step.
        """
        delta, key, fill = self.begin(x, key_round)
        fill(no_progress)
        return delta, key

    def begin(self, x: torch.Tensor, key_round: bool) -> tuple[Encoded | None, Encoded, Fill]:
        """:meth:`advance` in two parts (see :meth:`Compressor.encode_stream`): the round's messages, whose
        payloads (the delta's, and the key's: the copy itself) are final only as far as ``fill`` has come,
        and ``fill(progress)``, which writes them. A key round's copy is set here, and its fill does nothing.
        The version is the new one from here on."""
        x = x.detach().to(torch.float32)
        self.version += 1
        if key_round or self.copy is None or self.compressor.exact:
            self.copy = x.clone()
            return None, Encoded("key", self.copy), lambda progress: progress(self.dim)
        if self._difference is None or self._difference.shape != x.shape:
            self._difference = torch.empty_like(x)
        enc, fill = self.compressor.encode_stream(x.reshape(-1), self.copy, self._difference)
        return enc, Encoded("key", self.copy), fill


class NeighbourCopies:
    """The copies this peer keeps of its in-neighbours' vectors, by sender id; thread-safe.

    :meth:`apply` is called by the mixer for the message of the round it mixes and by the receive path
    for messages it will never mix (late ones), always in the order a sender sent them.

    A dense delta may also move its copy while it arrives (:mod:`p2pgan.compression.arriving`), but only a
    copy nobody will read at its present version: :meth:`claim` lends it out when it is at the delta's base
    version and its last message was mixed (or will never be); :meth:`settle` marks it at the new version,
    not yet mixed, until :meth:`consumed`; :meth:`drop_claim` forgets a copy left half-moved.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._copies: dict[str, tuple[int, torch.Tensor]] = {}
        #: deltas ignored because the copy was not at their base version (the sender's next key repairs it)
        self.out_of_step = 0
        self._claimed: dict[str, torch.Tensor] = {}  # copies being moved by an arriving delta
        self._unmixed: set[str] = set()  # copies moved ahead of the mixer, whose message it has not yet taken
        #: deltas applied while they arrived
        self.arrived = 0

    def claim(self, sender: str, version: int) -> torch.Tensor | None:
        """``sender``'s copy, lent out to be moved to ``version`` while its delta arrives; None unless it is at
        ``version - 1`` and nobody will read it there (its last message taken), or if the lock is busy (the
        mixer is mixing: the caller asks again with the next shard, never waiting on the mixer)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            held = self._copies.get(sender)
            if held is None or held[0] != version - 1 or sender in self._unmixed or sender in self._claimed:
                return None
            self._claimed[sender] = held[1]
            return held[1]
        finally:
            self.lock.release()

    def settle(self, sender: str, version: int) -> bool:
        """The claimed copy is moved to ``version`` whole: it stands there until the mixer takes its message.
        False if a key replaced the copy meanwhile (from a new stream of the sender's: the key stands)."""
        with self.lock:
            if not self._holds_claimed(sender):
                return False
            self._copies[sender] = (version, self._claimed.pop(sender))
            self._unmixed.add(sender)
            self.arrived += 1
            return True

    def drop_claim(self, sender: str) -> None:
        """The claimed copy was left half-moved (its message broke off or was refused): forget it (unless a key
        replaced it meanwhile)."""
        with self.lock:
            if self._holds_claimed(sender):
                self._copies.pop(sender, None)
                self._unmixed.discard(sender)
            self._claimed.pop(sender, None)

    def _holds_claimed(self, sender: str) -> bool:
        held = self._copies.get(sender)
        return held is not None and sender in self._claimed and held[1] is self._claimed[sender]

    def consumed(self, sender: str) -> None:
        """The message that :meth:`settle` stood for was taken (mixed, or stale): the copy is free again."""
        with self.lock:
            self._unmixed.discard(sender)

    def apply(self, sender: str, version: int, delta: Delta) -> bool:
        """Apply ``delta`` (moving the copy to ``version``); False if it does not fit the copy held."""
        with self.lock:
            copy = self.admit(sender, version, delta)
            if copy is not None:
                apply(copy, delta)
            return copy is not None

    def admit(self, sender: str, version: int, delta: Delta) -> torch.Tensor | None:
        """The copy ``delta`` moves to ``version`` (now marked at it), for the caller to :func:`apply` ``delta``
        to before it lets go of :attr:`lock`, which it must hold; None if ``delta`` does not fit the copy held."""
        held = self._copies.get(sender)
        if delta.is_key:  # a fresh tensor if an arriving delta is writing the one held (it is superseded)
            fresh = held is None or self._claimed.get(sender) is held[1]
            copy = torch.empty(delta.values.numel(), dtype=torch.float32) if fresh else held[1]
        elif held is None or held[0] != version - 1 or sender in self._claimed:
            self.out_of_step += 1
            return None
        else:
            copy = held[1]
        self._copies[sender] = (version, copy)
        return copy

    def get(self, sender: str) -> torch.Tensor | None:
        with self.lock:
            held = self._copies.get(sender)
            return None if held is None else held[1]

    def version(self, sender: str) -> int | None:
        with self.lock:
            held = self._copies.get(sender)
            return None if held is None else held[0]

    def forget(self, sender: str) -> None:
        with self.lock:
            self._copies.pop(sender, None)
            self._unmixed.discard(sender)

    def digests(self) -> dict[str, tuple[int, str]]:
        """``sender -> (version, digest)`` of every copy held."""
        with self.lock:
            return {s: (v, digest(c)) for s, (v, c) in self._copies.items()}
