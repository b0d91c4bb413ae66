"""Export the trained generator of a peer's checkpoint for use elsewhere.

Writes the generator's weights as .pt (a dict that plain torch.load(..., weights_only=True) opens) or
.safetensors, and OUT.json beside it with the architecture, its arguments and the step. The peer's
config says which model the run trained; the checkpoint defaults to the newest in its checkpoint.dir.

Examples:
  p2pgan export --config peers/alice.yaml --out generator.pt
  p2pgan export --config peers/alice.yaml --checkpoint state/alice/ckpt-0000300.pt --out g.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the peer's YAML config")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                        help="a checkpoint file (default: the newest in the config's checkpoint.dir)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="generator.pt or generator.safetensors")


def run(args: argparse.Namespace) -> int:
    from p2pgan.checkpoint import CheckpointManager
    from p2pgan.daemon.config import load_config
    from p2pgan.errors import ConfigError
    from p2pgan.trainer.export import export_generator

    cfg = load_config(args.config)
    checkpoint = args.checkpoint
    if checkpoint is None:
        steps = CheckpointManager(cfg.checkpoint.dir).steps()
        if not steps:
            raise ConfigError(f"{args.config}: checkpoint.dir {cfg.checkpoint.dir} holds no checkpoint yet")
        checkpoint = CheckpointManager(cfg.checkpoint.dir).path_for(steps[-1])
    out, side = export_generator(checkpoint, args.out, model=cfg.train.model, latent_dim=cfg.train.latent_dim,
                                 width=cfg.train.width)
    print(f"generator of {checkpoint} ({cfg.train.model}) -> {out} (description {side})")
    return 0
