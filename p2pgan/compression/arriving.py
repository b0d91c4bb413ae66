"""A delta applied to its public copy while its payload arrives (the receiving half of the overlap).

The sender writes its payload in order while the links send it
(:meth:`p2pgan.compression.compressors.Compressor.encode_stream`); :class:`ArrivingDelta` is the same at
the other end for int8 and bf16-delta, :class:`ArrivingPairs` for top-k's spans (each span applied once its
pairs are all in, checked as :func:`p2pgan.compression.sparse.read_spans` checks them, and added as
:func:`~p2pgan.compression.compressors.apply` adds them). :class:`ArrivingDelta` takes the payload's bytes as
the shards come, checks them as :func:`p2pgan.compression.compressors.decode` would (int8: every scale finite,
non-negative and at most :data:`~p2pgan.compression.compressors.MAX_SCALE`, no code -128; bf16-delta:
finite values), and adds each element's update to the copy at once, with the arithmetic of
:func:`~p2pgan.compression.compressors.apply` (the same float32 products and sums, element by element: the
copy ends bit for bit where ``apply`` of the whole message leaves it). A malformed byte raises
:class:`~p2pgan.errors.ProtocolError`; the copy is then half-moved, and the caller must forget it (the
sender's next key repairs it).

Shards may split an element or an int8 block anywhere: scales are gathered until all are in, a partial
bf16 element waits for its other byte, and a range of codes is multiplied by its blocks' scales whatever
its ends. Plain arithmetic, no threads: the wire layer decides when a message may move its copy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from p2pgan.compression import sparse
from p2pgan.compression.compressors import INT8_MAX, MAX_SCALE
from p2pgan.errors import ProtocolError

#: the dense encodings :class:`ArrivingDelta` applies as they arrive
DENSE = ("int8", "bf16-delta")
#: the encodings whose payload is applied as it arrives (keys replace the copy, which a message may only do
#: once it is known whole; the legacy topk layout has all its indices before any value)
ARRIVING = (*DENSE, "topk-spans")


def arriving(encoding: str, copy: torch.Tensor, *, block_elements: int, value_count: int,
             who: str = "message") -> ArrivingDelta | ArrivingPairs:
    """What moves ``copy`` by a message of ``encoding`` (one of :data:`ARRIVING`) as its payload arrives."""
    if encoding == "topk-spans":
        return ArrivingPairs(copy, span=block_elements, value_count=value_count, who=who)
    return ArrivingDelta(encoding, copy, block_elements=block_elements, who=who)


class ArrivingDelta:
    """Moves ``copy`` (float32, ``n`` elements) by an int8 or bf16-delta payload fed in order (:meth:`feed`)."""

    def __init__(self, encoding: str, copy: torch.Tensor, *, block_elements: int = 0, who: str = "message") -> None:
        if encoding not in DENSE:
            raise ValueError(f"no arriving update of encoding {encoding!r}")
        self.encoding = encoding
        self.copy = copy
        self.n = copy.numel()
        self.who = who
        self.block = block_elements
        self.done = 0  # elements of the copy moved so far
        self.offset = 0  # payload bytes taken so far
        if encoding == "int8":
            self.scales = torch.empty(math.ceil(self.n / block_elements), dtype=torch.float32)
            self._head = 4 * self.scales.numel()  # the scales lead the payload
            self._width = 1
        else:
            self._head = 0
            self._width = 2
        self._carry = b""  # the first byte of a bf16 element whose second byte is in the next shard

    @property
    def complete(self) -> bool:
        return self.done == self.n

    def feed(self, data: memoryview | bytes) -> None:
        """The payload's next bytes (a shard's data): checked, and applied as far as whole elements go."""
        data = memoryview(data).cast("B")
        end = self.offset + len(data)
        if end > self._head + self._width * self.n:
            raise ProtocolError(f"{self.who}: more payload bytes than {self.encoding} of {self.n} elements holds")
        pos = 0
        if self.offset < self._head:  # int8 scales, gathered until all are in, then checked
            pos = min(len(data), self._head - self.offset)
            head = self.scales.view(torch.uint8)
            head[self.offset : self.offset + pos] = torch.frombuffer(data[:pos], dtype=torch.uint8)
            self.offset += pos
            if self.offset == self._head:
                s = self.scales
                if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or bool((s > MAX_SCALE).any()):
                    raise ProtocolError(f"{self.who}: an int8 scale is negative, non-finite or above {MAX_SCALE:g}")
        body = data[pos:]
        self.offset = end
        if self._carry:  # (a copy of the shard, only where a sender's shard size splits bf16 elements)
            body, self._carry = memoryview(self._carry + bytes(body)), b""
        whole = len(body) // self._width * self._width
        if whole < len(body):
            self._carry = bytes(body[whole:])
        if whole:
            self._apply(body[:whole])

    def _apply(self, body: memoryview) -> None:
        lo = self.done
        hi = lo + len(body) // self._width
        if self.encoding == "bf16-delta":
            values = torch.frombuffer(body, dtype=torch.bfloat16)
            tmp = values.to(torch.float32)  # apply(): the bfloat16 value in float32, then added
            if not math.isfinite(float(tmp.sum())) and not bool(torch.isfinite(tmp).all()):
                raise ProtocolError(f"{self.who}: the vector holds non-finite values (NaN or inf)")
        else:
            codes = torch.frombuffer(body, dtype=torch.int8)
            if int(codes.min()) == -128:
                raise ProtocolError(f"{self.who}: int8 code -128 is outside -{INT8_MAX}..{INT8_MAX}")
            tmp = codes.to(torch.float32)
            b = self.block
            first, last = lo // b, (hi - 1) // b  # the blocks the range touches, whole or in part
            if first == last:
                tmp.mul_(self.scales[first])
            else:
                head = (first + 1) * b - lo  # elements of the first block in range
                tail = hi - last * b  # ... and of the last
                tmp[:head].mul_(self.scales[first])
                tmp[head : len(tmp) - tail].view(-1, b).mul_(self.scales[first + 1 : last].unsqueeze(1))
                tmp[len(tmp) - tail :].mul_(self.scales[last])
        self.copy[lo:hi].add_(tmp)
        self.done = hi


class ArrivingPairs:
    """Moves ``copy`` by a ``topk-spans`` payload fed in order: the table of counts first (checked once whole),
    then each span once its pairs are all in."""

    def __init__(self, copy: torch.Tensor, *, span: int, value_count: int, who: str = "message") -> None:
        self.copy = copy
        self.n = copy.numel()
        self.span = span
        self.k = value_count
        self.who = who
        self.table = 4 * sparse.spans(self.n, span)
        self.payload = torch.empty(sparse.payload_bytes(self.n, value_count, span), dtype=torch.uint8)
        self.before: np.ndarray | None = None  # the table's starts, once it is in
        self.offset = 0  # payload bytes taken so far
        self.spans = 0  # spans applied so far

    @property
    def complete(self) -> bool:
        return self.before is not None and self.spans == self.before.size - 1

    def feed(self, data: memoryview | bytes) -> None:
        """The payload's next bytes: the table once whole, then the spans they complete, are checked, and the
        spans added to the copy."""
        data = memoryview(data).cast("B")
        end = self.offset + len(data)
        if end > self.payload.numel():
            raise ProtocolError(f"{self.who}: more payload bytes than topk-spans of {self.k} pairs holds")
        if data:
            self.payload[self.offset : end] = torch.frombuffer(data, dtype=torch.uint8)
        self.offset = end
        if end < self.table:
            return
        if self.before is None:
            self.before = sparse.read_table(self.payload[: self.table], self.n, self.k, self.span, self.who)
        done = int(self.before.searchsorted((end - self.table) // 8, side="right")) - 1  # spans all in
        if done > self.spans:
            lo, hi = self.table + 8 * int(self.before[self.spans]), self.table + 8 * int(self.before[done])
            indices, values = sparse.read_span_range(self.payload[lo:hi], self.n, self.span, self.before,
                                                     self.spans, done, self.who)
            self.copy.index_add_(0, indices, values.to(self.copy.dtype))  # apply(): the same adds, by spans
            self.spans = done
