"""The sending side of the wire format: a tensor's bytes cut into shard frames, made as the links take them.

Shard frames are written here by hand in canonical protobuf encoding (the data bytes copied once, from
the tensor into the frame); see :mod:`p2pgan.wire.codec`.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import threading
from collections.abc import Callable, Iterator

import torch

from p2pgan.wire.frames import LITTLE_ENDIAN, SAME_WIDTH_INT, MessageHeader, checksum


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def le_bytes(vec: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a 1-D contiguous tensor (a zero-copy view on little-endian hosts)."""
    flat = vec.detach().reshape(-1).contiguous()
    as_int = flat.view(SAME_WIDTH_INT[flat.element_size()])
    arr = as_int.numpy()
    if not LITTLE_ENDIAN:
        arr = arr.byteswap()
    return memoryview(arr).cast("B")


def shard_frame(index: int, data: memoryview) -> bytes:
    """A ``Frame{shard: Shard{index, checksum, data}}`` in canonical protobuf encoding (one data copy)."""
    n = len(data)
    body_head = b"\x08" + _varint(index) + b"\x11" + struct.pack("<Q", checksum(data)) + b"\x1a" + _varint(n)
    return b"".join((b"\x12", _varint(len(body_head) + n), body_head, data))


def encode(header: MessageHeader, payload: memoryview, shard_bytes: int) -> list[bytes]:
    """Header frame then shard frames for ``payload`` (``header.shard_count`` must match ``shard_bytes``),
    all at once: an :class:`OutgoingMessage` read to the end by its only subscriber."""
    return list(OutgoingMessage(header, payload, shard_bytes).subscribe())


#: how long a link waits for the next part of a payload still being written before it gives the message up
#: (a bound on a hang: a payload is written by the same process within milliseconds to seconds)
FILL_TIMEOUT_S = 120.0


class Filling:
    """How far the writer of a payload has come, for the links that send it meanwhile (one writer thread).

    Counted in whatever unit the writer reports (compressed gossip: elements of the vector done, see
    :meth:`p2pgan.compression.compressors.Compressor.encode_stream`); :meth:`fail` releases every reader."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._done = -1  # nothing written: a writer's first report may be 0 (int8: its scales, before any element)
        self._failed = False
        self._cond = threading.Condition()

    def advance(self, done: int) -> None:
        with self._cond:
            self._done = max(self._done, done)
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    @property
    def complete(self) -> bool:
        return self._done >= self.total

    @property
    def failed(self) -> bool:
        return self._failed

    def wait(self, done: int, timeout: float = FILL_TIMEOUT_S) -> None:
        """Return once ``done`` units are written; RuntimeError if the writer failed or took ``timeout`` s."""
        if self._done >= done:  # the common case once writing is ahead of the link: no lock
            return
        with self._cond:
            if not self._cond.wait_for(lambda: self._done >= done or self._failed, timeout):
                raise RuntimeError(f"a payload being written did not reach {done} of {self.total} in {timeout:g} s")
            if self._done < done:
                raise RuntimeError("the writer of a payload being sent failed")


class OutgoingMessage:
    """One message's frames, made on demand and shared by every link that sends it.

    :func:`encode` copies the whole vector into frames at once, and those stay alive until the slowest
    link has sent them: one more copy of the model per peer and round (issue 11 item 3). Here a shard's
    frame is built when the first link asks for it and dropped once every subscribed link has taken it,
    so a round holds a few shards instead. Each link reads the frames through its own
    :meth:`subscribe` iterator; a link that subscribes after the others took a shard rebuilds it (the
    same bytes from the same payload). The payload must not change while subscribers read it:
    :meth:`detach` builds what is still to be sent and lets go of it.

    A payload still being written (``filling``, with ``needs(end)``: how far its writer must be before the
    payload's bytes ``[0, end)`` are final) can be sent meanwhile: a shard is built once its bytes are final,
    so the first shards leave while the writer makes the rest.
    """

    def __init__(self, header: MessageHeader, payload: memoryview, shard_bytes: int, *,
                 filling: Filling | None = None, needs: Callable[[int], int] | None = None) -> None:
        self.header = header
        self.header_frame = header.to_frame()
        self._payload: memoryview | None = payload
        self._payload_bytes = len(payload)
        self._shard_bytes = shard_bytes
        self._filling = filling
        self._needs = needs
        self._lock = threading.Lock()
        self._frames: dict[int, bytes] = {}  # built and still due to some subscriber
        self._next: dict[_Subscription, int] = {}  # subscriber -> index of the next shard it takes
        self._shard_sizes = [
            _shard_frame_size(i, min(shard_bytes, len(payload) - i * shard_bytes)) for i in range(header.shard_count)
        ]
        self.nbytes = len(self.header_frame) + sum(self._shard_sizes)

    def subscribe(self, part: int = 0, parts: int = 1) -> _Subscription:
        """The frames (header first) for one link; :meth:`_Subscription.close` it if the link does not send them.

        With ``parts`` > 1 (striping, :mod:`p2pgan.wire.striping`): part ``part``'s header, then the shards
        ``part, part + parts, ...``; :attr:`_Subscription.nbytes` is what it sends."""
        if parts > 1:
            header = dataclasses.replace(self.header, part=part, parts=parts).to_frame()
            nbytes = len(header) + sum(self._shard_sizes[part::parts])
        else:
            header, nbytes = self.header_frame, self.nbytes
        sub = _Subscription(self, header, nbytes, part, max(1, parts))
        with self._lock:
            self._next[sub] = part
        return sub

    def _leave(self, token: object) -> None:
        with self._lock:
            self._next.pop(token, None)
            self._forget_taken()

    def _await(self, i: int) -> None:
        """Return once shard ``i``'s bytes are final (at once unless the payload is still being written)."""
        filling = self._filling
        if filling is not None and self._needs is not None:
            filling.wait(self._needs(min(self._payload_bytes, (i + 1) * self._shard_bytes)))

    def _take(self, token: _Subscription, i: int) -> bytes:
        self._await(i)
        with self._lock:
            frame = self._frames.get(i)
            if frame is None:
                frame = self._build(i)
                if any(s is not token and n <= i and i % s.parts == s.part for s, n in self._next.items()):
                    self._frames[i] = frame  # someone else still needs it
            self._next[token] = i + 1
            self._forget_taken()
            return frame

    def _build(self, i: int) -> bytes:
        if self._payload is None:
            raise RuntimeError("OutgoingMessage: a detached message has no shard %d left to build" % i)
        return shard_frame(i, self._payload[i * self._shard_bytes : (i + 1) * self._shard_bytes])

    def _forget_taken(self) -> None:
        low = min(self._next.values(), default=self.header.shard_count)
        for i in [i for i in self._frames if i < low]:
            del self._frames[i]

    def detach(self) -> None:
        """Build every frame a subscriber still needs, then let go of the payload (it may change now).
        A payload still being written must be complete first (its writer is the one who detaches); one whose
        writer failed builds nothing more (its readers fail: half-written bytes never go out)."""
        filling = self._filling
        with self._lock:
            if self._payload is None:
                return
            if filling is not None and not filling.complete:
                assert filling.failed, "detach() of a payload still being written"
                self._payload = None
                return
            low = min(self._next.values(), default=self.header.shard_count)
            for i in range(low, self.header.shard_count):
                if i not in self._frames and any(n <= i and i % s.parts == s.part for s, n in self._next.items()):
                    self._frames[i] = self._build(i)
            self._payload = None


class _Subscription(Iterator[bytes]):
    """One link's pass over an :class:`OutgoingMessage`: the header frame, then the shard frames in order."""

    def __init__(self, message: OutgoingMessage, header_frame: bytes, nbytes: int, part: int, parts: int) -> None:
        self._message = message
        self._header_frame = header_frame
        self.nbytes = nbytes
        self.part = part
        self.parts = parts
        self._next = -1  # -1: the header is due
        self._closed = False

    def __next__(self) -> bytes:
        message = self._message
        if self._closed or self._next >= message.header.shard_count:
            self.close()
            raise StopIteration
        if self._next < 0:
            self._next = self.part
            return self._header_frame
        i, self._next = self._next, self._next + self.parts
        return message._take(self, i)

    def close(self) -> None:
        """This link takes nothing more: frames are no longer kept for it (also at the end, or if never read)."""
        if not self._closed:
            self._closed = True
            self._message._leave(self)


def _shard_frame_size(index: int, n: int) -> int:
    """Length of :func:`shard_frame`'s output for shard ``index`` of ``n`` data bytes."""
    body = 1 + len(_varint(index)) + 9 + 1 + len(_varint(n)) + n
    return 1 + len(_varint(body)) + body


def shard_count(nbytes: int, shard_bytes: int) -> int:
    return max(1, math.ceil(nbytes / shard_bytes))
