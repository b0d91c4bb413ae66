"""The ``p2pgan`` command line: one sub-command per module, registered in :data:`COMMANDS`.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported lazily so that ``p2pgan certs`` does not pay for importing torch. A :class:`P2PGANError` is
printed as one clear line (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from p2pgan import __version__
from p2pgan.errors import P2PGANError

#: sub-command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("p2pgan.commands.simulate", "run DPOSG and its baselines on M virtual peers (toy games)"),
    "topology": ("p2pgan.commands.topology", "print a topology's spectral gap rho, degree and suggested rounds"),
    "peer": ("p2pgan.commands.peer", "run one peer daemon from its YAML config (training on private data)"),
    "harness": ("p2pgan.commands.harness", "run M real peer daemons on this machine over mutual TLS, write a report"),
    "certs": ("p2pgan.commands.certs", "make a federation CA and issue peer certificates (mutual TLS)"),
    "selftest": ("p2pgan.commands.selftest", "M peer processes on loopback mix over mutual TLS; checked against W^t X"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pgan", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"p2pgan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args._module.run(args) or 0)
    except P2PGANError as exc:
        print(f"p2pgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"p2pgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
