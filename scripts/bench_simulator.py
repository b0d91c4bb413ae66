#!/usr/bin/env python
"""Simulator throughput: steps per second of DPOSG / overlap / DGDA on M virtual peers (bilinear game).

Default M = 1024 peers, d = 1000 parameters each (bilinear with --dim 500), one gossip round per step,
for the ring, the random ring and the complete graph side by side. Prints a table and writes JSON
(default runs/bench_simulator.json).

    PYTHONPATH=$PWD python scripts/bench_simulator.py [--peers 1024] [--dim 500] [--steps 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from p2pgan.sim import SimConfig, Simulation

#: row label -> (--algorithm, --schedule): DPOSG under each schedule, and the DGDA baseline
RUNS = {"dposg": ("dposg", "exact"), "overlap": ("dposg", "overlap"), "dgda": ("dgda", None)}
ALGORITHMS = tuple(RUNS)
TOPOLOGIES = ("ring", "random-ring", "complete")
#: untimed iterations before measuring (allocator warm-up, caches)
WARMUP_STEPS = 5


def bench_one(algorithm: str, topology: str, args: argparse.Namespace) -> dict[str, float | str | int]:
    cfg = SimConfig(
        problem="bilinear",
        peers=args.peers,
        topology=topology,
        rounds=args.rounds,
        steps=args.steps,
        lr=0.05,
        algorithm=RUNS[algorithm][0],
        schedule=RUNS[algorithm][1],
        optimizer=args.optimizer,
        dim=args.dim,
        device=args.device,
    )
    sim = Simulation.build(cfg)
    for _ in range(WARMUP_STEPS):
        sim.algorithm.step(sim.problem)
    sync = torch.cuda.synchronize if sim.problem.device.type == "cuda" else (lambda: None)
    sync()
    mix_before = sim.mixer.stats.seconds
    t0 = time.perf_counter()
    for _ in range(args.steps):
        sim.algorithm.step(sim.problem)
    sync()
    seconds = time.perf_counter() - t0
    mix_seconds = sim.mixer.stats.seconds - mix_before
    return {
        "algorithm": algorithm,
        "topology": topology,
        "steps_per_second": args.steps / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "mix_ms_per_step": 1000 * mix_seconds / args.steps,
        "finite": bool(torch.isfinite(sim.algorithm.z).all()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", type=int, default=1024)
    p.add_argument("--dim", type=int, default=500, help="bilinear x and y size; d = 2 * dim (default 500)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    p.add_argument("--optimizer", default="oadam")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/bench_simulator.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for topology in TOPOLOGIES:
        for algorithm in ALGORITHMS:
            rows.append(bench_one(algorithm, topology, args))
            r = rows[-1]
            print(f"  {topology:<12} {algorithm:<8} {r['steps_per_second']:9.1f} steps/s", flush=True)

    base = {(r["topology"]): r["steps_per_second"] for r in rows if r["algorithm"] == "dposg"}
    header = f"{'topology':<12} {'algorithm':<9} {'steps/s':>9} {'ms/step':>9} {'mix ms':>8} {'vs dposg':>9}"
    print(f"\nM = {args.peers} peers, d = {2 * args.dim}, t = {args.rounds}, {args.optimizer}, "
          f"{args.threads} thread(s), {args.device}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = float(r["steps_per_second"]) / base[str(r["topology"])]
        print(
            f"{r['topology']:<12} {r['algorithm']:<9} {r['steps_per_second']:9.1f} {r['ms_per_step']:9.2f} "
            f"{r['mix_ms_per_step']:8.2f} {ratio:8.2f}x"
        )
    report = {
        "benchmark": "simulator",
        "peers": args.peers,
        "d": 2 * args.dim,
        "rounds": args.rounds,
        "optimizer": args.optimizer,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
