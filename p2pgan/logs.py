"""Log set-up for the command line: level and format from flags or the environment.

``--log-level`` (or ``P2PGAN_LOG_LEVEL``) picks the level by name; ``-v`` / ``-vv`` lower it from the
default WARNING to INFO / DEBUG. ``--log-format json`` (or ``P2PGAN_LOG_FORMAT=json``) writes one JSON
object per line (``time`` in ISO 8601 UTC, ``level``, ``logger``, ``message``, plus ``exception`` when
there is one), which journald, Loki or any log shipper can index without a parsing rule. A flag wins
over the environment. The daemons the harness starts inherit the environment, hence the same settings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

from p2pgan.errors import config_error

LEVEL_ENV = "P2PGAN_LOG_LEVEL"
FORMAT_ENV = "P2PGAN_LOG_FORMAT"
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
DEFAULT_LEVEL = logging.WARNING
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def resolve(level: str | None, fmt: str | None, verbose: int,
            env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """``(logging level, format name)`` from the flags, else the environment, else the defaults.

    Raises :class:`~p2pgan.errors.ConfigError` naming the flag or variable for a name not allowed.
    """
    env = os.environ if env is None else env
    source, name = ("--log-level", level) if level is not None else (LEVEL_ENV, env.get(LEVEL_ENV) or None)
    if name is None:
        number = DEFAULT_LEVEL - 10 * min(verbose, 2)
    elif name.lower() in LEVELS:
        number = logging.getLevelName(name.upper())
    else:
        raise config_error(source, "", f"{name!r} is not a log level; allowed: {', '.join(LEVELS)}")
    fsource, fname = ("--log-format", fmt) if fmt is not None else (FORMAT_ENV, env.get(FORMAT_ENV) or "text")
    if fname.lower() not in FORMATS:
        raise config_error(fsource, "", f"{fname!r} is not a log format; allowed: {', '.join(FORMATS)}")
    return number, fname.lower()


def configure(level: int, fmt: str, stream: IO[str] | None = None) -> None:
    """Send log records of ``level`` and above to ``stream`` (stderr) in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def options_parent(*, top_level: bool = False) -> argparse.ArgumentParser:
    """A parent parser with ``-v``, ``--log-level`` and ``--log-format``, for the top-level parser and every
    sub-command (also nested ones), so the options work before or after the sub-command.

    Below the top level an absent option is left out of the namespace (``SUPPRESS``), so it does not
    overwrite what was given before the sub-command.
    """
    common = argparse.ArgumentParser(add_help=False)
    default = None if top_level else argparse.SUPPRESS
    group = common.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count", default=0 if top_level else argparse.SUPPRESS,
                       help="more log output: -v info, -vv debug")
    group.add_argument("--log-level", default=default, metavar="LEVEL",
                       help=f"{', '.join(LEVELS)} (default warning); or set {LEVEL_ENV}")
    group.add_argument("--log-format", default=default, metavar="FORMAT",
                       help=f"text (default) or json (one object per line); or set {FORMAT_ENV}")
    return common
