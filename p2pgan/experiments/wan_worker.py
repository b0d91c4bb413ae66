"""One peer process of ``scripts/bench_wan.py``: gossip rounds of a synthetic vector over emulated links, timed.

Run as ``python -m p2pgan.experiments.wan_worker CONFIG.json`` (:func:`p2pgan.wire.workers.worker_processes`).
Protocol with the parent: print ``{"port": N}``, read one line from stdin (this peer's own roster, a JSON
list of ``[id, host, port]`` whose ports are the relays of its links), run ``warmup + steps`` one-round
steps and print one JSON line with the times and bytes. Between steps the vector moves a little (about
``drift`` of its scale per step, as an optimizer step would), so compressed differences are realistic.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
    from p2pgan.wire.mixer import GrpcMixer

    torch.set_num_threads(1)
    cfg = json.loads(Path(argv[0]).read_text())
    tls = TLSFiles(**{k: Path(v) for k, v in cfg["tls"].items()})
    net = NetworkConfig(
        federation=cfg["federation"], peer_id=cfg["peer_id"], tls=tls, topology="ring", rounds=1,
        round_timeout_s=cfg["round_timeout_s"], connect_timeout_s=cfg["connect_timeout_s"],
        compression=cfg["compression"], key_interval=cfg["key_interval"], streaming=cfg.get("streaming", True),
    )
    g = torch.Generator().manual_seed(cfg["seed"] + cfg["rank"])
    x = torch.randn(1, cfg["dim"], generator=g)
    # the drift: one noise vector made up front, read at a shifted offset each step (a fresh direction
    # every step for one pass over memory; drawing 25 M normals each step would cost ~0.2 s of a core that
    # the ring's other peers are waiting on)
    shift = 4099
    noise = torch.randn(cfg["dim"] + 64 * shift, generator=g)
    with GrpcMixer(net, dim=cfg["dim"]) as mixer:
        print(json.dumps({"port": mixer.port}), flush=True)
        roster = json.loads(sys.stdin.readline())
        mixer.join(tuple(PeerEntry(i, h, p) for i, h, p in roster))
        gc.freeze()  # the imports and the vector outlive the run: keep the collector off them (daemon/peer.py)
        mixer.wait_ready(cfg["connect_timeout_s"])
        step_s, sent = [], []
        for k in range(cfg["warmup"] + cfg["steps"]):
            before = mixer.stats.bytes_sent
            t0 = time.perf_counter()
            x = mixer.mix(x, k)
            if k >= cfg["warmup"]:
                step_s.append(time.perf_counter() - t0)
                sent.append(mixer.stats.bytes_sent - before)
            at = (k % 64) * shift
            x.add_(noise[at : at + cfg["dim"]].view(x.shape), alpha=cfg["drift"])
        c = mixer.compressed
        print(json.dumps({
            "id": net.peer_id, "step_s": step_s, "bytes_sent": sent, "dropped": mixer.stats.dropped,
            "keys": c.keys_sent if c else None, "deltas": c.deltas_sent if c else None,
            "arrived": c.copies.arrived if c else None,  # deltas applied to their copies while they arrived
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
