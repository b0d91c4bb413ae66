"""A mixer over torch.distributed (Gloo on CPU, NCCL on CUDA), for clusters that already run it.

Each process hosts one peer (one row, ``x`` of shape ``[1, d]``) and its rank in the process group is
its rank in the topology. Two ways to mix:

* the complete topology (CP-OAdam, the centralized baseline) is one ``all_reduce`` (sum, then divide
  by M). Because ``J^t = J`` one all-reduce gives exactly what t rounds would;
* every other topology exchanges vectors with its neighbours of round r point to point
  (``batch_isend_irecv``: send to ``topology.out_neighbours``, receive from the senders of
  ``topology.in_weights``) and takes the weighted sum, round after round. Random rings and the
  time-varying exponential graphs work unchanged because every rank derives the same (k, r) graph.

The rounds run on one background thread so that the overlap schedule can compute gradients while the
exchange is in flight (Gloo and NCCL release the GIL while they wait). Steps are mixed in the order
they are started, on every rank, which is what keeps the collective calls matched.

:func:`process_group` initialises (and on exit destroys) the process group from torchrun's
environment variables or from an explicit ``(rank, world_size, init_method)``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.distributed as dist

from p2pgan.errors import ConfigError, TopologyError
from p2pgan.mixing.base import DoneHandle, MixHandle, Mixer
from p2pgan.topology import Complete, Topology

#: default timeout of every collective / point-to-point operation, seconds (torch's own default is 30 min)
DEFAULT_TIMEOUT_S = 300.0

BACKENDS = ("gloo", "nccl")


def default_backend() -> str:
    """``nccl`` where CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise ConfigError(
            f"environment variable {name} is not set: launch with torchrun, or pass rank, world_size and init_method"
        )
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


@contextlib.contextmanager
def process_group(
    *,
    backend: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    init_method: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Iterator[None]:
    """Initialise the default torch.distributed process group for the duration of the block.

    With no arguments it reads torchrun's ``RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR`` / ``MASTER_PORT``
    through ``init_method="env://"``). Otherwise give ``rank``, ``world_size`` and an ``init_method``
    such as ``tcp://host:port`` or ``file:///shared/path``. With NCCL the CUDA device is chosen from
    ``LOCAL_RANK`` (default: rank modulo the device count).
    """
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ConfigError(f"torch.distributed backend {backend!r} is not supported; allowed: {', '.join(BACKENDS)}")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ConfigError("torch.distributed backend 'nccl' needs CUDA and an NCCL build of torch; use 'gloo'")
    if dist.is_initialized():
        raise ConfigError("a torch.distributed process group is already initialised in this process")
    rank = _env_int("RANK") if rank is None else rank
    world_size = _env_int("WORLD_SIZE") if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    if init_method is None:
        init_method = "env://"
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(f"environment variable {name} is not set: launch with torchrun or pass init_method")
    elif init_method.startswith("file://"):
        # torch's FileStore waits forever (no timeout) when the folder does not exist
        folder = Path(init_method[len("file://") :]).parent
        if not folder.is_dir():
            raise ConfigError(f"init_method {init_method!r}: folder {folder} does not exist")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


class _FutureHandle(MixHandle):
    def __init__(self, future: Future[torch.Tensor]) -> None:
        self._future = future

    def wait(self) -> torch.Tensor:
        return self._future.result()


class TorchDistMixer(Mixer):
    """``rounds`` gossip rounds per step over an initialised torch.distributed process group.

    Args:
        topology: the mixing graph; its size must equal the group's world size.
        rounds: t, rounds per step (0: no mixing).
        group: the process group to use (default: the default group). All ranks of the group must
            construct the mixer and mix the same steps in the same order.
        members: the peer ids in rank order, for logs and checkpoints (optional).

    The hosted row is this process's rank: ``ranks == (rank,)`` and ``x`` has shape ``[1, d]``.
    ``stats.bytes_*`` count payload bytes; for the all-reduce they are the ring-algorithm estimate
    ``2 (M - 1) / M`` times the vector size.
    """

    def __init__(
        self,
        topology: Topology,
        rounds: int,
        *,
        group: dist.ProcessGroup | None = None,
        members: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if not dist.is_initialized():
            raise ConfigError("TorchDistMixer needs an initialised torch.distributed process group (see process_group)")
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
        topology.check_rounds(rounds)
        world = dist.get_world_size(group)
        if topology.size != world:
            raise TopologyError(
                f"{topology.name}: topology has {topology.size} peers but the process group has {world} ranks"
            )
        self.topology = topology
        self.rounds = rounds
        self.size = world
        self.rank = dist.get_rank(group)
        self.ranks = (self.rank,)
        self._group = group
        self._global = [dist.get_global_rank(group, r) if group is not None else r for r in range(world)]
        self._allreduce = isinstance(topology, Complete)
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="p2pgan-torchdist")
        self._lock = threading.Lock()
        self.members = members
        self._owned: contextlib.ExitStack | None = None

    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        if x.ndim != 2 or x.shape[0] != 1:
            raise ValueError(f"TorchDistMixer hosts one peer: x must have shape [1, d], got {tuple(x.shape)}")
        with self._lock:
            if self._executor is None:
                raise RuntimeError("TorchDistMixer is closed")
            if self.rounds == 0 or self.size == 1:
                return DoneHandle(x.clone())
            return _FutureHandle(self._executor.submit(self._run, x[0].detach().clone(), step))

    # -- the rounds (on the background thread) -------------------------------------------------------
    def _run(self, v: torch.Tensor, step: int) -> torch.Tensor:
        t0 = time.perf_counter()
        nbytes = v.numel() * v.element_size()
        if self._allreduce:
            dist.all_reduce(v, op=dist.ReduceOp.SUM, group=self._group)
            v.div_(self.size)
            moved = int(2 * (self.size - 1) / self.size * nbytes)
            self.stats.bytes_sent += moved
            self.stats.bytes_received += moved
        else:
            for r in range(self.rounds):
                v = self._round(v, step, r, nbytes)
        self.stats.rounds += self.rounds
        self.stats.seconds += time.perf_counter() - t0
        return v.unsqueeze(0)

    def _round(self, v: torch.Tensor, step: int, r: int, nbytes: int) -> torch.Tensor:
        weights = self.topology.in_weights(self.rank, step, r)
        senders = [j for j in sorted(weights) if j != self.rank]
        receivers = self.topology.out_neighbours(self.rank, step, r)
        bufs = {j: torch.empty_like(v) for j in senders}
        ops = [dist.P2POp(dist.isend, v, self._global[j], self._group) for j in receivers]
        ops += [dist.P2POp(dist.irecv, bufs[j], self._global[j], self._group) for j in senders]
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        out = v * weights.get(self.rank, 0.0)
        for j in senders:
            out.add_(bufs[j], alpha=weights[j])
        self.stats.bytes_sent += nbytes * len(receivers)
        self.stats.bytes_received += nbytes * len(senders)
        return out

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()


def open_torch_mixer(
    topology: Topology,
    rounds: int,
    *,
    rank: int,
    world_size: int,
    init_method: str | None = None,
    backend: str | None = None,
    members: tuple[str, ...] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TorchDistMixer:
    """Initialise the default process group (see :func:`process_group`) and return a mixer on it that
    destroys the group when it is closed: what a daemon that owns its process needs."""
    stack = contextlib.ExitStack()
    stack.enter_context(
        process_group(backend=backend, rank=rank, world_size=world_size, init_method=init_method, timeout_s=timeout_s)
    )
    try:
        mixer = TorchDistMixer(topology, rounds, members=members)
    except BaseException:
        stack.close()
        raise
    mixer._owned = stack
    return mixer
