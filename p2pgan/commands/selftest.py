"""Check that a federation works end to end: M peer processes on loopback mix random vectors over
mutual TLS for T rounds; the results are compared with the matrix product W(k, T-1)...W(k, 0) X.

Examples:
  p2pgan selftest --peers 4
  p2pgan selftest --peers 8 --topology exponential --rounds 2 --size-mb 16 --json
  p2pgan selftest --peers 3 --size-mb 256 --steps 5 --connections 4
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers", type=int, default=4, help="number of peer processes M (default 4)")
    parser.add_argument("--topology", default="ring", help="topology name (default ring)")
    parser.add_argument("--rounds", type=int, default=1, help="mixing rounds T per step (default 1)")
    parser.add_argument("--size-mb", type=float, default=1.0, help="vector size in MB of float32 (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="steps to mix (default 3; step 0 is warm-up)")
    parser.add_argument("--wire-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--connections", type=int, default=1,
                        help="gRPC connections (TCP + TLS sessions) per neighbour, 1-16 (mixing.connections; default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from p2pgan.topology import TOPOLOGY_NAMES
    from p2pgan.errors import config_error
    from p2pgan.wire.limits import MAX_CONNECTIONS
    from p2pgan.wire.selftest import run_selftest

    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise config_error("--connections", "", f"{args.connections} is outside 1..{MAX_CONNECTIONS}")
    if args.topology not in TOPOLOGY_NAMES:
        raise config_error("--topology", "", f"{args.topology!r} is not one of {', '.join(TOPOLOGY_NAMES)}")
    report = run_selftest(
        args.peers, args.topology, args.rounds, size_mb=args.size_mb, steps=args.steps,
        seed=args.seed, wire_dtype=args.wire_dtype, connections=args.connections,
    )
    tol = 1e-4 if args.wire_dtype == "float32" else 5e-2
    ok = report["max_abs_error"] is not None and report["max_abs_error"] <= tol and report["dropped"] == 0
    report["ok"] = ok
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "per_peer"}, indent=2))
    else:
        print(
            f"selftest {'OK' if ok else 'FAILED'}: {report['peers']} peers, {report['topology']}, "
            f"{report['rounds']} round(s) x {report['steps']} steps of {report['size_mb']:.2f} MB: "
            f"max |error| vs matrix product = {report['max_abs_error']:.3g}, "
            f"median round {report['round_ms']:.2f} ms, dropped {report['dropped']}"
        )
    return 0 if ok else 1
