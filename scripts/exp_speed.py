#!/usr/bin/env python
"""Figure 3 analogue: wall time per epoch and speedup vs number of peers, CP vs DP vs Rand-DP.

Every point is a run of M real peer processes on this machine (p2pgan.experiments.worker: real GAN
steps, real mixing), with a fixed total batch (per-peer batch = total / M) so that an epoch is the same
number of steps for every M. Settings:

  gloo       torch.distributed Gloo on loopback: CP = all_reduce, DP / Rand-DP = neighbour exchange
  grpc       the product's mutual-TLS gRPC gossip on loopback (CP = the complete graph, one round)
  grpc+Xms   the same with X ms one-way latency added by a delaying TCP relay in front of every peer
             (this kernel has no netem); the round-trip the relay really adds is measured and reported

M = 1 is the single-process baseline (whole batch, no communication); speedup = T_epoch(1) / T_epoch(M).
On a machine with fewer cores than peers the peers share the cores, so the compute part cannot speed
up; what the comparison then shows is the communication cost of each variant.

    python scripts/exp_speed.py                      # M = 1, 2, 4, 8; ~10-15 min on 2 cores
    python scripts/exp_speed.py --quick              # ~1-2 min
    python scripts/exp_speed.py --model resnet32 --peers 1,2,4 --delay-ms 5

Writes OUT/speed.json and OUT/speed.png.
"""

from __future__ import annotations

import argparse
import os
import math
import sys
from pathlib import Path

from p2pgan.errors import P2PGANError
from p2pgan.experiments.peers import PeerRun, best_of
from p2pgan.experiments.report import format_table, plot_lines, write_json
from p2pgan.experiments.worker import SYNTHETIC_IMAGES
from p2pgan.netem import measure_added_rtt

VARIANTS = {"cp": ("CP", "complete"), "dp": ("DP", "ring"), "rand-dp": ("Rand-DP", "random-ring")}
DIGITS_SAMPLES = 1797


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--peers", default="1,2,4,8", help="comma-separated M values (1 = the single-process baseline)")
    p.add_argument("--variants", default="cp,dp,rand-dp")
    p.add_argument("--settings", default="gloo,grpc,grpc+delay", help="subset of gloo, grpc, grpc+delay")
    p.add_argument("--delay-ms", type=float, default=1.0, help="one-way latency added in the grpc+delay setting")
    p.add_argument("--model", default="digits", help="digits (bundled data) or resnet32 / dcgan32 (synthetic images)")
    p.add_argument("--total-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=15, help="timed steps per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the fastest counts (see best_of)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per peer process")
    p.add_argument("--out", type=Path, default=Path("runs/speed"))
    p.add_argument("--quick", action="store_true", help="M = 1, 2, 4; DP and CP; 4 timed steps")
    args = p.parse_args(argv)
    if args.quick:
        args.peers, args.variants, args.steps, args.warmup, args.repeats = "1,2,4", "cp,dp", 4, 2, 1
    args.peers = sorted({int(m) for m in args.peers.split(",")})
    args.variants = [v for v in args.variants.split(",") if v]
    args.settings = [s for s in args.settings.split(",") if s]
    if not set(args.variants) <= set(VARIANTS) or not set(args.settings) <= {"gloo", "grpc", "grpc+delay"}:
        p.error(f"--variants from {', '.join(VARIANTS)}; --settings from gloo, grpc, grpc+delay")
    if any(args.total_batch % m for m in args.peers):
        p.error(f"--total-batch {args.total_batch} must be a multiple of every M in --peers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = DIGITS_SAMPLES if args.model == "digits" else SYNTHETIC_IMAGES
    steps_per_epoch = math.ceil(samples / args.total_batch)
    common = {"model": args.model, "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
    report: dict[str, object] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                 "steps_per_epoch": steps_per_epoch}
    try:
        rtt = measure_added_rtt(args.delay_ms / 1e3) if "grpc+delay" in args.settings else None
        if rtt:
            print(f"relay: {args.delay_ms} ms one-way adds {rtt['added_rtt_ms']:.3f} ms round trip "
                  f"(direct {rtt['direct_rtt_ms']:.3f} ms, relayed {rtt['relay_rtt_ms']:.3f} ms)", flush=True)
        report["relay_rtt"] = rtt
        rows: list[dict[str, object]] = []
        base = None
        if 1 in args.peers:
            base = best_of(PeerRun(peers=1, backend="none", batch=args.total_batch, **common), args.repeats)
            rows.append({"variant": "single", "setting": "-", "peers": 1, "step_s": base["step_s"],
                         "epoch_s": base["step_s"] * steps_per_epoch, "speedup": 1.0, "mix_s_per_step": 0.0})
            print(f"M=1 baseline: {rows[-1]['epoch_s']:.2f} s/epoch", flush=True)
        for setting in args.settings:
            for variant in args.variants:
                label, topology = VARIANTS[variant]
                for m in [m for m in args.peers if m > 1]:
                    run = PeerRun(peers=m, backend=setting.split("+")[0], topology=topology,
                                  batch=args.total_batch // m,
                                  delay_ms=args.delay_ms if setting == "grpc+delay" else 0.0, **common)
                    r = best_of(run, args.repeats)
                    epoch_s = r["step_s"] * steps_per_epoch
                    rows.append({"variant": label, "setting": setting.replace("delay", f"{args.delay_ms:g}ms"),
                                 "peers": m, "step_s": r["step_s"], "epoch_s": epoch_s,
                                 "speedup": (base["step_s"] * steps_per_epoch / epoch_s) if base else None,
                                 "mix_s_per_step": r["mix_s_per_step"], "field_s_per_step": r["field_s_per_step"],
                                 "bytes_sent_per_step": r["bytes_sent_per_step"], "dropped": r["dropped"]})
                    print(f"{label:8s} {rows[-1]['setting']:10s} M={m}: {epoch_s:.2f} s/epoch, "
                          f"exposed mixing {1e3 * r['mix_s_per_step']:.1f} ms/step", flush=True)
    except P2PGANError as exc:
        print(f"exp_speed: error: {exc}", file=sys.stderr)
        return 2
    report["rows"] = rows
    report["load_average_after"] = os.getloadavg()  # this machine is shared: context for the timings
    write_json(args.out / "speed.json", report)
    lines: dict[str, dict[str, list[tuple[float, float]]]] = {"time per epoch (s)": {}, "speedup vs 1 peer": {}}
    for r in rows[1:] if base else rows:
        key = f"{r['variant']} {r['setting']}"
        lines["time per epoch (s)"].setdefault(key, []).append((r["peers"], r["epoch_s"]))
        if r["speedup"] is not None:
            lines["speedup vs 1 peer"].setdefault(key, []).append((r["peers"], r["speedup"]))
    if base:
        for series in lines["time per epoch (s)"].values():
            series.append((1, rows[0]["epoch_s"]))
        for series in lines["speedup vs 1 peer"].values():
            series.append((1, 1.0))
    else:
        lines.pop("speedup vs 1 peer")
    plot_lines(args.out / "speed.png", lines, xlabel="peers M", log_x=True,
               title=f"{args.model}, total batch {args.total_batch}, {args.threads} thread(s)/peer")
    print(format_table(rows, ["variant", "setting", "peers", "epoch_s", "speedup", "step_s", "mix_s_per_step"]))
    print(f"wrote {args.out}/speed.json and speed.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
