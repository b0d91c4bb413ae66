"""Benchmark compressed gossip over emulated wide-area links: round time against the link's floor, bytes per step,
and the time to a digits Inception Score per compression (issue 18).

Part 1, rounds: a ring of M peers (processes on loopback, mutual TLS), one gossip round per step, every ring
pair on its own emulated link (``python -m p2pgan.netem pair``: a process per pair, a pacer per direction),
for each payload (MB of float32: 8.36 is resnet32's vector), link and ``mixing.compression``. Reported per
row: the mean step time of the slowest peer (its wall time per step; the median is in the JSON, but on a
ring a peer's steps alternate short and long and a median picks one of the two), the bytes one peer sends
per step, and the link floor beside it: (bytes one peer sends to one neighbour per round) * 8 / rate +
one-way delay, the least time a round can take on that link; ``vs link`` is step / floor. Beside it the
machine's floor: the same ring and compression with the peers connected directly over loopback (no relay,
no pacing), which is what this machine's CPUs take for the round's encoding, TLS, framing and mixing;
``vs max`` is step / the larger of the two floors (no round can beat either). On a machine shared by all M
peers and their relays, the machine's floor can exceed a fast link's. Bytes are what the mixer framed (header and shards;
TLS and HTTP/2 framing add well under 1 %). Between steps each vector moves by ``--drift`` of its scale,
as an optimizer step would, so compressed differences have realistic content.

Part 2, quality against wall time: ``p2pgan harness`` on digits with ``--link`` (default 10mbit:20ms, where
the 1.33 MB digits vector stands as the paper's 315 MB model does at a few Gbit/s) once per compression; the
time until the peers' mean IS first reaches ``--is-target`` (seconds from the peers' start), and the IS at
the last step. Skipped with ``--skip-digits``.

    python scripts/bench_wan.py                        # 8.36 and 100 MB; 100mbit:20ms and 1gbit:5ms; 4 peers
    python scripts/bench_wan.py --quick                # 1 MB; 100mbit:20ms; fewer steps; short digits runs
    python scripts/bench_wan.py --payloads 8.36 --links 10mbit:20ms --compressions none int8 --skip-digits

The relays are user-space Python (this kernel has no netem qdisc): at 1 Gbit/s a payload of 100 MB keeps
a relay process busy, so check the achieved rate (``python -m p2pgan.netem measure --link 1gbit:5ms
--bytes 100000000``) before reading a 1 Gbit/s row as the link's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

#: mixing.compression values timed by default (topk at 1 %: 8 bytes per kept element, ~0.02x of float32)
DEFAULT_COMPRESSIONS = ("none", "bf16-delta", "int8", "topk:0.01")
DEFAULT_LINKS = ("100mbit:20ms", "1gbit:5ms")
DEFAULT_PAYLOADS_MB = (8.36, 100.0)
#: seconds a worker may take to start (imports, TLS) and per step at most
STARTUP_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 600.0
FEDERATION = "bench-wan"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 MB, 100mbit:20ms, 4 steps, 2-peer 20-step digits runs")
    p.add_argument("--peers", type=int, default=4, help="ring size M (default 4)")
    p.add_argument("--payloads", type=float, nargs="+", default=None, help="MB of float32 (default 8.36 100)")
    p.add_argument("--links", nargs="+", default=None, help="RATE:DELAY each (default 100mbit:20ms 1gbit:5ms)")
    p.add_argument("--compressions", nargs="+", default=list(DEFAULT_COMPRESSIONS), help="mixing.compression values")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 10; --quick 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one sends keys)")
    p.add_argument("--drift", type=float, default=1e-3, help="relative change of each vector per step")
    p.add_argument("--serial", action="store_true",
                   help="also time each compression with the round's CPU not overlapping its link (rows "
                        "'int8/serial': encode whole, send, receive whole, apply, mix), beside the overlapped one")
    p.add_argument("--no-machine-floor", action="store_true",
                   help="leave out the direct-loopback run of each payload and compression (the machine's floor)")
    p.add_argument("--skip-digits", action="store_true", help="leave out part 2 (the digits harness runs)")
    p.add_argument("--skip-rounds", action="store_true", help="leave out part 1 (the ring rounds)")
    p.add_argument("--digits-link", default="10mbit:20ms", help="the link of the digits runs")
    p.add_argument("--digits-steps", type=int, default=None, help="steps of each digits run (default 600; --quick 20)")
    p.add_argument("--digits-peers", type=int, default=None, help="peers of each digits run (default 4; --quick 2)")
    p.add_argument("--is-target", type=float, default=None,
                   help="the digits IS to reach (default 6.0; --quick 1.5)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.payloads = args.payloads or ([1.0] if args.quick else list(DEFAULT_PAYLOADS_MB))
    args.links = args.links or (["100mbit:20ms"] if args.quick else list(DEFAULT_LINKS))
    args.steps = args.steps or (4 if args.quick else 10)
    args.digits_steps = args.digits_steps or (20 if args.quick else 600)
    args.digits_peers = args.digits_peers or (2 if args.quick else 4)
    args.is_target = args.is_target or (1.5 if args.quick else 6.0)
    from p2pgan.compression.spec import canonical
    from p2pgan.errors import ConfigError
    from p2pgan.netem import parse_link

    try:
        args.link_specs = {text: parse_link(text, "--links") for text in [*args.links, args.digits_link]}
        args.compressions = [canonical(c, "--compressions") for c in args.compressions]
    except ConfigError as exc:
        p.error(str(exc))
    if args.peers < 2 or args.steps < 1 or args.warmup < 1 or args.digits_peers < 2:
        p.error("need --peers >= 2, --steps >= 1, --warmup >= 1 (the first step sends keys), --digits-peers >= 2")
    if any(mb <= 0 for mb in args.payloads):
        p.error("--payloads: every size must be > 0 MB")
    return args


@contextlib.contextmanager
def ring_links(ports: dict[str, int], link: str) -> Iterator[dict[str, list[list[Any]]]]:
    """A ``p2pgan.netem pair`` process per ring pair; yields each peer's roster (its neighbours through the
    pair's relays; the others, which only get Hello, directly). Kills the relay processes on the way out."""
    from p2pgan.spawn import SPAWN_OPTIONS

    ids = list(ports)
    m = len(ids)
    pairs = {tuple(sorted((ids[i], ids[(i + 1) % m]))) for i in range(m)}
    procs: list[subprocess.Popen[str]] = []
    via: dict[tuple[str, str], int] = {}
    try:
        for a, b in sorted(pairs):
            proc = subprocess.Popen(
                [sys.executable, "-m", "p2pgan.netem", "pair", "--link", link,
                 "--target", f"127.0.0.1:{ports[a]}", "--target", f"127.0.0.1:{ports[b]}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **SPAWN_OPTIONS)
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the relay of {a}-{b} did not start (rc {proc.wait()})")
            via[a, b], via[b, a] = json.loads(line)["ports"]
        yield {a: [[b, "127.0.0.1", ports[b] if a == b else via.get((a, b), ports[b])] for b in ids] for a in ids}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def run_row(args: argparse.Namespace, mb: float, link: str | None, compression: str,
            overlap: bool = True) -> dict[str, Any]:
    """One (payload, link, compression): M ring peers, their step times and bytes. ``link`` None: the peers
    connect directly over loopback, no relay and no pacing (the machine's own floor for that row). ``overlap``
    False: the round's CPU does not overlap its link (see ``--serial``)."""
    from p2pgan.security.certs import make_federation
    from p2pgan.wire.workers import exchange_ports, worker_processes

    dim = max(1, int(mb * 1e6 / 4))
    ids = [f"peer{i}" for i in range(args.peers)]
    with tempfile.TemporaryDirectory(prefix="p2pgan-bench-wan-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        tls = make_federation(root / "federation", FEDERATION, ids)
        configs = {pid: {
            "federation": FEDERATION, "peer_id": pid, "rank": r, "seed": 0, "dim": dim, "compression": compression,
            "key_interval": 1000, "streaming": overlap, "warmup": args.warmup, "steps": args.steps, "drift": args.drift,
            "round_timeout_s": STEP_TIMEOUT_S, "connect_timeout_s": STARTUP_TIMEOUT_S,
            "tls": {k: str(v) for k, v in vars(tls[pid]).items()},
        } for r, pid in enumerate(ids)}
        procs = stack.enter_context(worker_processes("p2pgan.experiments.wan_worker", configs, root, os.environ))
        rosters: dict[str, Any] = {}

        def route(ports: dict[str, int | None]) -> dict[str, list[list[Any]]]:
            if link is None:
                return {a: [[b, "127.0.0.1", int(ports[b] or 0)] for b in ids] for a in ids}
            rosters.update(stack.enter_context(ring_links({p: int(v or 0) for p, v in ports.items()}, link)))
            return rosters

        exchange_ports(procs, "bench_wan peer", route=route)
        budget = STARTUP_TIMEOUT_S + (args.warmup + args.steps) * STEP_TIMEOUT_S
        results = []
        for pid, proc in procs.items():
            assert proc.stdout is not None
            proc.wait(timeout=budget)
            out = proc.stdout.read()
            if proc.returncode != 0 or not out.strip():
                raise RuntimeError(f"bench_wan peer {pid} failed (rc {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    # the slowest peer's mean step (its wall time per step over the timed steps). Not the median: on a ring the
    # peers of one parity finish a round as the others start theirs, so a peer's steps alternate short and long
    # (part of a round's data arrives during the previous step), and a median picks one of the two
    step_s = max(statistics.mean(r["step_s"]) for r in results)
    step_median_s = max(statistics.median(r["step_s"]) for r in results)
    sent = statistics.mean(statistics.mean(r["bytes_sent"]) for r in results)
    per_link = sent / 2  # a ring peer sends the same message to its two neighbours, each over its own link
    floor = args.link_specs[link].floor_s(per_link) if link is not None else None
    return {
        "payload_mb": mb, "link": link or "direct", "compression": compression,
        "variant": _variant(compression, overlap), "peers": args.peers, "dim": dim, "step_s": step_s,
        "step_median_s": step_median_s, "bytes_per_step": sent, "bytes_per_link_round": per_link, "floor_s": floor,
        "vs_floor": step_s / floor if floor else None, "dropped": sum(r["dropped"] for r in results),
        "keys": sum(r["keys"] or 0 for r in results), "per_peer": results,
    }


def time_to_target(state: Path, target: float) -> dict[str, Any]:
    """From a harness run's metrics: seconds from the peers' start until their mean IS first reaches ``target``
    (None if it never does), and the mean IS of the last evaluation."""
    evals: dict[int, list[tuple[float, float]]] = {}
    starts = []
    for path in sorted(state.glob("*/metrics.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["type"] == "start":
                starts.append(rec["time"])
            elif rec["type"] == "eval" and "is" in rec.get("scores", {}):
                evals.setdefault(rec["step"], []).append((rec["time"], rec["scores"]["is"]))
    if not starts or not evals:
        raise RuntimeError(f"{state}: no start or eval records")
    t0 = min(starts)
    reached = None
    for step in sorted(evals):
        times, scores = zip(*evals[step])
        if statistics.mean(scores) >= target:
            reached = {"step": step, "seconds": max(times) - t0}
            break
    last = max(evals)
    return {"target_is": target, "reached": reached, "last_step": last,
            "last_is": statistics.mean(s for _, s in evals[last])}


def run_digits(args: argparse.Namespace, compression: str) -> dict[str, Any]:
    """One ``p2pgan harness`` digits run over ``--digits-link`` with ``mixing.compression``."""
    with tempfile.TemporaryDirectory(prefix="p2pgan-bench-wan-digits-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "p2pgan", "harness", "--out", str(out), "--peers", str(args.digits_peers),
               "--steps", str(args.digits_steps), "--dataset", "digits", "--link", args.digits_link,
               "--eval-interval", str(max(1, args.digits_steps // 20)), "--set", f"mixing.compression={compression}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"harness with {compression} failed: {proc.stderr[-2000:]}")
        report = json.loads((out / "report.json").read_text())
        result = time_to_target(out / "state", args.is_target)
    bytes_sent = report["summary"].get("bytes_sent", 0.0)
    return {"compression": compression, "link": args.digits_link, "steps": args.digits_steps,
            "wall_s": time.perf_counter() - t0, "bytes_per_step_per_peer": bytes_sent / args.digits_peers
            / args.digits_steps, **result}


def _variant(compression: str, overlap: bool) -> str:
    """A row's name: the compression, and ``/serial`` where the round's CPU did not overlap its link."""
    return compression if overlap else f"{compression}/serial"


def with_machine_floor(row: dict[str, Any], machine: dict[str, Any] | None) -> dict[str, Any]:
    """``row`` with the machine's floor beside the link's: the same ring and compression over direct loopback
    (``machine``), and the step against the larger of the two (a round can beat neither)."""
    if machine is not None and row["floor_s"] is not None:
        row["machine_s"] = machine["step_s"]
        row["vs_bound"] = row["step_s"] / max(row["floor_s"], machine["step_s"])
    return row


def _ms(value: float | None) -> str:
    return f"{value * 1e3:>7.0f}ms" if value is not None else f"{'-':>9}"


def _times(value: float | None) -> str:
    return f"{value:>7.2f}x" if value is not None else f"{'-':>8}"


def table(rows: list[dict[str, Any]]) -> str:
    """One line per row: the step, the link's floor and step / floor, the machine's floor (the same row without
    the link) and step / the larger floor, the bytes one peer sends per step and their ratio to ``none``."""
    lines = [f"{'MB':>7} {'link':>13} {'compression':>16} {'step':>9} {'link floor':>10} {'vs link':>8} "
             f"{'machine':>9} {'vs max':>8} {'sent/step':>10} {'vs none':>7}"]
    base = {(r["payload_mb"], r["link"]): r["bytes_per_step"] for r in rows if r["compression"] == "none"}
    for r in rows:
        ratio = r["bytes_per_step"] / base[r["payload_mb"], r["link"]] if (r["payload_mb"], r["link"]) in base else None
        lines.append(f"{r['payload_mb']:>7.2f} {r['link']:>13} {r['variant']:>16} "
                     f"{_ms(r['step_s'])} "
                     f"{_ms(r['floor_s']):>10} {_times(r['vs_floor'])} {_ms(r.get('machine_s'))} "
                     f"{_times(r.get('vs_bound'))} {r['bytes_per_step'] / 1e6:>8.3f}MB "
                     + (f"{ratio:>6.3f}x" if ratio is not None else f"{'-':>7}"))
    return "\n".join(lines)


def digits_table(rows: list[dict[str, Any]]) -> str:
    """Part 2's table; the ratios are against the ``none`` run (wall time of the whole run, IS at its last step)."""
    base = next((r for r in rows if r["compression"] == "none"), None)
    lines = [f"{'compression':>11} {'link':>13} {'IS target':>9} {'reached at':>14} {'last IS':>8} {'IS/none':>7} "
             f"{'wall':>7} {'wall/none':>9} {'sent/step':>10}"]
    for r in rows:
        at = f"{r['reached']['seconds']:.0f}s (k={r['reached']['step']})" if r["reached"] else "not reached"
        is_ratio = f"{r['last_is'] / base['last_is']:>7.3f}" if base else f"{'-':>7}"
        wall_ratio = f"{r['wall_s'] / base['wall_s']:>8.3f}x" if base else f"{'-':>9}"
        lines.append(f"{r['compression']:>11} {r['link']:>13} {r['target_is']:>9.2f} {at:>14} {r['last_is']:>8.2f} "
                     f"{is_ratio} {r['wall_s']:>6.0f}s {wall_ratio} {r['bytes_per_step_per_peer'] / 1e6:>8.3f}MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    machine: list[dict[str, Any]] = []
    for mb in [] if args.skip_rounds else args.payloads:
        for compression in args.compressions:
            # compressed rounds overlap their CPU with the link; --serial also times them without
            for overlap in (True, False) if args.serial and compression != "none" else (True,):
                floor = None
                if not args.no_machine_floor:
                    floor = run_row(args, mb, None, compression, overlap)
                    machine.append(floor)
                    print(table([floor]).splitlines()[-1], flush=True)
                for link in args.links:
                    rows.append(with_machine_floor(run_row(args, mb, link, compression, overlap), floor))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    rows.sort(key=lambda r: (r["payload_mb"], args.links.index(r["link"]), args.compressions.index(r["compression"]),
                             r["variant"] != r["compression"]))
    if rows:
        print("\n" + table(rows))
    digits = [] if args.skip_digits else [run_digits(args, c) for c in args.compressions]
    if digits:
        print("\n" + digits_table(digits))
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "machine": machine, "digits": digits,
                                             "options": {k: v for k, v in vars(args).items() if k != "link_specs"}},
                                            indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
