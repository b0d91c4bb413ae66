"""The p2pgan command line: one sub-command per module, registered in COMMANDS.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the sub-command being run is imported (none for ``p2pgan --help``), so help and the commands
that need no torch (``certs``, ``status``) start in a fraction of a second. A :class:`P2PGANError` (a
user mistake) is printed as one line naming the flag, file or field, with exit status 2 (75 when the
other peers could not be reached: a retry may succeed).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from p2pgan import __version__, logs
from p2pgan.errors import DiscoveryError, P2PGANError, PeerUnavailableError

#: exit status of a user mistake (bad flag, config, file): the same as argparse's usage errors. The
#: systemd unit does not restart on it (RestartPreventExitStatus=2): the file must be fixed first.
EXIT_USAGE = 2
#: exit status when the other peers could not be reached or found (sysexits' EX_TEMPFAIL): worth a retry
EXIT_TEMPFAIL = 75

#: sub-command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "peer": ("p2pgan.commands.peer", "run one peer daemon from its YAML config (training on private data)"),
    "status": ("p2pgan.commands.status", "ask a running peer daemon how it is doing (health, step, neighbours)"),
    "harness": ("p2pgan.commands.harness", "run M real peer daemons on this machine over mutual TLS, write a report"),
    "certs": ("p2pgan.commands.certs", "make a federation CA and issue peer certificates (mutual TLS)"),
    "selftest": ("p2pgan.commands.selftest", "M peer processes on loopback mix over mutual TLS; checked against W^t X"),
    "export": ("p2pgan.commands.export", "write a checkpoint's trained generator as a file plain torch can load"),
    "simulate": ("p2pgan.commands.simulate", "run DPOSG and its baselines on M virtual peers (toy games)"),
    "topology": ("p2pgan.commands.topology", "print a topology's spectral gap rho, degree and suggested rounds"),
    "audit": ("p2pgan.commands.audit", "audit a site's privacy from a curious neighbour's seat (harness runs)"),
}

EPILOG = """examples:
  p2pgan harness --peers 4 --steps 300 --out runs/demo     # a federation of 4 daemons on this machine
  p2pgan certs init --out fed/ca --federation demo          # a federation CA, then 'certs issue' per peer
  p2pgan peer --config peers/alice.yaml                      # one site's daemon
  p2pgan status --config peers/alice.yaml                    # ask that daemon how it is doing

logging: --log-level LEVEL / P2PGAN_LOG_LEVEL, --log-format json / P2PGAN_LOG_FORMAT, -v / -vv;
these options go before or after the sub-command. 'p2pgan COMMAND --help' describes each command."""

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(doc: str) -> str:
    """A module docstring as help text: reST roles and double backquotes become plain words."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(1).startswith("p2pgan.") else m.group(1), doc)
    return text.replace("``", "").strip()


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; sub-command modules are imported for ``command`` only (``"*"``: all of them)."""
    parser = argparse.ArgumentParser(
        prog="p2pgan", description="p2pgan: peer-to-peer training of GANs with DPOSG, over mutual-TLS gRPC.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[logs.options_parent(top_level=True)],
    )
    parser.add_argument("--version", action="version", version=f"p2pgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[logs.options_parent()],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command in ("*", name):
            module = importlib.import_module(module_name)
            p.description = plain(module.__doc__ or help_text)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def exit_status(exc: P2PGANError) -> int:
    """:data:`EXIT_TEMPFAIL` for errors a later retry may not meet (peers not up yet), else :data:`EXIT_USAGE`."""
    return EXIT_TEMPFAIL if isinstance(exc, (PeerUnavailableError, DiscoveryError)) else EXIT_USAGE


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (no option value is ever a command name), or None."""
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    try:
        level, fmt = logs.resolve(args.log_level, args.log_format, args.verbose)
    except P2PGANError as exc:
        print(f"p2pgan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level, fmt)
    try:
        return int(args._module.run(args) or 0)
    except P2PGANError as exc:
        print(f"p2pgan {args.command}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:  # a file or folder the user named that cannot be used: one line, no traceback
        if exc.filename is None:
            raise
        print(f"p2pgan {args.command}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"p2pgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
