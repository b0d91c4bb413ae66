"""Print a topology's consensus factor rho, its degree and the gossip rounds t it needs.

rho is the per-round contraction of the disagreement between peers (0: exact averaging in one round).
The suggested t gives rho^t <= --target; with --sigma (and --grad-bound, --batch-size) it also prints
the rounds Theorem 1 of Liu et al. (NeurIPS 2020) asks for, where m is the minibatch size per peer.

Examples:
  p2pgan topology ring --peers 16
  p2pgan topology random-ring --peers 64 --seed 7 --json
  p2pgan topology peers/graph.yaml --peers 6 --sigma 0.1 --grad-bound 1 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import sys

from p2pgan.commands._threads import add_threads_argument, apply_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "kind",
        metavar="KIND",
        help="ring, complete, random-ring, exponential, one-peer-exponential, torus or a YAML adjacency file",
    )
    p.add_argument("--peers", type=int, required=True, metavar="M", help="number of peers")
    p.add_argument("--seed", type=int, default=0, help="shared seed (random-ring)")
    p.add_argument("--target", type=float, default=0.01, help="consensus factor rho^t to reach (default: 0.01)")
    p.add_argument("--sigma", type=float, default=None, help="gradient-noise std: also print Theorem 1's rounds")
    p.add_argument("--grad-bound", type=float, default=1.0, help="Theorem 1: gradient bound G (default: 1)")
    p.add_argument(
        "--batch-size", type=int, default=None, metavar="m",
        help="Theorem 1: minibatch size m per peer (required with --sigma; not the parameter count)",
    )
    # the old flag, kept only to refuse it with a message: it took the parameter count, which is not m
    p.add_argument("--dim", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    from p2pgan.errors import config_error
    from p2pgan.topology import make_topology, theorem1_contraction

    apply_threads(args, torch=False)
    if args.peers < 1:
        raise config_error("--peers", "", f"must be an integer >= 1, got {args.peers}")
    if not 0.0 < args.target < 1.0:
        raise config_error("--target", "", f"must be in (0, 1), got {args.target}")
    if args.dim is not None:
        raise config_error(
            "--dim", "", "is gone: Theorem 1's m is the minibatch size per peer, not the parameter "
            "dimension; write --batch-size m instead",
        )
    if args.sigma is not None:
        if not args.sigma > 0:
            raise config_error("--sigma", "", f"must be > 0, got {args.sigma}")
        if args.batch_size is None or args.batch_size < 1:
            raise config_error(
                "--batch-size", "", "Theorem 1 needs the minibatch size per peer: give --batch-size m >= 1"
            )
        if not args.grad_bound > 0:
            raise config_error("--grad-bound", "", f"must be > 0, got {args.grad_bound}")
    topo = make_topology(args.kind, args.peers, seed=args.seed)
    topo.validate()
    rho = topo.rho()
    out: dict[str, object] = {
        "topology": topo.name,
        "peers": topo.size,
        "seed": topo.seed,
        "time_varying": topo.time_varying,
        "directed": topo.directed,
        "rho": rho,
        "degree": topo.degree(),
        "target": args.target,
        "suggested_rounds": topo.suggested_rounds(args.target),
    }
    if hasattr(topo, "one_round_rho"):  # rho above is a period's average: say what one round does
        out["one_round_rho"] = topo.one_round_rho()
    if args.sigma is not None:
        # the rounds whose mixing reaches Theorem 1's rho^t, from what this schedule's rounds really do
        contraction = theorem1_contraction(
            peers=topo.size, batch_size=args.batch_size, grad_bound=args.grad_bound, sigma=args.sigma
        )
        out["theorem1_rounds"] = topo.rounds_needed(contraction)
    if args.json:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    else:
        for key, value in out.items():
            print(f"{key:>16}: {value:.6g}" if isinstance(value, float) else f"{key:>16}: {value}")
    return 0
