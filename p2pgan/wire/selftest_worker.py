"""One peer process of ``p2pgan selftest`` (run as ``python -m p2pgan.wire.selftest_worker CONFIG.json``).

Protocol with the parent (:mod:`p2pgan.wire.selftest`): start the server on a free port, print
``{"port": N}`` on stdout, read the roster (a JSON list of [id, host, port]) from stdin, mix the
deterministic random vectors of every step, write each result as raw little-endian float32 bytes to
``<out>/<id>.step<k>.f32`` and a summary to ``<out>/<id>.json``. With ``"discovery": "zeroconf"`` the
peer ignores the roster and finds the others by mDNS on 127.0.0.1.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch


def selftest_row(seed: int, step: int, rank: int, dim: int) -> torch.Tensor:
    """The vector peer ``rank`` mixes at ``step`` (the parent regenerates it to check the result)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + rank)
    return torch.randn(dim, generator=g, dtype=torch.float32)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    from p2pgan.discovery import member_finder
    from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
    from p2pgan.wire.mixer import GrpcMixer

    cfg = json.loads(Path(argv[0]).read_text())
    tls = TLSFiles(**{k: Path(v) for k, v in cfg["tls"].items()}) if cfg["tls"] else None
    net = NetworkConfig(
        federation=cfg["federation"], peer_id=cfg["peer_id"], tls=tls, insecure=tls is None,
        topology=cfg["topology"], seed=cfg["seed"], rounds=cfg["rounds"], round_timeout_s=cfg["round_timeout_s"],
        wire_dtype=cfg["wire_dtype"], shard_bytes=cfg["shard_bytes"],
        discovery=cfg["discovery"], expected_peers=cfg["peers"], connect_timeout_s=cfg["connect_timeout_s"],
        allowed_members=tuple(cfg["members"]),
        compression=cfg.get("compression", "none"), connections=cfg.get("connections", 1),
    )
    out = Path(cfg["out"])
    with GrpcMixer(net, dim=cfg["dim"]) as mixer:
        if mixer.compressed is not None:
            mixer.compressed.record_digests = True
        print(json.dumps({"port": mixer.port}), flush=True)
        roster = json.loads(sys.stdin.readline())
        if net.discovery == "zeroconf":
            mixer.join(member_finder(net)(mixer))  # find the others by mDNS; the parent's roster is not used
        else:
            mixer.join(tuple(PeerEntry(i, h, p) for i, h, p in roster))
        gc.freeze()  # the imports and the vector outlive the run: keep the collector off them (daemon/peer.py)
        mixer.wait_ready(cfg["connect_timeout_s"])
        step_seconds = []
        results = hashlib.sha256()
        addresses: dict[str, list[str]] = {}
        for k in range(cfg["steps"]):
            if k == cfg.get("crash_at_step"):
                os.kill(os.getpid(), signal.SIGKILL)  # the killed-neighbour test: die without goodbye
            x = selftest_row(cfg["seed"], k, mixer.rank, cfg["dim"]).unsqueeze(0)
            t0 = time.perf_counter()
            y = mixer.mix(x, k)
            step_seconds.append(time.perf_counter() - t0)
            if k == 0:  # every in-neighbour's streams are open now: it cannot finish step 1 without our message
                addresses = {m: sorted(mixer.service.streams.addresses(m)) for m in mixer.members}
            result = y[0].to(torch.float32).numpy().astype("<f4").tobytes()
            results.update(result)
            (out / f"{net.peer_id}.step{k}.f32").write_bytes(result)
        summary = {
            "id": net.peer_id, "members": list(mixer.members), "rank": mixer.rank, "step_seconds": step_seconds,
            "round_seconds": mixer.round_seconds, "dropped": mixer.stats.dropped,
            "bytes_sent": mixer.stats.bytes_sent, "bytes_received": mixer.stats.bytes_received,
            "result_sha256": results.hexdigest(), "push_addresses": addresses,
        }
        if mixer.compressed is not None:
            summary["copy_digests"] = mixer.compressed.digests
        (out / f"{net.peer_id}.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
