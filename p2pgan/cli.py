"""The p2pgan command line: one sub-command per module, registered in COMMANDS.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the sub-command being run is imported (none for ``p2pgan --help``), so help and the commands
that need no torch (``certs``, ``status``) start in a fraction of a second. A :class:`P2PGANError` is
printed as one line naming the flag, file or field. Exit statuses mean one thing each (the table is in
peers/README.md): 0 done, 1 the command ran and failed (or an unexpected error, with its traceback), 2 a
mistake to fix first, 75 a condition that may pass (peers not up yet, a full disk), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
from collections.abc import Sequence

from p2pgan import __version__, logs
from p2pgan.errors import P2PGANError, PeerProcessError, TemporaryError

#: exit status of a user mistake (bad flag, config, file): the same as argparse's usage errors. The
#: systemd unit does not restart on it (RestartPreventExitStatus=2): the file must be fixed first.
EXIT_USAGE = 2
#: exit status of a condition that may pass (sysexits' EX_TEMPFAIL): peers not reachable or found yet, a
#: full disk. The systemd unit restarts on it (Restart=on-failure, a bounded number of times).
EXIT_TEMPFAIL = 75
#: exit status of a command that ran and failed (a harness peer died, a self-test did not match, a
#: daemon not SERVING for ``status``), or of an unexpected error (printed with its traceback)
EXIT_FAILURE = 1
#: exit status after Ctrl-C (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130
#: OSError numbers of a disk that refuses a write for good until someone acts (exit 2, like a named file)
STORAGE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
#: OSError numbers of a condition that may pass by itself (else an OSError on a named file is a mistake)
TEMPORARY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT,
                              errno.EMFILE, errno.ENFILE, errno.ENOMEM})

#: sub-command -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "peer": ("p2pgan.commands.peer", "run one peer daemon from its YAML config (training on private data)"),
    "status": ("p2pgan.commands.status", "ask a running peer daemon how it is doing (health, step, neighbours)"),
    "harness": ("p2pgan.commands.harness", "run M real peer daemons on this machine over mutual TLS, write a report"),
    "certs": ("p2pgan.commands.certs", "make a federation CA and issue peer certificates (mutual TLS)"),
    "selftest": ("p2pgan.commands.selftest", "M peer processes on loopback mix over mutual TLS; checked against W^t X"),
    "export": ("p2pgan.commands.export", "write a checkpoint's trained generator as a file plain torch can load"),
    "report": ("p2pgan.commands.report", "write one site's report (curves, samples, membership) from its metrics"),
    "simulate": ("p2pgan.commands.simulate", "run DPOSG and its baselines on M virtual peers (toy games)"),
    "topology": ("p2pgan.commands.topology", "print a topology's spectral gap rho, degree and suggested rounds"),
    "audit": ("p2pgan.commands.audit", "audit a site's privacy from a curious neighbour's seat"),
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


def exit_status(exc: BaseException) -> int:
    """The exit status of an error that ends a command: :data:`EXIT_TEMPFAIL` for a condition a retry may
    not meet (:class:`TemporaryError`, an OSError such as ENOSPC), :data:`EXIT_FAILURE` for a failed run
    (:class:`PeerProcessError`), else :data:`EXIT_USAGE` (a mistake: the file or flag must be fixed first)."""
    if isinstance(exc, TemporaryError) or (isinstance(exc, OSError) and exc.errno in TEMPORARY_ERRNOS):
        return EXIT_TEMPFAIL
    if isinstance(exc, PeerProcessError):
        return EXIT_FAILURE
    return EXIT_USAGE


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
    except OSError as exc:  # a file or folder that cannot be used, a full disk: one line, no traceback
        if exc.filename is None and exc.errno not in TEMPORARY_ERRNOS | STORAGE_ERRNOS:
            raise  # not about a file or the disk: an unexpected error, shown with its traceback (exit 1)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"p2pgan {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print(f"p2pgan {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
