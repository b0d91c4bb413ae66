"""``p2pgan selftest``: M real peer processes on loopback mix random vectors over mutual TLS.

:func:`run_selftest` makes a throw-away federation (CA, certificates) in a temporary directory, starts
M processes of :mod:`p2pgan.wire.selftest_worker`, hands them the roster, and checks every peer's
result of every step against ``topology.product(k, T) @ X_k``. Processes are always killed on exit.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from p2pgan.errors import ConfigError, PeerProcessError
from p2pgan.security.certs import make_federation
from p2pgan.topology import make_topology
from p2pgan.wire.selftest_worker import selftest_row
from p2pgan.wire.workers import exchange_ports, worker_processes

#: how long the whole run may take beyond the mixing itself (process start-up, imports)
STARTUP_TIMEOUT_S = 60.0


def run_selftest(
    peers: int,
    topology: str = "ring",
    rounds: int = 1,
    *,
    size_mb: float = 1.0,
    steps: int = 3,
    seed: int = 0,
    wire_dtype: str = "float32",
    round_timeout_s: float = 10.0,
    shard_bytes: int = 2 * 1024 * 1024,
    crash: tuple[str, int] | None = None,
    insecure: bool = False,
    discovery: str = "roster",
    compression: str = "none",
    connections: int = 1,
) -> dict[str, Any]:
    """Run the federation; return a report (``max_abs_error``, ``round_ms``, per-peer summaries).

    ``crash=(peer_id, step)`` makes that peer SIGKILL itself at the start of ``step`` (failure tests);
    steps from then on are not checked against the matrix product. With ``compression`` (mixing.compression)
    each peer's summary also holds ``copy_digests``: per round, its own public copy's (version, digest) and
    those of its copies of its in-neighbours (:class:`p2pgan.wire.compressed.CompressedGossip`). Every summary
    holds ``result_sha256`` (of its results, all steps) and ``push_addresses`` (per in-neighbour, the client
    addresses of its open Push streams after step 0: one per connection, ``connections``).
    """
    if peers < 1 or rounds < 0 or steps < 1:
        raise ConfigError(f"selftest needs peers >= 1, rounds >= 0, steps >= 1 (got {peers}, {rounds}, {steps})")
    dim = max(1, int(size_mb * 1e6 / 4))
    ids = [f"peer{i}" for i in range(peers)]
    federation = f"selftest-{secrets.token_hex(4)}"  # unique: concurrent runs never see each other on mDNS
    with tempfile.TemporaryDirectory(prefix="p2pgan-selftest-") as tmp:
        root = Path(tmp)
        fed = make_federation(root / "federation", federation, ids)
        out = root / "out"
        out.mkdir()
        configs = {
            pid: {
                "federation": federation, "peer_id": pid, "discovery": discovery, "peers": peers, "members": ids,
                "tls": None if insecure else {k: str(v) for k, v in vars(fed[pid]).items()},
                "topology": topology, "seed": seed, "rounds": rounds, "round_timeout_s": round_timeout_s,
                "wire_dtype": wire_dtype, "shard_bytes": shard_bytes, "dim": dim, "steps": steps,
                "out": str(out), "connect_timeout_s": STARTUP_TIMEOUT_S,
                "crash_at_step": crash[1] if crash and crash[0] == pid else None, "compression": compression,
                "connections": connections,
            }
            for pid in ids
        }
        with worker_processes("p2pgan.wire.selftest_worker", configs, root, os.environ) as procs:
            exchange_ports(procs, "selftest peer")
            budget = STARTUP_TIMEOUT_S + steps * rounds * (round_timeout_s + 5.0)
            codes = {pid: proc.wait(timeout=budget) for pid, proc in procs.items()}
        crashed = crash[0] if crash else None
        bad = {p: c for p, c in codes.items() if c != 0 and p != crashed}
        if bad:
            raise PeerProcessError(f"selftest peers failed: {bad} (see their log output above)")
        return _report(out, ids, topology, peers, rounds, steps, seed, dim, crash)


def _report(
    out: Path, ids: list[str], topology: str, peers: int, rounds: int, steps: int, seed: int, dim: int,
    crash: tuple[str, int] | None,
) -> dict[str, Any]:
    topo = make_topology(topology, peers, seed=seed, members=ids, rounds=rounds)
    # With a crash at step c, only steps < c - 1 are surely complete everywhere: the crashing peer's own
    # messages of step c - 1 are sent asynchronously and may still be queued when it is killed, so a
    # survivor may rightly drop it in that step too. (It could not have finished step c - 1 without the
    # survivors' messages of that step, which they only send after receiving its step c - 2 message.)
    checked_steps = range(max(0, crash[1] - 1) if crash else steps)
    max_err = 0.0
    for k in checked_steps:
        x = torch.stack([selftest_row(seed, k, r, dim) for r in range(peers)]).to(torch.float64)
        expected = topo.product(k, rounds) @ x
        for r, pid in enumerate(ids):
            got = torch.frombuffer(bytearray((out / f"{pid}.step{k}.f32").read_bytes()), dtype=torch.float32)
            max_err = max(max_err, float((got.to(torch.float64) - expected[r]).abs().max()))
    summaries = [json.loads((out / f"{pid}.json").read_text()) for pid in ids if (out / f"{pid}.json").exists()]
    # step 0 opens the connections: leave it out of the timing when there is more than one step
    rounds_s = [t for s in summaries for t in s["round_seconds"][(rounds if steps > 1 else 0) :]]
    return {
        "peers": peers, "topology": topology, "rounds": rounds, "steps": steps, "dim": dim,
        "size_mb": dim * 4 / 1e6, "checked_steps": len(checked_steps),
        "max_abs_error": max_err if len(checked_steps) else None,
        "round_ms": 1e3 * statistics.median(rounds_s) if rounds_s else None,
        "dropped": sum(s["dropped"] for s in summaries),
        "per_peer": summaries,
    }
