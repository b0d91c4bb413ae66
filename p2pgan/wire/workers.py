"""Worker processes on loopback that meet by port: the start-up protocol of selftest and the experiments.

Each worker runs ``python -m MODULE CONFIG.json``, starts its server on a free port, prints one JSON line
``{"port": P}`` (``null`` when it serves nothing) and reads the roster ``[[id, "127.0.0.1", port], ...]``
from its standard input. :func:`worker_processes` starts them and never leaves one running;
:func:`exchange_ports` does the rendezvous.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from p2pgan.errors import PeerUnavailableError


@contextlib.contextmanager
def worker_processes(
    module: str, configs: Mapping[str, Mapping[str, Any]], folder: Path, env: Mapping[str, str]
) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Start one worker per ``configs`` entry (config written to ``folder/<id>.json``); kill and reap all on exit."""
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for pid, cfg in configs.items():
            path = folder / f"{pid}.json"
            path.write_text(json.dumps(cfg))
            procs[pid] = subprocess.Popen(
                [sys.executable, "-m", module, str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(env),
            )
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def exchange_ports(
    procs: Mapping[str, subprocess.Popen[str]], what: str, dial: Callable[[int | None], int | None] = lambda p: p
) -> None:
    """Read every worker's port line and send all of them the roster; ``dial`` maps a port to the one
    the others should connect to (a latency relay, say). ``what`` names the workers in errors."""
    roster = []
    for pid, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise PeerUnavailableError(f"{what} {pid} exited during start-up (rc {proc.wait()})")
        roster.append([pid, "127.0.0.1", dial(json.loads(line)["port"])])
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(roster) + "\n")
        proc.stdin.close()
