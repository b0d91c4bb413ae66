"""The mixer interface: what the algorithm sees of the network.

A mixer hosts ``n`` peers of the federation (``n = M`` for the in-process simulator, ``n = 1`` for a
network peer) and applies ``t`` gossip rounds to their parameter rows::

    x  (shape [n, d])  ->  rows of  W(k, t-1) ... W(k, 1) W(k, 0) X   that belong to the hosted peers

where ``W(k, r)`` is the topology's mixing matrix for step ``k`` and round ``r`` (static topologies
return the same matrix for every (k, r)). Row ``i`` of ``W`` holds peer ``i``'s in-weights. For the
symmetric graphs (ring, random ring, complete, torus, custom) this equals ``X W^t`` in the column
convention of the paper; the exponential graphs are directed (doubly stochastic but not symmetric),
where it is ``X (W(k, t-1) ... W(k, 0))^T``: the same averages, with who-sends-to-whom transposed.

The algorithm never knows which mixer it runs on. Mixing may run concurrently with the gradient
computation (the overlap schedule): :meth:`Mixer.start` begins the rounds and returns a
:class:`MixHandle`; :meth:`MixHandle.wait` returns the mixed rows. :meth:`Mixer.mix` is both at once.
Implementations must not modify ``x`` in place and must not keep references to it after ``wait``.
"""

from __future__ import annotations

import abc
import dataclasses
from types import TracebackType

import torch


@dataclasses.dataclass
class MixStats:
    """Counters a mixer keeps for metrics (totals since construction)."""

    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    dropped: int = 0  # neighbour-rounds dropped because a neighbour missed the deadline

    def snapshot(self) -> MixStats:
        return dataclasses.replace(self)


class MixHandle(abc.ABC):
    """An in-flight mixing of one step; :meth:`wait` returns the mixed rows (shape of the input)."""

    @abc.abstractmethod
    def wait(self) -> torch.Tensor: ...


class DoneHandle(MixHandle):
    """A handle whose result is already known (synchronous mixers)."""

    def __init__(self, result: torch.Tensor) -> None:
        self._result = result

    def wait(self) -> torch.Tensor:
        return self._result


class Mixer(abc.ABC):
    """Applies ``rounds`` gossip rounds per step to the rows of the peers this mixer hosts.

    Attributes:
        rounds: t, the number of mixing rounds per step (0 means no mixing: the identity).
        ranks: the federation ranks (row indices of W) of the hosted peers, in row order of ``x``.
        size: M, the number of peers in the federation.
    """

    rounds: int
    ranks: tuple[int, ...]
    size: int

    def __init__(self) -> None:
        self.stats = MixStats()

    @abc.abstractmethod
    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        """Begin the ``rounds`` rounds of step ``step`` on ``x`` (shape ``[len(ranks), d]``)."""

    def mix(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Mix ``x`` for step ``step`` and return the result (``start(x, step).wait()``)."""
        return self.start(x, step).wait()

    def close(self) -> None:
        """Release connections and threads. Idempotent."""

    def __enter__(self) -> Mixer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
