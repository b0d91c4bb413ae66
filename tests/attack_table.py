"""The issue 16 before/after table: each attack of tests/test_trust_attacks.py, measured, not asserted.

Runs against whichever p2pgan is first on ``sys.path`` (the daemons it starts use the same one), so the
same script measures main (before) and this branch (after)::

    cd /work/main && .venv/bin/python /path/to/tests/attack_table.py --out /tmp/before
    python tests/attack_table.py --out /tmp/after

Prints one JSON line per attack: per honest peer the steps it computed, its final step, whether its last
checkpoint is finite, its mean consensus distance over its last 10 steps, and its rollbacks; plus what the
attack measures (Hello latency and memory during a flood, the time a restart took to rejoin).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import torch

sys.path.insert(1, str(Path(__file__).resolve().parent))  # the test helpers next to this file

from attacker import ScriptedMember, timed_hello  # noqa: E402
from daemon_helpers import federation  # noqa: E402

from p2pgan.checkpoint import load_checkpoint  # noqa: E402
from p2pgan.daemon.processes import MetricsTail, PeerGroup, wait_for_record  # noqa: E402
from p2pgan.metrics import read_metrics  # noqa: E402
from p2pgan.wire.state import StateSnapshot  # noqa: E402
from p2pgan.wire.v1 import gossip_pb2 as pb  # noqa: E402

STEPS = 100
HONEST = ("peer0", "peer1", "peer2")
WAIT_S = 240.0


def full_state(liar: ScriptedMember, step: int, x: torch.Tensor,
               moment_sq: torch.Tensor | None = None) -> StateSnapshot:
    """A state in main's full layout (x, z, previous direction, OAdam moments): what a liar serves there.
    On this branch such a state is refused for its layout; :func:`mixed_state` is the layout it accepts."""
    zeros = torch.zeros_like(x)
    sq = torch.full_like(x, 1e-8) if moment_sq is None else moment_sq
    parts = (("d_prev", zeros), ("direction.exp_avg", zeros), ("direction.exp_avg_sq", sq), ("x", x), ("z", x))
    return StateSnapshot(step, liar.algorithm, parts, {"direction.step": max(step, 1), "step": step})


def mixed_state(liar: ScriptedMember, step: int, x: torch.Tensor) -> StateSnapshot:
    part = "x" if liar.algorithm.split("/")[1] == "exact" else "z"
    return StateSnapshot(step, liar.algorithm, ((part, x),), {"step": step})


def poisoned(liar: ScriptedMember, kind: str, layout: str) -> Any:
    def serve(caller: str) -> StateSnapshot:
        step, x = liar.fetch("peer0" if caller != "peer0" else "peer2")
        if kind == "huge":
            x[len(x) // 2] = 3e38
        elif kind == "sign":
            x = -x
        elif kind == "bomb":
            step = 10 ** 9
        if layout == "full" or kind == "moment":
            return full_state(liar, step, x, -torch.ones_like(x) if kind == "moment" else None)
        return mixed_state(liar, step, x)

    return serve


def outcome(fed: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in fed.specs():
        if spec.name not in HONEST:
            continue
        records = read_metrics(spec.metrics)
        steps = [r for r in records if r["type"] == "step"]
        ends = [r for r in records if r["type"] == "end"]
        ckpts = sorted(spec.metrics.parent.glob("ckpt-*.pt"))
        finite = None
        if ckpts:
            st = load_checkpoint(ckpts[-1])
            finite = bool(torch.isfinite(st["algorithm"]["x"]).all())
        out[spec.name] = {
            "computed": len({r["step"] for r in steps}), "final": ends[-1]["step"] if ends else None,
            "finite": finite,
            "consensus": _mean([r["consensus"] for r in steps[-10:]]),
            "non_finite_steps": sum(1 for r in steps if r["consensus"] is None),
            "rollbacks": max((r.get("rollbacks", 0) for r in steps), default=0),
        }
    return out


def _mean(values: list[Any]) -> float | None:
    """Mean of the finite values (a non-finite metric is written as null); None when there are none."""
    kept = [v for v in values if v is not None]
    return round(statistics.mean(kept), 4) if kept else None


def restart(group: PeerGroup, fed: Any, name: str, tails: dict[str, MetricsTail], at: int) -> float:
    for tail in tails.values():
        wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= at, WAIT_S)
    proc = next(p for p in group.procs if p.spec.name == name and p.returncode is None)
    proc.signal(signal.SIGKILL)
    proc.popen.wait(30)
    group.procs.remove(proc)
    t0 = time.monotonic()
    group.start(next(s for s in fed.specs(resume=True) if s.name == name))
    try:
        wait_for_record(tails[name], lambda r: r["type"] in ("rejoin", "end"), WAIT_S)
    except Exception:
        return float("nan")
    return round(time.monotonic() - t0, 1)


def finish(group: PeerGroup, tails: dict[str, MetricsTail]) -> None:
    for tail in tails.values():
        try:
            wait_for_record(tail, lambda r: r["type"] == "end", WAIT_S)
        except Exception:
            break
    for proc in group.running():
        proc.signal(signal.SIGTERM)


def run(kind: str, out: Path, layout: str) -> dict[str, Any]:
    fed = federation(out / kind, 4, steps=STEPS, dataset="digits", round_timeout_s=2.0, checkpoint_interval=20,
                     topology="complete")
    specs = [s for s in fed.specs() if s.name in HONEST]
    tails = {s.name: MetricsTail(s.metrics) for s in specs}
    extra: dict[str, Any] = {}
    hello = [(STEPS - 1, True) if kind == "hello" else (0, False)]
    with ScriptedMember(fed, "peer3", hello=lambda: hello[0]) as liar, PeerGroup(specs) as group:
        if kind in ("bomb", "huge", "sign", "moment"):
            liar.state_script = poisoned(liar, kind, layout)
            for tail in tails.values():  # quiet at start-up; at the restart it claims the furthest step
                wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= 15, WAIT_S)
            hello[0] = (STEPS - 1, True)
            extra["rejoin_s"] = restart(group, fed, "peer1", tails, 20)
            if kind == "bomb":  # stop everyone mid-run: the whole federation restarts below
                for name in ("peer0", "peer2"):
                    wait_for_record(tails[name], lambda r: r["type"] == "step" and r["step"] >= 50, WAIT_S)
                for proc in group.running():
                    proc.signal(signal.SIGTERM)
        elif kind == "push":
            for tail in tails.values():
                wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= 3, WAIT_S)
            stop = threading.Event()
            sent = [0]

            def push() -> None:
                vec, once = None, True
                while not stop.is_set():
                    for pid in ("peer0", "peer2"):
                        try:
                            vec = liar.fetch(pid)[1] if vec is None else vec
                            step = int(liar.hello(pid).step)
                        except grpc.RpcError:
                            continue
                        sent[0] += liar.push(pid, step + (10_000 if once else 10), vec)
                        once = False
                    stop.wait(0.5)

            t = threading.Thread(target=push, daemon=True)
            t.start()
            finish(group, tails)
            stop.set()
            t.join(30)
            extra["lies_sent"] = sent[0]
        elif kind == "flood":
            for tail in tails.values():
                wait_for_record(tail, lambda r: r["type"] == "step" and r["step"] >= 5, WAIT_S)
            target = next(p for p in group.procs if p.spec.name == "peer0")
            rss0 = _rss(target.pid)
            req = pb.StateRequest(federation=liar.net.federation, sender="peer3")
            unread = [liar.link("peer0").fetch_state(req, timeout=120) for _ in range(75)]
            codes: dict[str, int] = {}
            stop = threading.Event()

            def hammer() -> None:
                while not stop.is_set():
                    try:
                        list(liar.link("peer0").fetch_state(req, timeout=30))
                        key = "OK"
                    except grpc.RpcError as exc:
                        key = exc.code().name
                    codes[key] = codes.get(key, 0) + 1

            threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
            for t in threads:
                t.start()
            hellos: list[float] = []
            t_end = time.monotonic() + 8.0
            while time.monotonic() < t_end:
                try:
                    hellos.append(round(timed_hello(liar, "peer0"), 3))
                except grpc.RpcError:
                    hellos.append(float("inf"))
                stop.wait(0.5)
            extra["rss_growth_mb"] = round((_rss(target.pid) - rss0) / 2 ** 20, 1)
            stop.set()
            for t in threads:
                t.join(60)
            for call in unread:
                call.cancel()
            extra["hello_max_s"] = max(hellos)
            extra["fetch_codes"] = codes
        elif kind == "hung":
            liar.hang = True
            liar.hello_script = lambda: (int(liar.hello("peer0").step) + 1, True)  # the furthest: asked first
            extra["rejoin_s"] = restart(group, fed, "peer1", tails, 20)
        finish(group, tails)
        try:
            group.wait(WAIT_S, tolerate=HONEST)
        except Exception as exc:  # a measurement: note it, the outcome says the rest
            extra["group"] = f"{type(exc).__name__}: {exc}"[:300]
    if kind == "bomb":  # then the whole federation restarts with --resume, the liar still lying
        with ScriptedMember(fed, "peer3", hello=lambda: (10 ** 9, False)), PeerGroup(
                [s for s in fed.specs(resume=True) if s.name in HONEST]) as group:
            try:
                group.wait(WAIT_S, tolerate=HONEST)  # they end by themselves (done, or a lie ended them)
            except Exception as exc:
                extra["resume"] = f"{type(exc).__name__}: {exc}"[:300]
    return {"attack": kind, **extra, "peers": outcome(fed)}


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layout", choices=("full", "mixed"), default="mixed",
                    help="the state layout the liar serves: main's full one (before) or the mixed vector (after)")
    ap.add_argument("attacks", nargs="*", default=["none", "hello", "push", "bomb", "huge", "sign", "moment", "flood",
                                                   "hung"])
    args = ap.parse_args()
    for kind in args.attacks:
        try:
            row = run(kind, args.out, args.layout)
        except Exception as exc:  # a measurement, not a test: record what broke and go on
            row = {"attack": kind, "error": f"{type(exc).__name__}: {exc}"[:500]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
