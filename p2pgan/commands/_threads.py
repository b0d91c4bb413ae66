"""The ``--threads`` flag shared by the compute commands.

Defaults to one torch CPU thread: the simulator's and the topology tools' operations are small, and
more threads than free cores (a shared machine, several peers on one host) make them many times slower.
"""

from __future__ import annotations

import argparse

DEFAULT_THREADS = 1


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS,
        help=f"CPU threads for the computation (default: {DEFAULT_THREADS})",
    )


def apply_threads(args: argparse.Namespace, *, torch: bool = True) -> None:
    """Validate ``--threads`` and apply it to torch (imported here, lazily; ``torch=False``: to numpy's BLAS).

    ``torch=False`` is for the commands that compute with numpy only (``p2pgan topology``), which must
    not pay torch's import for a thread setting.
    """
    from p2pgan.errors import config_error

    if args.threads < 1:
        raise config_error("--threads", "", f"must be an integer >= 1, got {args.threads}")
    if torch:
        import torch as _torch

        _torch.set_num_threads(args.threads)
    else:
        try:  # installed with scikit-learn (a dependency); without it numpy keeps its own default
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(args.threads)
