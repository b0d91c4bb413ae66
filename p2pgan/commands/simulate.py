"""Run DPOSG and its baselines on M virtual peers of a toy min-max problem, all in this process.

Examples:
  p2pgan simulate --problem bilinear --peers 16 --topology ring --algorithm dposg --steps 1000
  p2pgan simulate --problem bilinear --peers 16 --algorithm dgda --json        # the baseline that fails
  p2pgan simulate --problem bilinear --peers 16 --schedule exact               # Algorithm 1 as written
  p2pgan simulate --problem linear-wgan --optimizer oadam --lr 0.01 --steps 3000
  p2pgan simulate --problem gaussians --peers 4 --topology random-ring --steps 8000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from p2pgan.commands._threads import add_threads_argument, apply_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    # names are checked (with the allowed list in the error) by SimConfig; no torch import here
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--problem", default="bilinear", help="bilinear, linear-wgan or gaussians (default: bilinear)")
    p.add_argument("--peers", type=int, default=8, metavar="M", help="number of virtual peers (default: 8)")
    p.add_argument(
        "--topology",
        default=None,
        metavar="KIND",
        help="ring, complete, random-ring, exponential, one-peer-exponential, torus or a YAML adjacency file "
        "(default: ring; cp: complete)",
    )
    p.add_argument("--rounds", type=int, default=None, metavar="T", help="gossip rounds per step (default: 1)")
    p.add_argument("--steps", type=int, default=1000, help="iterations (default: 1000)")
    p.add_argument("--lr", type=float, default=None, help="step size (default: the problem's)")
    p.add_argument("--lr-u", type=float, default=None, help="step size of the min player / generator (default: --lr)")
    p.add_argument("--lr-v", type=float, default=None, help="step size of the max player / discriminator (default: --lr)")
    p.add_argument("--algorithm", default="dposg", help="dposg, dgda or cp (default: dposg)")
    p.add_argument(
        "--schedule",
        default=None,
        help="exact (Algorithm 1) or overlap (the paper's implementation), as a peer config's `schedule`; "
        "dposg and cp only (default: overlap for dposg, exact for cp)",
    )
    p.add_argument("--optimizer", default=None, help="osg, oadam or oadagrad (default: the problem's)")
    p.add_argument("--seed", type=int, default=0, help="seeds data, initial points, noise, random topologies")
    p.add_argument("--dim", type=int, default=None, help="bilinear: size of x and of y (default: 10)")
    p.add_argument("--hetero", type=float, default=0.0, help="spread of the peers' local games (0 = identical)")
    p.add_argument("--sigma", type=float, default=0.0, help="gradient-noise standard deviation (default: 0)")
    p.add_argument("--batch", type=int, default=64, help="gaussians: minibatch per peer (default: 64)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N", help="metrics every N steps (default: steps/20)")
    p.add_argument("--compression", default="none",
                   help="compressed gossip with CHOCO public copies: none, identity, bf16-delta, int8, topk:FRACTION")
    p.add_argument("--consensus-step", type=float, default=None,
                   help="CHOCO's gamma with --compression (default: 1; for topk 5 x its fraction, at most 0.1, as mixing.consensus_step)")
    p.add_argument("--device", default="cpu", help="torch device of the [M, d] rows (default: cpu)")
    add_threads_argument(p)
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write curves (and samples) to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout (no progress bar)")


def run(args: argparse.Namespace) -> int:
    from p2pgan.compression.spec import default_consensus_step
    from p2pgan.sim.runner import SimConfig, simulate

    apply_threads(args)
    config = SimConfig(
        problem=args.problem,
        peers=args.peers,
        topology=args.topology,
        rounds=args.rounds,
        steps=args.steps,
        lr=args.lr,
        lr_u=args.lr_u,
        lr_v=args.lr_v,
        algorithm=args.algorithm,
        schedule=args.schedule,
        optimizer=args.optimizer,
        seed=args.seed,
        dim=args.dim,
        hetero=args.hetero,
        sigma=args.sigma,
        batch=args.batch,
        eval_every=args.eval_every,
        device=args.device,
        compression=args.compression,
        consensus_step=args.consensus_step if args.consensus_step is not None
        else default_consensus_step(args.compression, "--compression"),
    )
    result = simulate(config, show_progress=not args.json, plot=args.plot)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
    keys = ("problem", "algorithm", "schedule", "optimizer", "topology", "peers", "rounds", "steps", "diverged",
            "distance", "consensus", "modes", "high_quality", "steps_per_second")
    for key in keys:
        if key in result and result[key] is not None:
            value = result[key]
            print(f"{key:>16}: {value:.6g}" if isinstance(value, float) else f"{key:>16}: {value}")
    return 0
