"""Start M real peer processes (:mod:`p2pgan.experiments.worker`), optionally behind latency relays, and
collect their step timings. Every process is killed on exit, also on errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from p2pgan.errors import ConfigError, PeerUnavailableError
from p2pgan.netem import LatencyRelay
from p2pgan.wire.workers import exchange_ports, worker_processes

BACKENDS = ("none", "gloo", "grpc")
FEDERATION = "bench"
#: seconds a run may take for start-up (imports, TLS, rendezvous) beyond its steps
STARTUP_TIMEOUT_S = 120.0
#: seconds each step may take at most (a generous bound for the 32x32 ResNet on a loaded CPU)
STEP_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class PeerRun:
    """One timed run: ``peers`` processes, one backend, one topology, one schedule."""

    peers: int
    backend: str  # none | gloo | grpc
    topology: str = "ring"
    rounds: int = 1
    schedule: str = "exact"
    model: str = "digits"
    batch: int = 16  # per peer
    warmup: int = 3
    steps: int = 10
    delay_ms: float = 0.0  # one-way delay added by a relay in front of every peer (grpc only)
    threads: int = 1
    lr: float = 1e-3
    seed: int = 0
    round_timeout_s: float = 30.0

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
        if self.delay_ms > 0 and self.backend != "grpc":
            raise ConfigError(
                "added latency needs the grpc backend: Gloo's peers connect to addresses they exchange "
                "among themselves, so a relay cannot be put in front of them"
            )
        if self.peers < 1 or self.steps < 1 or self.warmup < 0 or self.batch < 1:
            raise ConfigError(f"need peers >= 1, steps >= 1, warmup >= 0, batch >= 1: {self}")


def best_of(run: PeerRun, repeats: int) -> dict[str, Any]:
    """:func:`run_peers` ``repeats`` times; the run with the smallest ``step_s`` (load from other processes
    only ever adds time, so the minimum is the least disturbed measurement). All ``step_s`` are kept."""
    results = [run_peers(run) for _ in range(max(1, repeats))]
    best = min(results, key=lambda r: r["step_s"])
    return {**best, "repeats_step_s": [r["step_s"] for r in results]}


def run_peers(run: PeerRun) -> dict[str, Any]:
    """Run ``run`` and return its timings: ``step_s`` (the median step time of the slowest peer), the
    per-peer results and the mean exposed mixing and compute seconds per step."""
    run.validate()
    from p2pgan.harness import free_ports

    ids = [f"peer{i:02d}" for i in range(run.peers)]
    with tempfile.TemporaryDirectory(prefix="p2pgan-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        tls: dict[str, Any] = {}
        if run.backend == "grpc" and run.peers > 1:
            from p2pgan.security.certs import make_federation

            tls = make_federation(root / "federation", FEDERATION, ids)
        init = f"tcp://127.0.0.1:{free_ports(1)[0]}"
        env = dict(os.environ, OMP_NUM_THREADS=str(run.threads))
        configs = {
            pid: {
                **dataclasses.asdict(run), "rank": rank, "world": run.peers, "peer_id": pid, "federation": FEDERATION,
                "init_method": init, "connect_timeout_s": STARTUP_TIMEOUT_S,
                "tls": {k: str(v) for k, v in vars(tls[pid]).items()} if tls else None,
            }
            for rank, pid in enumerate(ids)
        }
        by_id = stack.enter_context(worker_processes("p2pgan.experiments.worker", configs, root, env))
        procs = list(by_id.values())

        def dial(port: int | None) -> int | None:
            if port is not None and run.delay_ms > 0:
                return stack.enter_context(LatencyRelay(("127.0.0.1", port), run.delay_ms / 1e3)).port
            return port

        exchange_ports(by_id, "bench peer", dial)
        budget = STARTUP_TIMEOUT_S + (run.warmup + run.steps) * STEP_TIMEOUT_S
        outputs: dict[str, str] = {}
        readers = [
            threading.Thread(target=lambda pid=pid, proc=proc: outputs.__setitem__(pid, proc.stdout.read()), daemon=True)
            for pid, proc in zip(ids, procs)
        ]
        for t in readers:
            t.start()
        results = []
        for pid, proc, reader in zip(ids, procs, readers):
            try:
                proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                raise PeerUnavailableError(f"bench peer {pid} did not finish within {budget:.0f} s") from None
            reader.join(STARTUP_TIMEOUT_S)
            out = outputs.get(pid, "")
            if proc.returncode != 0 or not out.strip():
                raise PeerUnavailableError(f"bench peer {pid} failed (rc {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "run": dataclasses.asdict(run),
        # the median step of the slowest peer: robust to the odd step slowed by other load on the machine
        "step_s": max(statistics.median(r["step_seconds"]) for r in results),
        "mean_step_s": max(r["seconds"] for r in results) / run.steps,
        "mix_s_per_step": statistics.mean(r["mix_seconds"] for r in results) / run.steps,
        "field_s_per_step": statistics.mean(r["field_seconds"] for r in results) / run.steps,
        "bytes_sent_per_step": statistics.mean(r["bytes_sent"] for r in results) / run.steps,
        "dim": results[0]["dim"],
        "dropped": sum(r["dropped"] for r in results),
        "per_peer": results,
    }
