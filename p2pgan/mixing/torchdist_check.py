"""Check a torch.distributed federation: mix known vectors and compare with ``W(k, t-1)...W(k, 0) X``.

Run one process per peer, e.g. on a cluster::

    torchrun --nproc-per-node 4 -m p2pgan.mixing.torchdist_check --topologies ring,random-ring

or by hand with ``--rank R --world-size M --init-method tcp://host:port``. Every rank builds the same
random X from the seed, mixes its own row with :class:`TorchDistMixer` and measures its error against
the matrix product; rank 0 prints one JSON line with the worst error over all ranks and the median
milliseconds per mixing step. ``--out DIR`` also writes each rank's mixed rows to ``DIR/rank<R>.json``
(the tests recompute the expected rows from those files independently).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from p2pgan.errors import P2PGANError
from p2pgan.mixing.torchdist import BACKENDS, TorchDistMixer, process_group
from p2pgan.topology import make_topology


def reference_rows(seed: int, step: int, size: int, dim: int) -> torch.Tensor:
    """The [size, dim] float64 matrix X that every rank mixes at ``step`` (same on every rank)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(size, dim, generator=g, dtype=torch.float64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m p2pgan.mixing.torchdist_check", description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK)")
    p.add_argument("--world-size", type=int, default=None, help="number of processes (default: $WORLD_SIZE)")
    p.add_argument("--init-method", default=None, help="tcp://host:port or file:///path (default: env://)")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="default: nccl with CUDA, else gloo")
    p.add_argument("--topologies", default="complete,ring,random-ring,exponential", help="comma-separated names")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dim", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", action="store_true", help="start every step before waiting for any (queued mixing)")
    p.add_argument("--out", type=Path, default=None, help="write this rank's mixed rows to OUT/rank<R>.json")
    return p.parse_args(argv)


def run_checks(args: argparse.Namespace) -> dict[str, object]:
    """Mix every (topology, step) and return this rank's rows, error and timings."""
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    rows: dict[str, dict[str, list[float]]] = {}
    worst = 0.0
    step_ms: list[float] = []
    for name in [n.strip() for n in args.topologies.split(",") if n.strip()]:
        topo = make_topology(name, size, seed=args.seed, rounds=args.rounds)
        rows[name] = {}
        xs = [reference_rows(args.seed, k, size, args.dim) for k in range(args.steps)]
        with TorchDistMixer(topo, args.rounds) as mixer:
            dist.barrier()
            t0 = time.perf_counter()
            if args.overlap:
                handles = [mixer.start(xs[k][rank : rank + 1].float().to(device), k) for k in range(args.steps)]
                results = [h.wait() for h in handles]
            else:
                results = []
                for k in range(args.steps):
                    t1 = time.perf_counter()
                    results.append(mixer.mix(xs[k][rank : rank + 1].float().to(device), k))
                    step_ms.append((time.perf_counter() - t1) * 1e3)
            if args.overlap:
                step_ms.append((time.perf_counter() - t0) * 1e3 / max(1, args.steps))
        for k, got in enumerate(results):
            want = (topo.product(k, args.rounds) @ xs[k])[rank]
            worst = max(worst, float((got[0].double().cpu() - want).abs().max()))
            rows[name][str(k)] = got[0].double().cpu().tolist()
    return {"rank": rank, "size": size, "max_abs_error": worst, "step_ms": step_ms, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        with process_group(
            backend=args.backend, rank=args.rank, world_size=args.world_size, init_method=args.init_method
        ):
            result = run_checks(args)
            worst = torch.tensor([result["max_abs_error"]], dtype=torch.float64)
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"rank{result['rank']}.json").write_text(json.dumps(result))
            if result["rank"] == 0:
                summary = {
                    "size": result["size"],
                    "backend": dist.get_backend(),
                    "rounds": args.rounds,
                    "max_abs_error": float(worst),
                    "step_ms": statistics.median(result["step_ms"]) if result["step_ms"] else None,
                }
                print(json.dumps(summary), flush=True)
    except P2PGANError as exc:
        print(f"torchdist_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
