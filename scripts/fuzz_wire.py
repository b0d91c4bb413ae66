"""Fuzz the gossip wire of a RUNNING federation with a member's leaked key; count what gets through.

Starts a real federation on loopback (certificates, roster, daemons as OS processes): peer0 and peer1
are ordinary daemons training a GAN on their private shards; peer2's key is "leaked": this script
holds it, mixes honestly with the others (so the federation trains at its normal pace) and, on the
side, sends mutated parameter messages to peer0 and peer1 over fresh Push streams. A mutation starts
from a valid message for the next step and changes header fields (interesting and random values,
huge strings), flips bits, truncates / drops / duplicates / reorders frames, re-cuts the shards (tiny,
empty, too many), or keeps every check valid but puts hostile values in the vector (3e38 elements,
x 1e6, large noise; NaN / inf), which only robust mixing stands between and the model.

Counted: every reply by gRPC status (per mutation kind), INTERNAL replies, calls that hung past
their deadline, daemon crashes, tracebacks in the daemons' logs, resident memory of each daemon
before and after, its step time before and during the fuzz, robust-mixing counters (clipped,
rejected, rollbacks) and whether the final models (checkpoints written at SIGTERM) are finite.

    python scripts/fuzz_wire.py                      # 5,000 messages (a few minutes on 2 cores)
    python scripts/fuzz_wire.py --messages 200       # the short form the test suite runs
Writes ``fuzz.json`` in --out (default: a temporary folder) and prints a table; exit 1 when any crash,
INTERNAL, non-finite model or memory growth over the limit was seen.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

#: each fuzz call's deadline; a call past it counts as a hang
CALL_TIMEOUT_S = 10.0
#: daemon steps before the fuzz starts (robust mixing has learned its radius by then)
WARMUP_STEPS = 10
#: daemon steps after the fuzz, so that accepted hostile vectors are mixed and trained on
COOLDOWN_STEPS = 5
#: the issue's bound on memory growth of a daemon over the whole fuzz run
MAX_GROWTH_MB = 50.0
WAIT_S = 300.0
#: resident memory of the daemons is sampled every this many messages (a leak grows linearly)
RSS_EVERY = 250


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


class Mutator:
    """Builds mutated messages from a valid one; ``kinds`` names each mutation."""

    def __init__(self, rng: random.Random, federation: str, sender: str, digest: str, dim: int) -> None:
        self.rng = rng
        self.federation, self.sender, self.digest, self.dim = federation, sender, digest, dim
        self.kinds: dict[str, Callable[[int, object], list[bytes]]] = {
            "header-field": self.header_field,
            "huge-string": self.huge_string,
            "bitflip": self.bitflip,
            "truncate-frame": self.truncate,
            "drop-dup-swap": self.structure,
            "garbage-frame": self.garbage,
            "reshard": self.reshard,
            "hostile-values": self.hostile_values,
            "non-finite": self.non_finite,
        }

    # -- building blocks -----------------------------------------------------------------------------
    def _header(self, at_step: int, count: int, **over: object) -> bytes:
        from p2pgan.wire.v1 import gossip_pb2 as pb

        fields: dict[str, object] = dict(federation=self.federation, sender=self.sender, step=at_step, round=0,
                                         layout_digest=self.digest, dtype=pb.FLOAT32, element_count=self.dim,
                                         shard_count=count)
        fields.update(over)
        try:
            return pb.Frame(header=pb.Header(**fields)).SerializeToString()  # type: ignore[arg-type]
        except (ValueError, TypeError):  # a value protobuf cannot hold: send the field's maximum instead
            return pb.Frame(header=pb.Header(**{**fields, **{k: 2**31 - 1 for k in over}})).SerializeToString()  # type: ignore[arg-type]

    def _frames(self, vec, at_step: int, shard_bytes: int = 2 * 1024 * 1024, **over: object) -> list[bytes]:
        from p2pgan.wire import codec

        payload = codec.le_bytes(vec)
        count = codec.shard_count(len(payload), shard_bytes)
        shards = [codec.shard_frame(i, payload[i * shard_bytes:(i + 1) * shard_bytes]) for i in range(count)]
        return [self._header(at_step, count, **over), *shards]

    # -- mutations -----------------------------------------------------------------------------------
    def header_field(self, step: int, vec) -> list[bytes]:
        r = self.rng
        field, values = r.choice([
            ("federation", ["", "other", self.federation + "x", "\x00" * 8]),
            ("sender", ["", "peer0", "peer1", "zed", "PEER2"]),
            ("step", [-1, 0, step + 2, step + 5, step + 1000, 2**62, -(2**62)]),
            ("round", [1, 7, 2**31, 2**32 - 1]),
            ("layout_digest", ["", "deadbeef", self.digest[::-1]]),
            ("dtype", [0, 2, 3, 4, 99]),
            ("element_count", [0, 1, self.dim - 1, self.dim + 1, 2**34 + 1, 2**63]),
            ("shard_count", [0, 2, 3, 1000, 2**31]),
        ])
        return self._frames(vec, step, **{field: r.choice(values)})

    def huge_string(self, step: int, vec) -> list[bytes]:
        field = self.rng.choice(["federation", "sender", "layout_digest"])
        text = self.rng.choice(["x", "\x1b[2J", "\u202e", "%s%n"]) * self.rng.choice([1000, 100_000, 1_000_000])
        return self._frames(vec, step, **{field: text})

    def bitflip(self, step: int, vec) -> list[bytes]:
        frames = [bytearray(f) for f in self._frames(vec, step)]
        for _ in range(self.rng.randint(1, 16)):
            f = self.rng.choice(frames)
            if f:
                i = self.rng.randrange(len(f))
                f[i] ^= 1 << self.rng.randrange(8)
        return [bytes(f) for f in frames]

    def truncate(self, step: int, vec) -> list[bytes]:
        frames = self._frames(vec, step)
        i = self.rng.randrange(len(frames))
        frames[i] = frames[i][: self.rng.randrange(len(frames[i]) + 1)]
        return frames

    def structure(self, step: int, vec) -> list[bytes]:
        frames = self._frames(vec, step, shard_bytes=4096)
        op = self.rng.choice(["drop", "dup", "swap", "header-twice", "shards-only"])
        i = self.rng.randrange(len(frames))
        if op == "drop":
            del frames[i]
        elif op == "dup":
            frames.insert(i, frames[i])
        elif op == "swap" and len(frames) > 2:
            j = self.rng.randrange(1, len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif op == "header-twice":
            frames = [frames[0], *frames]
        else:
            frames = frames[1:]
        return frames

    def garbage(self, step: int, vec) -> list[bytes]:
        junk = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 2000)))
        frames = self._frames(vec, step)
        return self.rng.choice([[junk], [frames[0], junk], [*frames, junk]])

    def reshard(self, step: int, vec) -> list[bytes]:
        from p2pgan.wire import codec

        choice = self.rng.choice(["tiny", "odd", "empty-last", "empty-first"])
        if choice == "tiny":
            return self._frames(vec, step, shard_bytes=self.rng.choice([1, 4, 64, 1000]))
        if choice == "odd":
            return self._frames(vec, step, shard_bytes=self.rng.randint(1024, 8192))
        frames = self._frames(vec, step)
        empty = codec.shard_frame(0 if choice == "empty-first" else len(frames) - 1, memoryview(b""))
        if choice == "empty-first":
            return [self._header(step, len(frames)), empty, *frames[1:]]
        return [self._header(step, len(frames)), *frames[1:], empty]

    def hostile_values(self, step: int, vec) -> list[bytes]:
        v = vec.clone()
        how = self.rng.choice(["3e38-one", "-3e38-one", "3e38-all", "x1e6", "noise1e3", "1e30-many", "zeros"])
        if how == "3e38-one":
            v[self.rng.randrange(self.dim)] = 3e38
        elif how == "-3e38-one":
            v[-1] = -3e38
        elif how == "3e38-all":
            v.fill_(3.4e38)
        elif how == "x1e6":
            v.mul_(1e6)
        elif how == "noise1e3":
            v.add_(1e3 * __import__("torch").randn(self.dim))
        elif how == "1e30-many":
            v[:: max(1, self.dim // 10)] = 1e30
        else:
            v.zero_()
        return self._frames(v, step)

    def non_finite(self, step: int, vec) -> list[bytes]:
        v = vec.clone()
        v[self.rng.randrange(self.dim)] = self.rng.choice([math.nan, math.inf, -math.inf])
        return self._frames(v, step)


def run(out: Path, messages: int, seed: int, *, progress: bool = True) -> dict[str, object]:
    import grpc
    import torch

    from p2pgan.checkpoint import CheckpointManager, state_finite
    from p2pgan.daemon.config import load_config, network_config
    from p2pgan.daemon.peer import load_private_data
    from p2pgan.daemon.processes import MetricsTail, PeerGroup, wait_for_record
    from p2pgan.discovery import load_roster
    from p2pgan.errors import PeerUnavailableError
    from p2pgan.harness import HarnessOptions, prepare
    from p2pgan.metrics import read_metrics
    from p2pgan.trainer.game import build_game
    from p2pgan.wire import transport
    from p2pgan.wire.mixer import open_mixer
    from p2pgan.wire.v1 import gossip_pb2 as pb

    torch.set_num_threads(1)
    fed = prepare(HarnessOptions(peers=3, out=out / "federation", steps=10**7, dataset="gaussians", eval_interval=0,
                                 checkpoint_interval=50, round_timeout_s=2.0, threads=1, seed=seed))
    specs = fed.specs()
    honest, leaked = specs[:2], "peer2"
    cfg = load_config(fed.configs[leaked])
    net = network_config(cfg, load_roster(cfg.discovery.roster).peers)  # type: ignore[arg-type]
    own_seed = cfg.train.seed if cfg.train.seed is not None else 0  # the leaked member's own data: any seed
    data = load_private_data(cfg, own_seed)
    game = build_game(cfg.train.model, cfg.train.loss, data, batch_size=cfg.train.batch_size,
                      init_seed=cfg.train.init_seed, seed=own_seed, device=torch.device("cpu"),
                      latent_dim=cfg.train.latent_dim, width=cfg.train.width)
    dim, digest = game.dim, game.layout_digest()
    rng = random.Random(seed)
    mutator = Mutator(rng, net.federation, leaked, digest, dim)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    result: dict[str, object] = {"messages": messages, "seed": seed, "dim": dim}
    stop = threading.Event()
    shared = {"step": 0, "x": game.point().clone()}

    def mix_honestly(mixer) -> None:  # the leaked member still takes part, so the federation trains normally
        x, k = shared["x"], 0
        while not stop.is_set():
            try:
                x = mixer.mix(x, k)
            except PeerUnavailableError:  # closed at the end
                return
            k += 1
            shared["step"], shared["x"] = k, x

    with PeerGroup(honest) as group, open_mixer(net, dim=dim, layout_digest=digest) as mixer:
        mixer.wait_ready(WAIT_S)
        mixer_thread = threading.Thread(target=mix_honestly, args=(mixer,), daemon=True)
        mixer_thread.start()
        tails = {s.name: MetricsTail(s.metrics) for s in honest}
        for s in honest:
            wait_for_record(tails[s.name], lambda r: r.get("type") == "step" and r["step"] >= WARMUP_STEPS, WAIT_S)
        pids = {p.spec.name: p.pid for p in group}
        rss_before = {n: _rss_mb(pid) for n, pid in pids.items()}
        t_start = time.time()
        roster = {p.id: p for p in net.roster}
        channels = [transport.open_channel(roster[s.name], net.federation, net.tls) for s in honest]
        calls = [ch.stream_unary(transport.PUSH_METHOD, request_serializer=None,
                                 response_deserializer=pb.PushSummary.FromString) for ch in channels]
        kinds = list(mutator.kinds)
        accepted = 0
        rss_series: list[dict[str, float]] = []
        t0 = time.perf_counter()
        try:
            for i in range(messages):
                kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
                step, vec = shared["step"], shared["x"][0]
                # malformed kinds aim at the previous step: fully checked, then dropped as late, so they do
                # not take the leaked member's own slot; valid-but-hostile values aim at the next step, where
                # they are mixed in (and displace that member's own message for the step)
                target_step = step + 1 if kind in ("hostile-values", "non-finite") else max(0, step - 1)
                frames = mutator.kinds[kind](target_step, vec)
                try:
                    reply = calls[i % len(calls)](iter(frames), timeout=CALL_TIMEOUT_S)
                    code = "OK"
                    accepted += reply.messages
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[union-attr]
                counts[kind][code] += 1
                if (i + 1) % RSS_EVERY == 0:
                    rss_series.append({n: round(_rss_mb(pid), 1) for n, pid in pids.items()})
                if progress and (i + 1) % 500 == 0:
                    print(f"fuzz: {i + 1}/{messages} messages, {time.perf_counter() - t0:.0f} s, "
                          f"federation at step {shared['step']}", file=sys.stderr, flush=True)
        finally:
            for ch in channels:
                ch.close()
        fuzz_s = time.perf_counter() - t0
        end_step = shared["step"]
        for s in honest:
            wait_for_record(tails[s.name], lambda r: r.get("type") == "step" and r["step"] >= end_step + COOLDOWN_STEPS,
                            WAIT_S)
        rss_after = {n: _rss_mb(pid) for n, pid in pids.items()}
        crashed = [p.spec.name for p in group if p.returncode is not None]
        stop.set()
        group.stop()
        exit_codes = {p.spec.name: p.returncode for p in group}
        mixer_thread.join(timeout=2 * net.round_timeout_s + 5)

    per_daemon: dict[str, dict[str, object]] = {}
    nonfinite = 0
    for s in honest:
        records = [r for r in read_metrics(s.metrics) if r.get("type") == "step"]
        before = [r["step_s"] for r in records if r["time"] < t_start][-20:]
        during = [r["step_s"] for r in records if t_start <= r["time"] <= t_start + fuzz_s]
        loaded = CheckpointManager(s.metrics.parent).load_latest(fallback=False)
        finite = loaded is not None and state_finite(loaded.state)
        nonfinite += 0 if finite else 1
        log_text = s.log.read_text(errors="replace") if s.log.exists() else ""
        last = records[-1] if records else {}
        per_daemon[s.name] = {
            "rss_mb_before": round(rss_before[s.name], 1), "rss_mb_after": round(rss_after[s.name], 1),
            "rss_growth_mb": round(rss_after[s.name] - rss_before[s.name], 1),
            "step_s_before": round(statistics.median(before), 4) if before else None,
            "step_s_during": round(statistics.median(during), 4) if during else None,
            "steps_during_fuzz": len(during), "final_step": last.get("step"),
            "non_finite_losses": sum(1 for r in records if r.get("loss_d") is None or r.get("loss_g") is None),
            "clipped": last.get("clipped"), "rejected": last.get("rejected"), "refused": last.get("refused"),
            "suspects": last.get("suspects"), "rollbacks": last.get("rollbacks"),
            "final_model_finite": finite, "exit_code": exit_codes[s.name],
            "tracebacks_in_log": log_text.count("Traceback"), "log_bytes": len(log_text.encode()),
        }
    by_status: collections.Counter[str] = collections.Counter()
    for c in counts.values():
        by_status.update(c)
    result.update({
        "fuzz_seconds": round(fuzz_s, 1), "messages_per_s": round(messages / fuzz_s, 1) if fuzz_s else None,
        "accepted_messages": accepted, "by_status": dict(by_status),
        "by_mutation": {k: dict(v) for k, v in counts.items()},
        "internal": by_status.get("INTERNAL", 0) + by_status.get("UNKNOWN", 0),
        "hangs": by_status.get("DEADLINE_EXCEEDED", 0),
        "crashes": len(crashed) + sum(1 for c in exit_codes.values() if c != 0),
        "non_finite_models": nonfinite, "daemons": per_daemon,
        "rss_series_mb": rss_series,
        "max_rss_growth_mb": max(d["rss_growth_mb"] for d in per_daemon.values()),  # type: ignore[type-var]
    })
    result["ok"] = (result["crashes"] == 0 and result["internal"] == 0 and nonfinite == 0
                    and float(result["max_rss_growth_mb"]) < MAX_GROWTH_MB  # type: ignore[arg-type]
                    and all(d["tracebacks_in_log"] == 0 for d in per_daemon.values()))
    return result


def _table(result: dict[str, object]) -> str:
    lines = [f"{result['messages']} fuzz messages in {result['fuzz_seconds']} s "
             f"({result['messages_per_s']}/s), {result['accepted_messages']} accepted (valid but hostile values)",
             "", f"{'mutation':<16} " + " ".join(f"{c:>18}" for c in sorted(result["by_status"]))]  # type: ignore[arg-type]
    for kind, codes in result["by_mutation"].items():  # type: ignore[union-attr]
        lines.append(f"{kind:<16} " + " ".join(f"{codes.get(c, 0):>18}" for c in sorted(result["by_status"])))  # type: ignore[arg-type]
    lines += ["", f"crashes {result['crashes']}   INTERNAL {result['internal']}   hangs {result['hangs']}   "
                  f"non-finite models {result['non_finite_models']}   max memory growth {result['max_rss_growth_mb']} MB"]
    for name, d in result["daemons"].items():  # type: ignore[union-attr]
        lines.append(f"{name}: rss {d['rss_mb_before']} -> {d['rss_mb_after']} MB, step {d['step_s_before']} s "
                     f"before / {d['step_s_during']} s during ({d['steps_during_fuzz']} steps), clipped {d['clipped']}, "
                     f"refused {d['refused']}, left out {d['rejected']}, rollbacks {d['rollbacks']}, final model finite {d['final_model_finite']}, "
                     f"exit {d['exit_code']}, tracebacks {d['tracebacks_in_log']}")
    lines.append("PASS" if result["ok"] else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="mutated messages to send (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the federation and fuzz.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the leaked peer's own mixing warnings are not the point here
    if args.messages < 1:
        parser.error("--messages must be >= 1")
    with tempfile.TemporaryDirectory(prefix="p2pgan-fuzz-") as tmp:
        out = (args.out or Path(tmp)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        result = run(out, args.messages, args.seed)
        (out / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
        print(_table(result))
        print(f"results: {out / 'fuzz.json'}" if args.out else "")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
