"""Fault injection for the local harness: real signals to real peer processes at chosen steps.

``p2pgan harness --fault SPEC`` (repeatable); PEER is an index into the sorted member list (the
harness's ``peer0 .. peer{M-1}``), STEP a step of that peer (``join``: of peer 0):

=========================  ===================================================================
``kill:PEER@STEP``         SIGKILL when the peer reaches STEP (a crash: no goodbye, no checkpoint)
``term:PEER@STEP``         SIGTERM (a clean leave: the neighbours are told, a checkpoint is written)
``stop:PEER@STEP:SECONDS`` SIGSTOP, then SIGCONT after SECONDS (a partition, a long GC pause, a lid)
``restart:PEER@+SECONDS``  start the peer again with ``--resume`` SECONDS after its process ended
``join:PEER@STEP``         start the peer only when peer 0 reaches STEP (a late joiner)
=========================  ===================================================================

The faults of one peer fire in the order given (a ``restart`` waits for the ``kill`` before it);
faults of different peers are independent. :class:`FaultRunner` drives a
:class:`~p2pgan.daemon.processes.PeerGroup` from the peers' metrics files and records what it did
(``events``) for the report.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from collections.abc import Sequence
from typing import Any

from p2pgan.daemon.processes import MetricsTail, PeerGroup, PeerProcess, PeerSpec, describe_failure
from p2pgan.errors import ConfigError, PeerProcessError

FAULT_KINDS = ("kill", "term", "stop", "restart", "join")
FAULT_FORMS = "kill:PEER@STEP, term:PEER@STEP, stop:PEER@STEP:SECONDS, restart:PEER@+SECONDS, join:PEER@STEP"
_SPEC = re.compile(r"^(?P<kind>[a-z]+):(?P<peer>\d+)@(?P<plus>\+?)(?P<at>\d+(?:\.\d+)?)(?::(?P<secs>\d+(?:\.\d+)?))?$")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One parsed ``--fault`` (see the module docstring)."""

    kind: str
    peer: int
    step: int = 0  # kill / term / stop / join
    seconds: float = 0.0  # stop: pause length; restart: delay after the process ended
    spec: str = ""

    @property
    def signal(self) -> int | None:
        return {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}.get(self.kind)


def parse_fault(spec: str, peers: int) -> Fault:
    """Parse one ``--fault`` value for a federation of ``peers``; errors name the value and the forms."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"--fault {spec!r}: {problem}; allowed forms: {FAULT_FORMS}")

    m = _SPEC.match(spec.strip())
    if m is None:
        raise bad("not understood")
    kind, peer, plus, at, secs = m["kind"], int(m["peer"]), m["plus"], m["at"], m["secs"]
    if kind not in FAULT_KINDS:
        raise bad(f"unknown fault {kind!r}")
    if not 0 <= peer < peers:
        raise bad(f"peer {peer} is not an index of the {peers} peers (0..{peers - 1})")
    if kind == "restart":
        if not plus or secs is not None:
            raise bad("restart takes a delay after the peer ended: restart:PEER@+SECONDS")
        return Fault(kind, peer, seconds=float(at), spec=spec)
    if plus or "." in at:
        raise bad(f"{kind} takes a step (a whole number): {kind}:PEER@STEP")
    if (kind == "stop") != (secs is not None):
        raise bad("stop takes a pause length: stop:PEER@STEP:SECONDS" if kind == "stop"
                  else f"{kind} takes no duration")
    if kind == "join" and peer == 0:
        raise bad("peer 0 paces the join faults; join another peer")
    return Fault(kind, peer, step=int(at), seconds=float(secs or 0.0), spec=spec)


def parse_faults(specs: Sequence[str], peers: int, steps: int | None = None) -> tuple[Fault, ...]:
    """Parse and cross-check ``--fault`` specs; with ``steps`` (the run's length) a fault at a step the
    run never reaches is refused (the harness would otherwise wait for it until its timeout)."""
    faults = tuple(parse_fault(s, peers) for s in specs)
    if steps is not None:
        for f in faults:
            if f.kind != "restart" and f.step >= steps:
                raise ConfigError(f"--fault {f.spec!r}: step {f.step} is never reached; the run has --steps {steps}, "
                                  f"so a fault's step must be below {steps}")
    joins: dict[int, int] = {}
    for i, f in enumerate(faults):
        if f.kind == "join":
            if f.peer in joins:
                raise ConfigError(f"--fault {f.spec!r}: peer {f.peer} can join only once")
            joins[f.peer] = i
    for i, f in enumerate(faults):
        if f.kind != "join" and i < joins.get(f.peer, -1):
            raise ConfigError(f"--fault {f.spec!r}: peer {f.peer} joins later; put its faults after its join")
    return faults


class FaultRunner:
    """Starts the peers, fires the faults as the peers' steps reach them, and knows when the run is over.

    Call :meth:`tick` regularly (it polls the metrics files); :meth:`failure` names a peer that died
    without being told to; :meth:`finished` is True once no fault is pending and no peer runs.
    """

    def __init__(self, group: PeerGroup, specs: Sequence[PeerSpec], tails: dict[str, MetricsTail],
                 faults: Sequence[Fault]) -> None:
        self.group = group
        self.specs = {s.name: s for s in specs}
        self.names = [s.name for s in specs]
        self.tails = tails
        self.pending = list(faults)
        self.events: list[dict[str, Any]] = []
        self.current: dict[str, PeerProcess] = {}
        self._killed: set[int] = set()  # pids we SIGKILLed (their exit is expected)
        self._ended_at: dict[int, float] = {}
        self._cont_at: dict[int, tuple[PeerProcess, float, dict[str, Any]]] = {}
        self.started = time.time()

    def start(self) -> None:
        """Start every peer that does not wait for a ``join`` fault."""
        late = {self.names[f.peer] for f in self.pending if f.kind == "join"}
        for name in self.names:
            if name not in late:
                self.current[name] = self.group.start(self.specs[name])

    def _step(self, name: str) -> int:
        last = self.tails[name].last("step")
        return int(last["step"]) if last else -1

    def _event(self, fault: Fault, **extra: Any) -> dict[str, Any]:
        event = {"fault": fault.spec, "kind": fault.kind, "peer": self.names[fault.peer], "time": time.time(), **extra}
        self.events.append(event)
        return event

    def tick(self) -> None:
        now = time.time()
        for tail in self.tails.values():
            tail.poll()
        for pid, (proc, at, event) in list(self._cont_at.items()):
            if now >= at:
                proc.signal(signal.SIGCONT)
                event["end_time"] = time.time()
                del self._cont_at[pid]
        for proc in self.current.values():
            if proc.returncode is not None:
                self._ended_at.setdefault(proc.pid, now)
        first: dict[int, Fault] = {}
        for f in self.pending:
            first.setdefault(f.peer, f)
        for f in first.values():
            if self._fire(f, now):
                self.pending.remove(f)

    def _fire(self, f: Fault, now: float) -> bool:
        name = self.names[f.peer]
        proc = self.current.get(name)
        if f.kind == "join":
            if self._step(self.names[0]) < f.step:
                return False
            self.current[name] = self.group.start(self.specs[name])
            self._event(f, step=self._step(self.names[0]))
            return True
        if f.kind == "restart":
            if proc is None or proc.returncode is None or now < self._ended_at[proc.pid] + f.seconds:
                return False
            self.current[name] = self.group.start(dataclasses.replace(self.specs[name], resume=True))
            self._event(f, after_s=f.seconds)
            return True
        if proc is None or proc.returncode is not None:
            return False  # it is not running (yet, or any more): the fault waits for a restart
        step = self._step(name)
        if step < f.step:
            return False
        sig = f.signal
        assert sig is not None
        if sig == signal.SIGKILL:
            self._killed.add(proc.pid)
        proc.signal(sig)
        event = self._event(f, step=step)
        if f.kind == "stop":
            self._cont_at[proc.pid] = (proc, now + f.seconds, event)
        return True

    def failure(self) -> PeerProcess | None:
        """A peer process that ended badly without being killed on purpose."""
        return next((p for p in self.group if p.returncode not in (None, 0) and p.pid not in self._killed), None)

    def finished(self) -> bool:
        return not self.pending and not self._cont_at and all(p.returncode is not None for p in self.group)

    def resume_all(self) -> None:
        """SIGCONT every paused peer (before stopping the group, so that SIGTERM can reach them)."""
        for proc, _, _ in self._cont_at.values():
            proc.signal(signal.SIGCONT)
        self._cont_at.clear()

    def wait(self, timeout_s: float, *, tick: Any = None, tick_interval_s: float = 0.5) -> None:
        """Run until :meth:`finished`; raise :class:`PeerProcessError` on a failure or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self.tick()
                bad = self.failure()
                if bad is not None:
                    raise PeerProcessError(describe_failure(bad))
                if self.finished():
                    break
                if time.monotonic() > deadline:
                    running = ", ".join(p.spec.name for p in self.group.running())
                    raise PeerProcessError(f"run not finished after {timeout_s:.0f} s (running: {running or 'none'}; "
                                           f"pending faults: {[f.spec for f in self.pending] or 'none'})")
                self.group.wait_change(tick_interval_s)
                if tick is not None:
                    tick()
        finally:
            self.resume_all()
        if tick is not None:
            tick()
