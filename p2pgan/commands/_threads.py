"""The ``--threads`` flag shared by the compute commands.

Defaults to one torch CPU thread: the simulator's and the topology tools' operations are small, and
more threads than free cores (a shared machine, several peers on one host) make them many times slower.
"""

from __future__ import annotations

import argparse

DEFAULT_THREADS = 1


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help=f"torch CPU threads (default: {DEFAULT_THREADS})"
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Validate ``--threads`` and apply it to torch (imported here, lazily)."""
    import torch

    from p2pgan.errors import config_error

    if args.threads < 1:
        raise config_error("--threads", "", f"must be an integer >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
