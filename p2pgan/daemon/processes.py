"""Peer daemons as real OS processes: start them, watch them, stop them with nothing left behind.

:class:`PeerGroup` is what the harness and the tests use. Each daemon runs as
``sys.executable -m p2pgan peer --config FILE`` in its own session (a Ctrl-C in the terminal reaches the
harness only, which then stops the peers in order), with its output in a log file, and on Linux with a
parent-death signal so that even a harness killed with -9 takes its peers along. Stopping sends SIGTERM
(the daemon checkpoints and exits 0), waits up to :data:`STOP_GRACE_S`, then SIGKILLs stragglers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from p2pgan.errors import PeerProcessError
from p2pgan.spawn import SPAWN_OPTIONS

#: seconds a peer gets to checkpoint and exit after SIGTERM before it is killed
STOP_GRACE_S = 60.0
#: seconds to wait for the kernel to reap a SIGKILLed process
KILL_WAIT_S = 10.0
#: lines of a dead peer's log shown in the error
LOG_TAIL_LINES = 25

_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sig = int(signal.SIGTERM)
    return lambda: prctl(_PR_SET_PDEATHSIG, sig)  # resolved before fork: the child runs no imports


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """One daemon to launch: its name (peer id), config file, log file and metrics file."""

    name: str
    config: Path
    log: Path
    metrics: Path
    resume: bool = False


class PeerProcess:
    """One running daemon. ``returncode`` is None while it runs."""

    def __init__(self, spec: PeerSpec, env: Mapping[str, str]) -> None:
        self.spec = spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "p2pgan", "peer", "--config", str(spec.config)]
        if spec.resume:
            argv.append("--resume")
        self._log_file = open(spec.log, "ab")  # noqa: SIM115 - closed in close()
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
                **SPAWN_OPTIONS,
            )
        except BaseException:
            self._log_file.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        """Send ``sig`` unless the process is already gone."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.spec.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self._log_file.close()


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # the package must be importable by the children exactly as it is by us (source checkout or install)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


class PeerGroup:
    """Start, watch and stop a set of peer daemons; a context manager that never leaves one running.

    :meth:`wait` blocks until every peer has exited or one failed; a thread per process reaps it and
    wakes the waiter at once, so no polling is needed to notice an exit.
    """

    def __init__(self, specs: Sequence[PeerSpec], env: Mapping[str, str] | None = None) -> None:
        self.specs = list(specs)
        self.env = _child_env(env)
        self.procs: list[PeerProcess] = []
        self._changed = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> PeerGroup:
        try:
            for spec in self.specs:
                self._spawn(spec)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self, spec: PeerSpec) -> PeerProcess:
        """Start one more daemon (a late joiner, a restart with ``--resume``); it is stopped with the group."""
        return self._spawn(spec)

    def wait_change(self, timeout_s: float) -> None:
        """Return when a process of the group exits, or after ``timeout_s``."""
        self._changed.wait(timeout_s)
        self._changed.clear()

    def _spawn(self, spec: PeerSpec) -> PeerProcess:
        proc = PeerProcess(spec, self.env)
        self.procs.append(proc)
        thread = threading.Thread(target=self._reap, args=(proc,), name=f"reap-{spec.name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def _reap(self, proc: PeerProcess) -> None:
        proc.popen.wait()
        self._changed.set()

    def __iter__(self) -> Iterator[PeerProcess]:
        return iter(self.procs)

    def by_name(self, name: str) -> PeerProcess:
        for proc in self.procs:
            if proc.spec.name == name:
                return proc
        raise KeyError(name)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def failed(self) -> PeerProcess | None:
        """The first peer that exited with a non-zero status, if any."""
        return next((p for p in self.procs if p.returncode not in (None, 0)), None)

    def running(self) -> list[PeerProcess]:
        return [p for p in self.procs if p.returncode is None]

    def wait(
        self,
        timeout_s: float,
        *,
        tick: Callable[[], None] | None = None,
        tick_interval_s: float = 0.5,
        tolerate: Sequence[str] = (),
    ) -> None:
        """Wait until every peer exited 0; raise :class:`PeerProcessError` naming a failed peer (with its
        log tail) or the peers still running after ``timeout_s``. ``tick`` (progress display) runs
        every ``tick_interval_s`` while waiting; peers named in ``tolerate`` may die without an error."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._changed.clear()
            bad = next((p for p in self.procs if p.returncode not in (None, 0) and p.spec.name not in tolerate), None)
            if bad is not None:
                raise PeerProcessError(describe_failure(bad))
            alive = self.running()
            if not alive:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(p.spec.name for p in alive)
                raise PeerProcessError(f"peers still running after {timeout_s:.0f} s: {names}")
            self._changed.wait(min(left, tick_interval_s))
            if tick is not None:
                tick()
        if tick is not None:
            tick()

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every running peer, wait up to ``grace_s`` for checkpoints, SIGKILL the rest, reap all."""
        grace = STOP_GRACE_S if grace_s is None else grace_s
        for proc in self.running():
            proc.signal(signal.SIGCONT)  # a paused (SIGSTOPped) peer could not act on SIGTERM
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process the kernel cannot kill
                pass
            proc.close()
        for thread in self._threads:
            thread.join(timeout=KILL_WAIT_S)


def describe_failure(proc: PeerProcess) -> str:
    """A message naming the dead peer, how it died and the tail of its log."""
    code = proc.returncode
    how = f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with status {code}"
    return f"peer {proc.spec.name} (pid {proc.pid}) {how}; last lines of {proc.spec.log}:\n{proc.log_tail()}"


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class MetricsTail:
    """Reads a peer's JSON-lines metrics file incrementally (only complete lines; the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        """New complete records since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.strip():
                try:
                    new.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        self.records.extend(new)
        return new

    def last(self, event: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.records) if r.get("type") == event), None)


def wait_for_record(
    tail: MetricsTail,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    *,
    group: PeerGroup | None = None,
    interval_s: float = 0.1,
) -> dict[str, Any]:
    """Wait until a record satisfying ``predicate`` appears in ``tail`` (or raise, naming the peer).

    Fails early when a peer of ``group`` dies, so a test never waits out the full timeout on a crash.
    """
    deadline = time.monotonic() + timeout_s
    ticker = threading.Event()  # never set: its wait() paces the polling of a file another process writes
    for record in tail.records:
        if predicate(record):
            return record
    while True:
        for record in tail.poll():
            if predicate(record):
                return record
        if group is not None and (bad := group.failed()) is not None:
            raise PeerProcessError(describe_failure(bad))
        if time.monotonic() > deadline:
            raise PeerProcessError(f"no matching record in {tail.path} after {timeout_s:.0f} s")
        ticker.wait(interval_s)
