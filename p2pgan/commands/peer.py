"""Run one peer daemon: train the federation's GAN on this site's private data with DPOSG.

All settings come from one YAML file (examples in peers/). SIGTERM or Ctrl-C writes a checkpoint and
exits 0; ``--resume`` continues from the newest checkpoint in the configured directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the peer's YAML config")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")


def run(args: argparse.Namespace) -> int:
    import logging

    from p2pgan.daemon.config import load_config
    from p2pgan.daemon.memory import limit_malloc_arenas
    from p2pgan.daemon.peer import run_peer

    limit_malloc_arenas()  # flat memory under many gRPC threads (p2pgan.daemon.memory)

    # status lines and resume / signal notes are the daemon's normal output, shown without -v
    daemon_log = logging.getLogger("p2pgan.daemon")
    if daemon_log.getEffectiveLevel() > logging.INFO:
        daemon_log.setLevel(logging.INFO)

    config = load_config(args.config)
    return run_peer(config, resume=args.resume)
