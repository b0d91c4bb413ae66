#!/usr/bin/env python
"""Wire precision: what bfloat16 / float16 on the wire cost the GAN, on the main job (scripts/demo.sh).

For each seed and each ``mixing.wire_dtype``, one ``p2pgan harness`` run of the demo's federation (4 peer
processes, DP-OAdam on a ring, one round per step, mutual TLS on loopback, the bundled digits), the same
steps, one run after the other; then a table: the peers' mean IS and FID at the end and averaged over
the last evaluations, the consensus distance (each peer's distance to its neighbours' average as it
received them: with a narrow wire dtype this includes their rounding), seconds per step, MB sent per step,
and the float32 fallbacks of a narrow dtype (weights out of its range; p2pgan.wire.mixer); and, with two
seeds or more, each narrow dtype against float32 seed by seed (two-sided paired t-test).

    python scripts/exp_wire_dtype.py --out docs/results/wire_dtype      # 2 seeds x 3 dtypes, 800 steps; ~14 min
    python scripts/exp_wire_dtype.py --steps 200 --seeds 0              # shorter

A run whose ``report.json`` already exists under ``--runs`` is read, not run again (an interrupted
experiment continues). Writes OUT/wire_dtype.json and prints the table (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "bfloat16", "float16")
#: the demo's harness arguments (scripts/demo.sh) except --steps, --seed and --wire-dtype
DEMO_ARGS = ("--peers", "4", "--dataset", "digits", "--variant", "dp", "--topology", "ring", "--rounds", "1",
             "--batch-size", "32")
#: evaluations averaged into the "tail" scores, and steps into the tail consensus
TAIL_EVALS = 3
TAIL_STEPS = 100
#: what the mixer logs when a message goes out as float32 instead of the configured dtype
FALLBACK_LOG = "sent as float32 instead"


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize_run(run: Path) -> dict[str, Any]:
    """One harness run's numbers, from its report.json and the peers' metrics and logs."""
    report = json.loads((run / "report.json").read_text())
    peers: Mapping[str, Mapping[str, Any]] = report["peers"]
    summary = report["summary"]
    tail_scores: dict[str, list[float]] = {"is": [], "fid": []}
    consensus_tail, refused, fallbacks = [], 0, 0
    for name in peers:
        state = run / "state" / name
        recs = _records(state / "metrics.jsonl")
        evals = [r for r in recs if r.get("type") == "eval"][-TAIL_EVALS:]
        for key, values in tail_scores.items():
            values += [float(r["scores"][key]) for r in evals if key in (r.get("scores") or {})]
        steps = [r for r in recs if r.get("type") == "step"]
        consensus_tail += [float(r["consensus"]) for r in steps[-TAIL_STEPS:]]
        refused += int(steps[-1].get("refused", 0)) if steps else 0
        log = state / "daemon.log"
        fallbacks += log.read_text(errors="replace").count(FALLBACK_LOG) if log.is_file() else 0
    opts = report.get("options") or {}
    return {
        "run": str(run), "seed": opts.get("seed"), "wire_dtype": opts.get("wire_dtype", "float32"),
        "steps": opts.get("steps"),
        "is": summary.get("is", {}).get("mean"), "fid": summary.get("fid", {}).get("mean"),
        "is_tail": _mean(tail_scores["is"]), "fid_tail": _mean(tail_scores["fid"]),
        "consensus": _mean([float(p["final"]["consensus"]) for p in peers.values()]),
        "consensus_tail": _mean(consensus_tail),
        "step_s": _mean([float(p["step_s"]) for p in peers.values() if p.get("step_s") is not None]),
        "sent_mb_per_step": _mean([float(p["sent_mb_per_step"]) for p in peers.values()
                                   if p.get("sent_mb_per_step") is not None]),
        "dropped_rounds": sum(float(p.get("dropped_rounds") or 0) for p in peers.values()),
        "refused": refused, "fallback_warnings": fallbacks, "wall_s": report.get("wall_s"),
        "reference": (report.get("reference") or {}).get("scores"),
    }


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """dtype x seed, then the mean over seeds per dtype."""
    def f(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    cols = ("IS", "FID", f"IS tail ({TAIL_EVALS} evals)", "FID tail", "consensus", f"consensus tail ({TAIL_STEPS} steps)",
            "s/step", "MB sent/step")
    keys = (("is", ".2f"), ("fid", ".1f"), ("is_tail", ".2f"), ("fid_tail", ".1f"), ("consensus", ".4f"),
            ("consensus_tail", ".4f"), ("step_s", ".3f"), ("sent_mb_per_step", ".2f"))
    lines = ["| wire dtype | seed | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['wire_dtype']} | {r['seed']} | " + " | ".join(f(r[k], s) for k, s in keys) + " |")
    for dtype in dict.fromkeys(r["wire_dtype"] for r in rows):
        group = [r for r in rows if r["wire_dtype"] == dtype]
        if len(group) > 1:
            means = [_mean([r[k] for r in group if isinstance(r[k], (int, float))]) for k, _ in keys]
            lines.append(f"| **{dtype}** | mean | " + " | ".join(f(m, s) for m, (_, s) in zip(means, keys)) + " |")
    return "\n".join(lines)


#: scores compared with float32 seed by seed
COMPARED = (("is", "IS"), ("fid", "FID"), ("is_tail", "IS tail"), ("fid_tail", "FID tail"),
            ("consensus_tail", "consensus tail"))


def comparisons(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each narrow dtype against float32, paired by seed: a two-sided paired t-test per score (>= 2 seeds)."""
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from p2pgan.experiments.statistics import paired_test

    base = {r["seed"]: r for r in rows if r["wire_dtype"] == "float32"}
    out = []
    for dtype in dict.fromkeys(r["wire_dtype"] for r in rows if r["wire_dtype"] != "float32"):
        pairs = [(r, base[r["seed"]]) for r in rows if r["wire_dtype"] == dtype and r["seed"] in base]
        for key, label in COMPARED:
            pairs_k = [(a[key], b[key]) for a, b in pairs if isinstance(a[key], float) and isinstance(b[key], float)]
            if len(pairs_k) < 2:
                continue
            test = paired_test([a for a, _ in pairs_k], [b for _, b in pairs_k], alternative="two-sided")
            out.append({"wire_dtype": dtype, "score": key, "label": label, **test})
    return out


def comparison_table(tests: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| wire dtype | score | mean difference vs float32 | t | p | at 5 % |", "|---|---|---|---|---|---|"]
    for t in tests:
        verdict = "**significant**" if t["significant"] else "not significant"
        lines.append(f"| {t['wire_dtype']} | {t['label']} | {t['mean_difference']:+.3g} | {t['t']:.2f} | "
                     f"{t['p']:.2f} | {verdict} |")
    return "\n".join(lines)


def run_one(out: Path, seed: int, dtype: str, steps: int, eval_interval: int) -> None:
    cmd = [sys.executable, "-m", "p2pgan", "harness", *DEMO_ARGS, "--steps", str(steps), "--eval-interval",
           str(eval_interval), "--seed", str(seed), "--wire-dtype", dtype, "--out", str(out)]
    print(" ".join(cmd[1:]), file=sys.stderr, flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"  {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--steps", type=int, default=800, help="steps per peer (the demo's 800)")
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "wire_dtype", help="folder of the harness runs")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "wire_dtype", help="folder of wire_dtype.json")
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for dtype in args.dtypes:
            run = args.runs / f"s{seed}-{dtype}"
            if not (run / "report.json").is_file():
                run_one(run, seed, dtype, args.steps, args.eval_interval)
            row = summarize_run(run)
            if (row["seed"], row["wire_dtype"], row["steps"]) != (seed, dtype, args.steps):
                raise SystemExit(f"{run} holds seed {row['seed']}, {row['wire_dtype']}, {row['steps']} steps; "
                                 "move it away or choose another --runs")
            rows.append(row)
    table = markdown_table(rows)
    tests = comparisons(rows)
    print(table)
    if tests:
        print()
        print(comparison_table(tests))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire_dtype.json").write_text(json.dumps(
        {"demo_args": DEMO_ARGS, "steps": args.steps, "eval_interval": args.eval_interval, "rows": rows,
         "tests": tests, "table": table}, indent=2))
    print(f"JSON: {args.out / 'wire_dtype.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
