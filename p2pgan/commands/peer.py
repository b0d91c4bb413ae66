"""Run one peer daemon: train the federation's GAN on this site's private data with DPOSG.

All settings come from one YAML file (examples in peers/). SIGTERM or Ctrl-C writes a checkpoint and
exits 0; --resume continues from the newest checkpoint in the configured directory. Progress goes to
stderr as a status line every metrics.status_interval_s seconds; the daemon answers grpc.health.v1
probes on its gRPC port (see p2pgan status).

Examples:
  p2pgan peer --config peers/alice.yaml
  p2pgan peer --config peers/alice.yaml --resume --log-format json
  p2pgan peer --config peers/alice.yaml --set train.steps=500 --set mixing.rounds=2
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the peer's YAML config")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="override one config field (repeatable), validated like the file: --set train.steps=500")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from p2pgan.daemon.config import load_config
    from p2pgan.daemon.memory import limit_malloc_arenas
    from p2pgan.daemon.peer import run_peer
    from p2pgan.logs import LEVEL_ENV

    limit_malloc_arenas()  # flat memory under many gRPC threads (p2pgan.daemon.memory)

    # status lines and resume / signal notes are the daemon's normal output, shown without -v (an explicit
    # --log-level or P2PGAN_LOG_LEVEL is obeyed as given)
    daemon_log = logging.getLogger("p2pgan.daemon")
    explicit = args.log_level is not None or os.environ.get(LEVEL_ENV)
    if not explicit and daemon_log.getEffectiveLevel() > logging.INFO:
        daemon_log.setLevel(logging.INFO)

    config = load_config(args.config, args.overrides)
    return run_peer(config, resume=args.resume)
