"""Ask a running peer daemon how it is doing.

Calls grpc.health.v1 on the daemon's gRPC port over mutual TLS with the peer's own certificate (from its
config), and reads the daemon's metrics file for the step, the members it mixes with, dropped rounds
and the last step's time, and whether its checkpoints are being written (``checkpoint FAILING since step
N (reason)`` while a full or read-only disk refuses them; the daemon trains on and retries). Exit status 0
when the daemon answers SERVING, 1 otherwise (not reachable, still starting, leaving), so it can serve as
a probe in scripts.

Examples:
  p2pgan status --config peers/alice.yaml
  p2pgan status --config peers/alice.yaml --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

#: seconds to wait for the daemon's answer
STATUS_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.yaml", help="the peer's YAML config")
    parser.add_argument("--timeout", type=float, default=STATUS_TIMEOUT_S, help="seconds to wait for an answer")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def daemon_status(config: Path, timeout: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """The health answer and the latest metrics of the daemon ``config`` describes."""
    import grpc

    from p2pgan.daemon.config import load_config
    from p2pgan.metrics import read_metrics
    from p2pgan.wire import transport
    from p2pgan.wire.config import PeerEntry
    from p2pgan.wire.health import CHECKPOINT_SERVICE, check

    cfg = load_config(config)
    host = cfg.peer.listen_host if cfg.peer.listen_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    out: dict[str, Any] = {"peer": cfg.peer.id, "federation": cfg.peer.federation,
                           "address": f"{host}:{cfg.peer.listen_port}"}
    tls = None if cfg.security.insecure else cfg.security.tls
    with transport.open_channel(PeerEntry(cfg.peer.id, host, cfg.peer.listen_port), cfg.peer.federation, tls) as channel:
        try:
            out["health"] = check(channel, timeout=timeout)
        except grpc.RpcError as exc:
            out["health"] = "UNREACHABLE"
            out["error"] = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        else:
            try:  # the daemon's own word, even when the full disk keeps its metrics file from growing
                out["checkpoint_health"] = check(channel, CHECKPOINT_SERVICE, timeout=timeout)
            except grpc.RpcError:
                pass  # a daemon of an older version: the metrics file may still say
    records = read_metrics(cfg.metrics.path) if cfg.metrics.path.is_file() else []
    start = next((r for r in reversed(records) if r.get("type") == "start"), None)
    step = next((r for r in reversed(records) if r.get("type") == "step"), None)
    ev = next((r for r in reversed(records) if r.get("type") == "eval"), None)
    if start:
        out["members"] = start.get("members")
        out["total_steps"] = start.get("total_steps")
    if step:
        out.update(step=step.get("step"), step_s=step.get("step_s"), comm_s=step.get("comm_s"),
                   dropped_rounds=step.get("dropped"), last_step_age_s=round(time.time() - float(step["time"]), 1))
    if ev:
        out["scores"] = ev.get("scores")
    ckpt = next((r for r in reversed(records) if r.get("type") == "checkpoint"), None)
    if ckpt:
        out.update(checkpoint_step=ckpt.get("last_good_step"), checkpoint_error=ckpt.get("error"),
                   checkpoint_failing_since=ckpt.get("failing_since"))
    if "checkpoint_health" in out:
        out["checkpoint_failing"] = out["checkpoint_health"] != "SERVING"
    elif ckpt:
        out["checkpoint_failing"] = not ckpt.get("ok")
    spent = next((r for r in reversed(records) if r.get("epsilon") is not None), None)
    if start and (start.get("privacy") or {}).get("mode") == "off":
        out["privacy"] = {"mode": "off"}
    elif spent:
        out["privacy"] = {"mode": "dp", **{k: spent.get(k) for k in ("epsilon", "epsilon_budget", "delta", "dp_steps")}}
    return out


def run(args: argparse.Namespace) -> int:
    st = daemon_status(args.config, args.timeout)
    if args.json:
        print(json.dumps(st))
    else:
        line = f"peer {st['peer']} ({st['address']}): {st['health']}"
        if "error" in st:
            line += f" ({st['error']})"
        if "step" in st:
            of = f"/{st['total_steps']}" if st.get("total_steps") else ""
            line += (f"; step {st['step']}{of} ({st['last_step_age_s']} s ago), last step {st['step_s'] or 0:.3f} s "
                     f"(mixing {st['comm_s'] or 0:.3f} s), dropped rounds {st['dropped_rounds']}")
        if st.get("checkpoint_failing"):
            since = st.get("checkpoint_failing_since")
            line += "; checkpoint FAILING" + (f" since step {since}" if since is not None else "")
            line += f" ({st['checkpoint_error']})" if st.get("checkpoint_error") else ""
            good = st.get("checkpoint_step")
            line += f", last good at step {good}" if good is not None else ", none written yet"
        if st.get("members"):
            line += f"; members {', '.join(st['members'])}"
        priv = st.get("privacy")
        if priv and priv["mode"] == "off":
            line += "; privacy: none (no formal guarantee)"
        elif priv:
            budget = f" of {priv['epsilon_budget']:.4g}" if priv.get("epsilon_budget") else ""
            line += f"; privacy: epsilon {priv['epsilon']:.4g}{budget} at delta {priv['delta']:g}"
        if st.get("scores"):
            line += "; scores " + ", ".join(f"{k} {v:.4g}" for k, v in st["scores"].items() if isinstance(v, float))
        print(line)
    return 0 if st["health"] == "SERVING" else 1
