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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pgan.errors import PeerUnavailableError
from p2pgan.spawn import SPAWN_OPTIONS

if TYPE_CHECKING:  # the mixer pulls in torch and gRPC; the launchers here must stay light
    from p2pgan.wire.mixer import GrpcMixer


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
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(env), **SPAWN_OPTIONS,
            )
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def exchange_ports(
    procs: Mapping[str, subprocess.Popen[str]], what: str, dial: Callable[[int | None], int | None] = lambda p: p,
    *, route: Callable[[dict[str, int | None]], dict[str, list[list[Any]]]] | None = None,
) -> None:
    """Read every worker's port line and send all of them the roster; ``dial`` maps a port to the one
    the others should connect to (a latency relay, say). ``route`` instead makes each worker its own
    roster from all the ports (per-pair emulated links). ``what`` names the workers in errors."""
    ports: dict[str, int | None] = {}
    for pid, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise PeerUnavailableError(f"{what} {pid} exited during start-up (rc {proc.wait()})")
        ports[pid] = json.loads(line)["port"]
    roster = [[pid, "127.0.0.1", dial(port)] for pid, port in ports.items()]
    rosters = route(ports) if route is not None else {pid: roster for pid in procs}
    for pid, proc in procs.items():
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(rosters[pid]) + "\n")
        proc.stdin.close()


def run_ranks(cmd: Sequence[str], world: int, env: Mapping[str, str], what: str, timeout: float = 1800.0) -> None:
    """Run ``cmd --rank R`` for R in 0..world-1 (the benchmarks' torch.distributed workers) and wait for all.

    Kills and reaps every one that is still running on the way out; raises :class:`PeerUnavailableError`
    naming ``what`` if any exits non-zero.
    """
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=dict(env), **SPAWN_OPTIONS) for r in range(world)]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(codes):
        raise PeerUnavailableError(f"{what} workers failed with exit codes {codes}")


def join_ranks(mixer: GrpcMixer, world: int, timeout: float) -> None:
    """Benchmark ranks: exchange the mixers' ports over torch.distributed (coordination only, never the
    p2pgan wire), make ``peer0..peer{world-1}`` on loopback the membership and wait until all answer."""
    import torch.distributed as dist

    from p2pgan.wire.config import PeerEntry

    ports: list[int | None] = [None] * world
    dist.all_gather_object(ports, mixer.port)
    mixer.join(tuple(PeerEntry(f"peer{i}", "127.0.0.1", p) for i, p in enumerate(ports)))  # type: ignore[arg-type]
    mixer.wait_ready(timeout)
