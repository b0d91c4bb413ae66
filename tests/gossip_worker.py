"""A gossip peer process driven step by step by its test (``python tests/gossip_worker.py CONFIG.json``).

Real parts: a :class:`~p2pgan.wire.mixer.GrpcMixer` with mutual TLS on loopback. Protocol with the test:
print ``{"port": N}``, read the roster (JSON list of [id, host, port]) from stdin, answer Hello until the
others are up, then for every line ``K`` on stdin mix the deterministic vector of step K and print one
JSON line: the step, the mixer's counters and, with compressed gossip, the round's copy digests (own
public copy and the copies of the in-neighbours: (version, digest) each). An empty line or EOF ends it.
The test kills it with SIGKILL whenever it likes (no goodbye) and starts a new one on the same port.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
    from p2pgan.wire.mixer import GrpcMixer

    cfg = json.loads(Path(argv[0]).read_text())
    net = NetworkConfig(
        federation=cfg["federation"], peer_id=cfg["peer_id"],
        tls=TLSFiles(**{k: Path(v) for k, v in cfg["tls"].items()}),
        listen_port=cfg.get("listen_port", 0), round_timeout_s=cfg["round_timeout_s"], shard_bytes=cfg["shard_bytes"],
        compression=cfg["compression"], key_interval=cfg["key_interval"], connections=cfg["connections"],
        connect_timeout_s=60.0,
    )
    with GrpcMixer(net, dim=cfg["dim"]) as mixer:
        if mixer.compressed is not None:
            mixer.compressed.record_digests = True
        print(json.dumps({"port": mixer.port}), flush=True)
        mixer.join(tuple(PeerEntry(i, h, p) for i, h, p in json.loads(sys.stdin.readline())))
        mixer.wait_ready(60.0)
        for line in sys.stdin:
            if not line.strip():
                break
            k = int(line)
            g = torch.Generator().manual_seed(k * 1_009 + mixer.rank)
            mixer.mix(torch.randn(1, cfg["dim"], generator=g), k)
            reply: dict[str, object] = {"step": k, "dropped": mixer.stats.dropped}
            if mixer.compressed is not None:
                _, _, own, copies = mixer.compressed.digests[-1]
                reply.update(own=own, copies=copies, keys_sent=mixer.compressed.keys_sent)
            print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
