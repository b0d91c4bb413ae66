"""Top-k: the ``fraction`` largest differences, chosen span by span and sent as each span is chosen.

The operator of ``mixing.compression: topk:FRACTION`` (see :mod:`p2pgan.compression.compressors` for the
operators' contract). Its payload layout and the way it shares its pairs among the spans are
:mod:`p2pgan.compression.sparse`'s; each span's choice is :func:`p2pgan.compression.selection.largest`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from p2pgan.compression import sparse
from p2pgan.compression.compressors import CHUNK, Compressor, Encoded, Fill, no_progress
from p2pgan.compression.selection import largest

#: elements per span (the sender shares its pairs among the spans as the whole-vector top-k would)
TOPK_SPAN = CHUNK


class TopK(Compressor):
    """The ``fraction`` largest differences of every span (:mod:`p2pgan.compression.sparse`), sent as
    ``topk-spans``: each span's pairs are final as soon as it is chosen, so the message leaves while the
    rest is chosen."""

    name = "topk"
    encoding = "topk-spans"
    #: the encodings a receiver takes from a neighbour in a top-k federation (any sparse update moves a copy
    #: the same way, however its sender laid it out)
    accepts = ("topk", "topk-spans")
    bytes_per_element = 0.0  # 8 bytes per kept element: 8 * fraction

    def __init__(self, fraction: float, span: int = TOPK_SPAN) -> None:
        self.fraction = fraction
        self.span = span
        self.name = f"topk:{fraction:g}"
        self.bytes_per_element = 8.0 * fraction

    def count(self, n: int) -> int:
        return max(1, min(n, round(self.fraction * n)))

    def encode(self, delta: torch.Tensor) -> Encoded:
        delta = delta.detach().reshape(-1).to(torch.float32)
        enc, fill = self._stream(delta.numel(), delta[:: sparse.SAMPLE_STRIDE], lambda lo, hi: delta[lo:hi], None)
        fill(no_progress)
        return enc

    def encode_step(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> Encoded:
        enc, fill = self.encode_stream(x, copy, scratch)
        fill(no_progress)
        return enc

    def encode_stream(self, x: torch.Tensor, copy: torch.Tensor, scratch: torch.Tensor) -> tuple[Encoded, Fill]:
        sample = x[:: sparse.SAMPLE_STRIDE] - copy[:: sparse.SAMPLE_STRIDE]
        return self._stream(x.numel(), sample, lambda lo, hi: torch.sub(x[lo:hi], copy[lo:hi], out=scratch[lo:hi]),
                            copy)

    def _stream(self, n: int, sample: torch.Tensor, difference: Callable[[int, int], torch.Tensor],
                copy: torch.Tensor | None) -> tuple[Encoded, Fill]:
        """The span by span top-k of ``difference(lo, hi)`` (float32, over the vector's spans in order; ``sample``:
        the difference at every :data:`~p2pgan.compression.sparse.SAMPLE_STRIDE`-th element): its message, whose
        table of counts is written here, and the fill that writes the spans and adds each span's pairs to
        ``copy`` (if any) as :func:`apply` does, reporting each span's end."""
        k = self.count(n)
        counts = sparse.allocate(sample.abs().numpy(), n, k, self.span)
        before = sparse.starts(counts).tolist()
        payload = torch.empty(sparse.payload_bytes(n, k, self.span), dtype=torch.uint8)
        table = 4 * counts.size
        payload[:table].view(torch.int32).copy_(torch.from_numpy(counts))
        words = payload[table:].view(torch.int32)
        values = payload[table:].view(torch.float32)
        enc = Encoded("topk-spans", payload, block_elements=self.span, value_count=k)

        def fill(progress: Callable[[int], None]) -> None:
            progress(0)  # the table is final
            work = np.empty(min(n, self.span), dtype=np.float32)
            for s, lo in enumerate(range(0, n, self.span)):
                hi = min(n, lo + self.span)
                if counts[s]:
                    d = difference(lo, hi)
                    local = largest(np.abs(d.numpy(), out=work[: hi - lo]), int(counts[s]))
                    pairs = torch.from_numpy(local)
                    kept = d[pairs]
                    # span s's indices at words 2 C[s] .. C[s] + C[s + 1], its values up to 2 C[s + 1]
                    words[before[s] + before[s] : before[s] + before[s + 1]].copy_(pairs + lo)
                    values[before[s + 1] + before[s] : 2 * before[s + 1]].copy_(kept)
                    if copy is not None:
                        copy.index_add_(0, pairs + lo, kept.to(copy.dtype))
                progress(hi)

        return enc, fill
