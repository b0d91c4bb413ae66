"""One peer process of the speed and overhead experiments: real GAN steps, real mixing, timed.

Run as ``python -m p2pgan.experiments.worker CONFIG.json`` by :mod:`p2pgan.experiments.peers`.
Protocol with the parent: print ``{"port": N}`` (the gRPC server's port, or null), read one line from
stdin (the roster as a JSON list of ``[id, host, port]``, the ports possibly those of latency relays),
train ``warmup + steps`` DPOSG steps, and print one JSON line with the timings.

Backends: ``none`` (no communication: the local-step baseline), ``gloo`` (:class:`TorchDistMixer`:
all-reduce for the complete graph, neighbour exchange otherwise) and ``grpc`` (the product's mutual-TLS
gossip). A Gloo process group is always set up for the barriers that bracket the timed steps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: images of the synthetic dataset used to time the 32x32 models (timing only: no scores are taken)
SYNTHETIC_IMAGES = 512


def build_game(cfg: dict[str, Any]) -> Any:
    """This peer's game: digits on its IID shard, or a 32x32 model on synthetic images."""
    from p2pgan.trainer.data import Dataset, load_digits, split_indices
    from p2pgan.trainer.game import build_game as _build

    if cfg["model"] in ("digits", "mlp2d"):
        data = load_digits()
        data = data.subset(split_indices(data.y, cfg["world"], seed=cfg["seed"])[cfg["rank"]])
    else:
        rng = np.random.default_rng(cfg["seed"] + cfg["rank"])
        x = rng.integers(0, 256, size=(SYNTHETIC_IMAGES, 3, 32, 32), dtype=np.uint8)
        data = Dataset(x, np.zeros(SYNTHETIC_IMAGES, dtype=np.int64), "synthetic32")
    return _build(cfg["model"], "wgan-gp", data, batch_size=cfg["batch"], init_seed=cfg["seed"],
                  seed=cfg["seed"] * 1000 + cfg["rank"])


def open_mixer(cfg: dict[str, Any], dim: int, digest: str) -> Any:
    """The mixer of ``cfg["backend"]`` (the gRPC one is returned before it has joined: see :func:`main`)."""
    from p2pgan.mixing.inprocess import IdentityMixer

    if cfg["backend"] == "none" or cfg["world"] == 1:
        return IdentityMixer(1)
    if cfg["backend"] == "gloo":
        from p2pgan.mixing.torchdist import TorchDistMixer
        from p2pgan.topology import make_topology

        topology = make_topology(cfg["topology"], cfg["world"], seed=cfg["seed"], rounds=cfg["rounds"])
        return TorchDistMixer(topology, cfg["rounds"], group=dist.new_group(backend="gloo"))
    from p2pgan.wire.config import NetworkConfig, TLSFiles
    from p2pgan.wire.mixer import GrpcMixer

    tls = TLSFiles(**{k: Path(v) for k, v in cfg["tls"].items()}) if cfg["tls"] else None
    net = NetworkConfig(
        federation=cfg["federation"], peer_id=cfg["peer_id"], tls=tls, insecure=tls is None,
        topology=cfg["topology"], seed=cfg["seed"], rounds=cfg["rounds"], round_timeout_s=cfg["round_timeout_s"],
    )
    return GrpcMixer(net, dim=dim, layout_digest=digest)


def main(argv: list[str]) -> int:
    from p2pgan.algorithm import DPOSG
    from p2pgan.wire.config import PeerEntry

    cfg = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(cfg["threads"])
    game = build_game(cfg)
    if cfg["world"] > 1:
        dist.init_process_group("gloo", init_method=cfg["init_method"], rank=cfg["rank"], world_size=cfg["world"])
    try:
        with open_mixer(cfg, game.dim, game.layout_digest()) as mixer:
            print(json.dumps({"port": getattr(mixer, "port", None)}), flush=True)
            roster = json.loads(sys.stdin.readline())
            if cfg["backend"] == "grpc" and cfg["world"] > 1:
                mixer.join(tuple(PeerEntry(i, h, p) for i, h, p in roster))
                mixer.wait_ready(cfg["connect_timeout_s"])
            algo = DPOSG(game.point(), mixer, "oadam", cfg["lr"], schedule=cfg["schedule"])
            for _ in range(cfg["warmup"]):
                algo.step(game)
            if cfg["world"] > 1:
                dist.barrier()
            sent0 = mixer.stats.bytes_sent
            step_s, mix_s, field_s = [], 0.0, 0.0
            t0 = time.perf_counter()
            for _ in range(cfg["steps"]):
                t1 = time.perf_counter()
                info = algo.step(game)
                step_s.append(time.perf_counter() - t1)
                mix_s += info.mix_seconds
                field_s += info.field_seconds
            seconds = time.perf_counter() - t0
            if cfg["world"] > 1:
                dist.barrier()
            result = {
                "rank": cfg["rank"], "seconds": seconds, "step_seconds": step_s, "mix_seconds": mix_s,
                "field_seconds": field_s, "bytes_sent": mixer.stats.bytes_sent - sent0, "dim": game.dim,
                "dropped": mixer.stats.dropped,
            }
            print(json.dumps(result), flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
