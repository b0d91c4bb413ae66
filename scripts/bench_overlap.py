"""How much of a gossip exchange the overlap schedule hides behind a step's compute (issue 11 item 5).

M real peer processes on loopback (mutual TLS, ring, one round per step) hold a vector of the given size
and run, per step, a synthetic compute together with one mixing round. The compute is either

  device    the host thread waits ``--compute-s`` seconds, as it waits for a GPU step (the default: the
            paper's models train on GPUs, and the host's cores are then free for the wire), or
  cpu       a fixed amount of host work (single-thread matrix products, calibrated in this process to
            ``--compute-s`` seconds on an idle core), as a CPU-only peer computes;

and the modes are

  compute   the compute alone (no mixing)
  mix       the mixing round alone
  exact     mix, then compute (the exact schedule: x_k is mixed before the step uses it)
  overlap   start the round, compute, wait for the round (DP-OAdam's overlap schedule)

For each mode the step time is the median over steps of the slowest peer. The exposed communication is
``exact - compute``; the overlap schedule hides ``(exact - overlap) / (exact - compute)`` of it. All M
peers share this machine's cores, so the mixing threads of one peer compete with the compute of all of
them (on a cluster each peer has its own node: read the cpu numbers as a lower bound on what is hidden).
Prints a table and writes JSON.

    python scripts/bench_overlap.py                                # 315 MB, M = 3, 0.5 s device compute
    python scripts/bench_overlap.py --compute cpu                  # ... 0.5 s of host work instead
    python scripts/bench_overlap.py --size-mb 8.36 --peers 4 --compute-s 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
MODES = ("compute", "mix", "exact", "overlap")
MATRIX = 256  # side of the matrices of the synthetic compute


def calibrate(seconds: float) -> int:
    """Matrix products of MATRIX x MATRIX (one thread) that take ``seconds`` on an idle core."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(MATRIX, MATRIX)
    for _ in range(20):
        a @ a  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        a @ a
        n += 1
    return max(1, round(n * seconds / (time.perf_counter() - t0)))


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from p2pgan.security.certs import peer_files
    from p2pgan.wire.config import NetworkConfig
    from p2pgan.wire.mixer import GrpcMixer
    from p2pgan.wire.workers import join_ranks

    torch.set_num_threads(1)
    rank, m = args.rank, args.world
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.master_port}", rank=rank, world_size=m,
                            timeout=timedelta(seconds=300))
    d = int(args.size_mb * 1e6 / 4)
    a = torch.randn(MATRIX, MATRIX)

    def compute() -> None:
        if args.compute == "device":
            time.sleep(args.compute_s)  # the host waits for the (emulated) device: its cores are free
            return
        for _ in range(args.products):
            a @ a

    fed = Path(args.federation)
    pid = f"peer{rank}"
    tls = peer_files(fed / "peers" / pid)
    net = NetworkConfig(federation=args.fed_name, peer_id=pid, tls=tls, topology="ring", rounds=1,
                        round_timeout_s=120.0)
    x = torch.randn(1, d)
    results: dict[str, list[float]] = {}
    with GrpcMixer(net, dim=d) as mixer:
        join_ranks(mixer, m, 120)
        step = iter(range(10**6))
        runs = {
            "compute": compute,
            "mix": lambda: mixer.mix(x, next(step)),
            "exact": lambda: (mixer.mix(x, next(step)), compute()),
            "overlap": lambda: (lambda h: (compute(), h.wait()))(mixer.start(x, next(step))),
        }
        for mode in MODES:
            seconds = []
            for i in range(args.steps + 1):  # the first is a warm-up
                dist.barrier()
                t0 = time.perf_counter()
                runs[mode]()
                if i:
                    seconds.append(time.perf_counter() - t0)
            t = torch.tensor(seconds, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest peer of each step
            results[mode] = t.tolist()
        dist.barrier()  # nobody closes while a neighbour still waits for its last round
    if rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=315.0, help="MB of float32 per peer (default 315)")
    parser.add_argument("--peers", type=int, default=3, help="M (default 3)")
    parser.add_argument("--compute-s", type=float, default=0.5, help="compute per step, seconds (default 0.5)")
    parser.add_argument("--compute", choices=("device", "cpu"), default="device",
                        help="device: the host waits (a GPU step); cpu: host work of that length on an idle core")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default 3, plus a warm-up)")
    parser.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_overlap.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--rank", "--world", "--master-port", "--products"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--federation", help=argparse.SUPPRESS)
    parser.add_argument("--fed-name", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0
    if args.peers < 2 or args.size_mb <= 0 or args.compute_s <= 0 or args.steps < 1:
        parser.error("need --peers >= 2, --size-mb > 0, --compute-s > 0 and --steps >= 1")
    from p2pgan.harness import free_ports
    from p2pgan.security.certs import make_federation
    from p2pgan.wire.workers import run_ranks

    products = calibrate(args.compute_s)
    what = (f"a {args.compute_s:g} s wait (device)" if args.compute == "device" else
            f"{args.compute_s:g} s of host work ({products} products of {MATRIX}x{MATRIX} on an idle core)")
    print(f"M = {args.peers}, {args.size_mb:g} MB, compute {what}; {os.cpu_count()} cores shared by all peers ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="p2pgan-bench-overlap-") as tmp:
        fed_name = f"overlap-{os.getpid()}"
        make_federation(Path(tmp) / fed_name, fed_name, [f"peer{i}" for i in range(args.peers)])
        out = Path(tmp) / "result.json"
        (master,) = free_ports(1)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--world", str(args.peers),
               "--master-port", str(master), "--federation", str(Path(tmp) / fed_name), "--fed-name", fed_name,
               "--out", str(out), "--size-mb", str(args.size_mb), "--steps", str(args.steps),
               "--products", str(products), "--compute", args.compute, "--compute-s", str(args.compute_s)]
        run_ranks(cmd, args.peers, env, "bench_overlap")
        raw = json.loads(out.read_text())
    step = {mode: statistics.median(raw[mode]) for mode in MODES}
    exposed = step["exact"] - step["compute"]
    hidden = (step["exact"] - step["overlap"]) / exposed if exposed > 0 else float("nan")
    print(f"{'mode':>8} {'step (s)':>9}")
    for mode in MODES:
        print(f"{mode:>8} {step[mode]:9.3f}")
    print(f"exposed communication (exact - compute): {exposed:.3f} s; the overlap schedule hides {hidden:.0%} of it "
          f"(overlap step = {step['overlap'] / step['compute']:.2f}x the compute alone)")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({
        "peers": args.peers, "size_mb": args.size_mb, "compute": args.compute, "compute_s": args.compute_s,
        "products": products,
        "cores": os.cpu_count(), "steps": args.steps, "step_s": step, "raw_s": raw,
        "exposed_s": exposed, "hidden_fraction": hidden,
    }, indent=2))
    print(f"JSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
