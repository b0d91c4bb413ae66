"""Benchmark one ring mixing round over our mutual-TLS gRPC wire against torch.distributed Gloo and raw TCP.

For each payload (MB of float32) and each M (processes on loopback), in one run:
  grpc_ring     one GrpcMixer round on the ring (send to both neighbours, receive both, weighted sum)
  gloo_ring     the same exchange with Gloo isend/irecv to both neighbours, then the average
  gloo_allreduce  a Gloo all_reduce of the vector (the centralized CP baseline)
  tcp_oneway    a raw TCP transfer of the same bytes between two of the processes (floor of the medium)
Times are the median over repetitions of the slowest rank. Beside them, for each transport, the CPU
seconds one peer spends per round (all its threads; the largest over the peers) and the peak resident
memory one peer adds during it (in MB and as a multiple of the payload; measured above the process's
resident memory before that transport's first round, warm-up included; gRPC runs first, so nothing
another transport freed can hide part of its peak).

The floor, measured in the same run on this machine: AES-128-GCM encryption and decryption rates
(``cryptography``, the OpenSSL that TLS uses) and the memcpy rate. Per ring round a TLS peer encrypts
its vector twice (one copy per neighbour), decrypts two vectors, and copies each of those four at least
once (:data:`FLOOR_COPIES`); ``floor_cpu`` is that CPU time per peer, ``floor_round`` the wall time
M peers need for it on this machine's cores. Prints a table and writes JSON with ratios.

``--dtypes float32 bfloat16 float16`` also times the gRPC ring round with each narrower
``mixing.wire_dtype``, on the same payload counted in float32 elements (8.36 MB of float32 parameters
go out as 4.18 MB of bfloat16): one GrpcMixer per dtype, one after the other in the same processes, the
cast to the wire dtype included in the round (it is part of what the mixer does). float32 is always
measured (the speedups are against it); the other transports do not depend on the wire dtype.

    python scripts/bench_gossip.py                      # payloads 1, 8.36, 100 MB; M = 4 and 8
    python scripts/bench_gossip.py --quick              # payloads 1, 8.36 MB; M = 4; fewer repetitions
    python scripts/bench_gossip.py --sizes 315 --peers 3   # the Self-Attention GAN's size
    python scripts/bench_gossip.py --payloads 8.36 100 --peers 4 --dtypes float32 bfloat16 float16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
SOCKET_TIMEOUT_S = 120.0
#: full passes over the payload per ring round besides the crypto (see the module docstring)
FLOOR_COPIES = 4
#: bytes per floor measurement
FLOOR_BUFFER_BYTES = 32 * 1024 * 1024
#: mixing.wire_dtype values (p2pgan.wire.codec.WIRE_DTYPES; spelt out so that --help needs no torch import)
WIRE_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def wire_dtypes(names: list[str]) -> list[str]:
    """The wire dtypes to time: float32 first (the baseline of the speedups), then the others once each."""
    return list(dict.fromkeys(["float32", *names]))


def dtype_table(rows: list[dict[str, Any]]) -> str:
    """The gRPC ring round per wire dtype: bytes one peer sends per round, time, CPU, speedup vs float32."""
    lines = [f"{'M':>3} {'MB f32':>7} {'dtype':>9} {'sent/peer':>10} {'grpc ring':>10} {'cpu/peer':>9} "
             f"{'peak':>7} {'vs f32':>7}"]
    for r in rows:
        for name, by in r["grpc_by_dtype"].items():
            lines.append(f"{r['peers']:>3} {r['payload_mb']:>7.2f} {name:>9} {by['sent_mb_per_peer']:>8.2f}MB "
                         f"{by['ring_ms']:>8.2f}ms {by['cpu_ms_per_peer']:>7.1f}ms {by['peak_mb_per_peer']:>5.0f}MB "
                         f"{by['speedup_vs_float32']:>6.2f}x" + (f"  ({by['fallbacks']:.0f} float32 fallbacks)"
                                                                 if by.get("fallbacks") else ""))
    return "\n".join(lines)


def floor_rates() -> dict[str, float]:
    """AES-128-GCM encrypt / decrypt and memcpy rates of one core of this machine, in bytes per second.

    The cipher runs through OpenSSL (``cryptography``) over one preallocated buffer, as TLS does over
    its records, so the rate is the cipher's and not Python's or the allocator's.
    """
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv = os.urandom(16), os.urandom(12)
    src = np.frombuffer(os.urandom(FLOOR_BUFFER_BYTES), dtype=np.uint8)
    dst = np.zeros(FLOOR_BUFFER_BYTES + 15, dtype=np.uint8)  # pages touched before timing

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return FLOOR_BUFFER_BYTES / min(times)

    def gcm(encrypt: bool) -> None:
        mode = modes.GCM(iv) if encrypt else modes.GCM(iv, b"\0" * 16)
        cipher = Cipher(algorithms.AES(key), mode)
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        ctx.update_into(src, dst)  # no finalize: the tag check is one block, the cost is the stream

    return {"aes_gcm_encrypt_Bps": best(lambda: gcm(True)), "aes_gcm_decrypt_Bps": best(lambda: gcm(False)),
            "memcpy_Bps": best(lambda: np.copyto(dst[:FLOOR_BUFFER_BYTES], src))}


def floor_cpu_s(nbytes: float, rates: dict[str, float]) -> float:
    """CPU seconds one TLS peer needs at least per ring round: 2 encryptions, 2 decryptions, the copies."""
    return nbytes * (2 / rates["aes_gcm_encrypt_Bps"] + 2 / rates["aes_gcm_decrypt_Bps"]
                     + FLOOR_COPIES / rates["memcpy_Bps"])


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Linux: start a new peak-RSS window (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
                            timeout=timedelta(seconds=SOCKET_TIMEOUT_S))
    left, right = (rank - 1) % m, (rank + 1) % m
    results: dict[str, dict[str, float]] = {}

    def slowest(seconds: list[float]) -> float:
        t = torch.tensor(seconds, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.median()) * 1e3

    def timed(fn, reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    def costly(fn, reps: int, warmup: int = 2) -> tuple[list[float], float, float]:
        """``timed`` after ``warmup`` untimed repetitions, plus this process's CPU seconds per timed
        repetition and its peak RSS, MB, above the resident memory before the warm-up (so memory the
        first rounds fault in counts: the baseline is the process before any round of this transport)."""
        base = _rss_kb("VmRSS")
        tracked = _reset_peak_rss()
        timed(fn, warmup)
        cpu0 = time.process_time()
        wall = timed(fn, reps)
        cpu = (time.process_time() - cpu0) / reps
        peak = (_rss_kb("VmHWM") - base) / 1024 if tracked else float("nan")
        return wall, cpu, peak

    def largest(value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0])

    fed = Path(args.federation)
    pid = f"peer{rank}"
    tls = peer_files(fed / "peers" / pid)
    # the TCP server of the raw transfer (rank 1 receives from rank 0)
    lsock = socket.create_server(("127.0.0.1", 0)) if rank == 1 else None
    tcp_port = [lsock.getsockname()[1] if lsock else 0]
    for mb in args.payloads:
        d = int(mb * 1e6 / 4)
        reps = args.reps if mb < 50 else max(3, args.reps // 3)
        x = torch.randn(d)
        # Gloo ring exchange
        bl, br = torch.empty(d), torch.empty(d)

        def gloo_ring() -> torch.Tensor:
            reqs = [dist.isend(x, left), dist.isend(x, right), dist.irecv(bl, left), dist.irecv(br, right)]
            for r in reqs:
                r.wait()
            return (x + bl + br) / 3

        def gloo_allreduce() -> None:
            y = x.clone()
            dist.all_reduce(y)

        # gRPC ring round, once per wire dtype (same x: d float32 elements, cast by the mixer)
        by_dtype: dict[str, dict[str, float]] = {}
        for wire_dtype in args.dtypes:
            net = NetworkConfig(federation=args.fed_name, peer_id=pid, tls=tls, topology="ring", rounds=1,
                                round_timeout_s=60.0, wire_dtype=wire_dtype)
            with GrpcMixer(net, dim=d) as mixer:
                join_ranks(mixer, m, 60)
                step = iter(range(10**6))
                sent0 = mixer.stats.bytes_sent
                grpc_s, grpc_cpu, grpc_peak = costly(lambda: mixer.mix(x.unsqueeze(0), next(step)), reps)
                sent_mb = (mixer.stats.bytes_sent - sent0) / (reps + 2) / 1e6  # warm-up included: same size
                fallbacks = mixer.wire_fallbacks
                dist.barrier()  # nobody closes while a neighbour still waits for its last round
            by_dtype[wire_dtype] = {
                "ring_ms": slowest(grpc_s), "cpu_ms_per_peer": largest(grpc_cpu) * 1e3,
                "peak_mb_per_peer": largest(grpc_peak), "sent_mb_per_peer": largest(sent_mb),
                "fallbacks": largest(fallbacks),
            }
        # Gloo after gRPC: memory Gloo frees and the allocator keeps would hide part of gRPC's peak
        ring_s, ring_cpu, ring_peak = costly(gloo_ring, reps)
        timed(gloo_allreduce, 1)
        ar_s = timed(gloo_allreduce, reps)
        # raw TCP one-way transfer rank 0 -> rank 1 (+ 1-byte ack)
        dist.broadcast_object_list(tcp_port, src=1)
        payload = x.numpy().tobytes()
        tcp_s: list[float] = []
        if rank in (0, 1):
            if rank == 0:
                conn = socket.create_connection(("127.0.0.1", tcp_port[0]))
            else:
                assert lsock is not None
                conn, _ = lsock.accept()
            buf = bytearray(len(payload))
            with conn:
                for _ in range(reps + 1):
                    t0 = time.perf_counter()
                    if rank == 0:
                        conn.sendall(payload)
                        conn.recv(1)
                    else:
                        view, got = memoryview(buf), 0
                        while got < len(buf):
                            got += conn.recv_into(view[got:])
                        conn.sendall(b"k")
                    tcp_s.append(time.perf_counter() - t0)
            tcp_s = tcp_s[1:]
        all_tcp = [None] * m
        dist.all_gather_object(all_tcp, statistics.median(tcp_s) * 1e3 if rank == 0 else None)
        f32 = by_dtype["float32"]
        results[str(mb)] = {
            "grpc_ring_ms": f32["ring_ms"], "gloo_ring_ms": slowest(ring_s),
            "gloo_allreduce_ms": slowest(ar_s), "tcp_oneway_ms": float(all_tcp[0]),
            "grpc_cpu_ms_per_peer": f32["cpu_ms_per_peer"], "gloo_cpu_ms_per_peer": largest(ring_cpu) * 1e3,
            "grpc_peak_mb_per_peer": f32["peak_mb_per_peer"], "gloo_peak_mb_per_peer": largest(ring_peak),
            "grpc_by_dtype": by_dtype,
        }
    if rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def _run_world(m: int, payloads: list[float], reps: int, tmp: Path, dtypes: list[str]) -> dict[str, dict[str, Any]]:
    from p2pgan.harness import free_ports
    from p2pgan.security.certs import make_federation
    from p2pgan.wire.workers import run_ranks

    fed_name = f"bench-{os.getpid()}-{m}"
    make_federation(tmp / fed_name, fed_name, [f"peer{i}" for i in range(m)])
    out = tmp / f"result-{m}.json"
    (master,) = free_ports(1)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--world", str(m), "--master-port", str(master),
           "--federation", str(tmp / fed_name), "--fed-name", fed_name, "--out", str(out), "--reps", str(reps),
           "--payloads", *map(str, payloads), "--dtypes", *dtypes]
    run_ranks(cmd, m, env, "bench_gossip")
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="payloads 1 and 8.36 MB, M = 4, 5 repetitions")
    parser.add_argument("--peers", type=int, nargs="+", help="values of M (default 4 8; quick: 4)")
    parser.add_argument("--payloads", "--sizes", type=float, nargs="+", help="MB of float32 (default 1 8.36 100)")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 10; quick: 5)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=WIRE_DTYPE_NAMES, metavar="DTYPE",
                        help="wire dtypes of the gRPC round (float32 always included): "
                             f"{' '.join(WIRE_DTYPE_NAMES)} (default float32)")
    parser.add_argument("--json-out", type=Path, default=ROOT / "runs" / "bench_gossip.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--rank", "--world", "--master-port"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--federation", help=argparse.SUPPRESS)
    parser.add_argument("--fed-name", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0
    peers = args.peers or ([4] if args.quick else [4, 8])
    payloads = args.payloads or ([1.0, 8.36] if args.quick else [1.0, 8.36, 100.0])
    reps = args.reps or (5 if args.quick else 10)
    dtypes = wire_dtypes(args.dtypes)
    rows = []
    rates = floor_rates()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="p2pgan-bench-") as tmp:
        for m in peers:
            print(f"M = {m}: {len(payloads)} payloads x {3 + len(dtypes)} transports ...", file=sys.stderr, flush=True)
            for mb, r in _run_world(m, payloads, reps, Path(tmp), dtypes).items():
                r = {"peers": m, "payload_mb": float(mb), **r}
                r["grpc_over_gloo_ring"] = r["grpc_ring_ms"] / r["gloo_ring_ms"]
                r["grpc_over_gloo_allreduce"] = r["grpc_ring_ms"] / r["gloo_allreduce_ms"]
                r["grpc_over_tcp_oneway"] = r["grpc_ring_ms"] / r["tcp_oneway_ms"]
                r["floor_cpu_ms_per_peer"] = floor_cpu_s(float(mb) * 1e6, rates) * 1e3
                r["floor_round_ms"] = r["floor_cpu_ms_per_peer"] * max(1.0, m / cores)
                r["grpc_over_floor"] = r["grpc_ring_ms"] / r["floor_round_ms"]
                r["grpc_peak_over_payload"] = r["grpc_peak_mb_per_peer"] / float(mb)
                for by in r["grpc_by_dtype"].values():
                    by["speedup_vs_float32"] = r["grpc_ring_ms"] / by["ring_ms"]
                rows.append(r)
    print(f"floor on this machine: AES-128-GCM {rates['aes_gcm_encrypt_Bps'] / 1e9:.2f} GB/s encrypt, "
          f"{rates['aes_gcm_decrypt_Bps'] / 1e9:.2f} GB/s decrypt, memcpy {rates['memcpy_Bps'] / 1e9:.2f} GB/s "
          f"(one core; {cores} cores)")
    head = (f"{'M':>3} {'MB':>7} {'grpc ring':>10} {'gloo ring':>10} {'allreduce':>10} {'tcp 1-way':>10} "
            f"{'floor':>9} {'grpc/gloo':>9} {'grpc/floor':>10} {'cpu grpc':>9} {'cpu gloo':>9} {'peak grpc':>13}")
    print(head)
    for r in rows:
        print(f"{r['peers']:>3} {r['payload_mb']:>7.2f} {r['grpc_ring_ms']:>8.2f}ms {r['gloo_ring_ms']:>8.2f}ms "
              f"{r['gloo_allreduce_ms']:>8.2f}ms {r['tcp_oneway_ms']:>8.2f}ms {r['floor_round_ms']:>7.2f}ms "
              f"{r['grpc_over_gloo_ring']:>9.2f} {r['grpc_over_floor']:>10.2f} {r['grpc_cpu_ms_per_peer']:>7.1f}ms "
              f"{r['gloo_cpu_ms_per_peer']:>7.1f}ms {r['grpc_peak_mb_per_peer']:>6.0f}MB {r['grpc_peak_over_payload']:>4.1f}x")
    if len(dtypes) > 1:
        print()
        print(dtype_table(rows))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"cpu_count": cores, "reps": reps, "floor_rates_Bps": rates,
                                         "floor_copies": FLOOR_COPIES, "dtypes": dtypes, "rows": rows}, indent=2))
    print(f"JSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
