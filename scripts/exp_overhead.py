#!/usr/bin/env python
"""Step overhead: the time of one DP-OAdam step divided by the time of the same local step without
communication, for the digits GAN and the WGAN-GP ResNet (the paper's 8.36 MB CIFAR-10 model), with the
exact schedule (mix, then compute) and the overlap schedule (mix while computing).

Both sides of each ratio are measured the same way: M real peer processes started together, one torch
thread each, the same per-peer batch; the baseline runs them with no mixer at all (so compute
contention on a small machine is the same on both sides). DP = the ring, one round per step, over the
product's mutual-TLS gRPC (``--backend gloo`` for torch.distributed). ResNet steps use synthetic images
(timing only).

    python scripts/exp_overhead.py                   # digits + resnet32, M = 4; ~5-8 min on 2 cores
    python scripts/exp_overhead.py --quick           # digits only, few steps; ~1 min

Writes OUT/overhead.json and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from p2pgan.errors import P2PGANError
from p2pgan.experiments.peers import PeerRun, best_of
from p2pgan.experiments.report import format_table, write_json

#: model -> per-peer batch (the ResNet's is smaller: it is ~50x the digits model's compute per sample)
BATCH = {"digits": 16, "resnet32": 8, "dcgan32": 16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--models", default="digits,resnet32")
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--backend", default="grpc", choices=("grpc", "gloo"))
    p.add_argument("--schedules", default="exact,overlap")
    p.add_argument("--steps", type=int, default=12, help="timed steps (digits); the ResNet runs a third of them")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="runs per point; the fastest counts (see best_of)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/overhead"))
    p.add_argument("--quick", action="store_true", help="digits only, 4 timed steps")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.warmup, args.repeats = "digits", 4, 2, 1
    args.models = [m for m in args.models.split(",") if m]
    args.schedules = [s for s in args.schedules.split(",") if s]
    if not set(args.models) <= set(BATCH) or not set(args.schedules) <= {"exact", "overlap"}:
        p.error(f"--models from {', '.join(BATCH)}; --schedules from exact, overlap")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    try:
        for model in args.models:
            steps = args.steps if model == "digits" else max(2, args.steps // 3)
            common = {"peers": args.peers, "model": model, "batch": BATCH[model], "steps": steps,
                      "warmup": args.warmup if model == "digits" else 1, "threads": args.threads}
            local = best_of(PeerRun(backend="none", **common), args.repeats)
            mb = local["dim"] * 4 / 1e6
            print(f"{model} ({mb:.2f} MB): local step {1e3 * local['step_s']:.1f} ms", flush=True)
            for schedule in args.schedules:
                r = best_of(PeerRun(backend=args.backend, topology="ring", schedule=schedule, **common), args.repeats)
                rows.append({
                    "model": model, "MB": mb, "schedule": schedule, "backend": args.backend, "peers": args.peers,
                    "local_step_ms": 1e3 * local["step_s"], "dp_step_ms": 1e3 * r["step_s"],
                    "ratio": r["step_s"] / local["step_s"], "exposed_mix_ms": 1e3 * r["mix_s_per_step"],
                    "compute_ms": 1e3 * r["field_s_per_step"], "dropped": r["dropped"],
                })
                print(f"  {schedule:8s} DP step {rows[-1]['dp_step_ms']:.1f} ms, ratio {rows[-1]['ratio']:.3f}, "
                      f"exposed mixing {rows[-1]['exposed_mix_ms']:.1f} ms", flush=True)
    except P2PGANError as exc:
        print(f"exp_overhead: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out / "overhead.json", {"config": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items()}, "rows": rows,
                                            "load_average_after": os.getloadavg()})
    print(format_table(rows, ["model", "MB", "schedule", "local_step_ms", "dp_step_ms", "ratio", "exposed_mix_ms"]))
    print(f"wrote {args.out}/overhead.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
