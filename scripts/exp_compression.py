#!/usr/bin/env python
"""Compressed gossip: what `mixing.compression` costs the GAN at the same number of steps (issue 18 item 4).

The demo's digits job (scripts/demo.sh: DP-OAdam on a ring, one round per step, the overlap schedule,
WGAN-GP, batch 32 per peer, the digits model's default step sizes and betas, each peer on its own IID
shard, every peer starting from the same point) at M = 4 and M = 8, 3 seeds, once per compression:
``none`` (today's mixing), ``bf16-delta``, ``int8`` and ``topk:0.01`` with CHOCO consensus step 0.05 (the
default, 5 x the fraction; ``--topk-gamma`` for another: on digits 0.1 lets the peers drift apart slowly and 0.3
diverges); other top-k fractions by ``--compressions``, e.g. ``topk:0.05`` (default step 0.1).

The peers run IN ONE PROCESS: ``none`` with :class:`~p2pgan.mixing.inprocess.InProcessMixer` (the
exact matrix form of the mixing), the compressions with :class:`~p2pgan.compression.choco.ChocoMixer`,
which applies the wire path's own operators (:mod:`p2pgan.compression.compressors`: the same ``encode``,
``self_decode`` and ``apply`` that :class:`~p2pgan.compression.copies.OwnCopy` runs before a message goes
out) and the same :func:`~p2pgan.compression.choco.consensus_step`. Identity compression with step 1
equals InProcessMixer bit for bit (tests/test_compression.py), the network mixer with identity
compression equals raw network gossip bit for bit (tests/test_wire_compressed.py), and the network mixer
with int8 equals ChocoMixer with int8 to float32 rounding (tests/test_wire_compressed.py). In process no
message is lost, so ChocoMixer sends no keys after the first round unless ``--key-interval N`` asks for the
keys a network peer sends anyway (its copy in full every ``mixing.key_interval`` steps, 100 by default).

Per run: the peers' mean IS and FID at the end and over the evaluations of the last 20 % of steps
("tail"), the consensus distance ``mean_i ||x_i - mean_j x_j||`` every step (its maximum over the run,
and the same relative to ``||mean_j x_j||``), the bytes one peer sends one neighbour per step relative
to ``none`` (float32). Per compression and M: mean ± standard error over seeds, the ratio of the means to
``none``, whether it is within 5 % of ``none`` and, if not, whether it is worse (the cost) or better, and a
two-sided paired t-test against ``none`` seed by seed, Holm-corrected over all the comparisons of the run.

    python scripts/exp_compression.py --out docs/results/compression     # full form: M = 4, 8; 3 seeds; 800 steps
    python scripts/exp_compression.py --peers 4 --steps 400              # shorter
    python scripts/exp_compression.py --quick                            # short form (CI): seconds

A run whose JSON already exists under ``--runs`` is read, not run again (an interrupted experiment
continues; delete the folder to start over). Writes OUT/compression.json, OUT/compression_M<M>.png (IS,
FID and consensus vs step: mean over seeds, band across seeds) and prints the tables (markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from p2pgan.algorithm import DPOSG  # noqa: E402
from p2pgan.compression.choco import ChocoMixer  # noqa: E402
from p2pgan.compression.operators import make_compressor  # noqa: E402
from p2pgan.compression.spec import canonical, default_consensus_step  # noqa: E402
from p2pgan.errors import P2PGANError  # noqa: E402
from p2pgan.experiments.report import plot_seed_bands, write_json  # noqa: E402
from p2pgan.experiments.statistics import ALPHA, holm, mean_se, paired_test  # noqa: E402
from p2pgan.metrics import Progress  # noqa: E402
from p2pgan.mixing import InProcessMixer, Mixer  # noqa: E402
from p2pgan.topology import make_topology  # noqa: E402
from p2pgan.trainer.catalog import MODEL_DEFAULTS  # noqa: E402
from p2pgan.trainer.data import load_digits, split_indices  # noqa: E402
from p2pgan.trainer.evaluation import make_evaluator  # noqa: E402
from p2pgan.trainer.game import PeerGames, build_game  # noqa: E402

#: the compressions run by default (each at mixing.consensus_step's default for it)
COMPRESSIONS = ("none", "bf16-delta", "int8", "topk:0.01")
#: the demo's job (scripts/demo.sh, a peer config's defaults)
MODEL, LOSS, TOPOLOGY, SCHEDULE, BETAS, BATCH = "digits", "wgan-gp", "ring", "overlap", (0.5, 0.9), 32
#: share of the run, at the end, whose evaluations the tail scores average
TAIL = 0.2
#: the issue's bound: IS and FID within 5 % of uncompressed at the same steps
WITHIN = 0.05
#: scores compared with none, and whether larger is better
SCORES = (("is", "IS"), ("fid", "FID"), ("is_tail", "IS tail"), ("fid_tail", "FID tail"))


def make_mixer(compression: str, gamma: float, peers: int, key_interval: int = 0, rounds: int = 1) -> Mixer:
    """``none`` mixes once per step (the demo's job, the reference); a compression ``rounds`` times."""
    topo = make_topology(TOPOLOGY, peers, rounds=1)
    compressor = make_compressor(compression)
    if compressor is None:
        return InProcessMixer(topo, 1)
    return ChocoMixer(topo, rounds, compressor, gamma, key_interval=key_interval)


def run_one(compression: str, gamma: float, peers: int, seed: int, args: argparse.Namespace,
            data: Any, evaluator: Any) -> dict[str, Any]:
    """Train ``peers`` in-process peers for ``args.steps`` steps; the score curves and the consensus."""
    games = [build_game(MODEL, LOSS, data.subset(idx), batch_size=args.batch, init_seed=seed, seed=seed * 1000 + i)
             for i, idx in enumerate(split_indices(data.y, peers, seed=seed))]
    field = PeerGames(games).field
    lr_g, lr_d = MODEL_DEFAULTS[MODEL].lr_generator, MODEL_DEFAULTS[MODEL].lr_discriminator
    rounds = 1 if compression == "none" else args.rounds
    mixer = make_mixer(compression, gamma, peers, args.key_interval, rounds)
    algo = DPOSG(games[0].point().repeat(peers, 1), mixer, "oadam", games[0].lr_vector(lr_g, lr_d),
                 schedule=SCHEDULE, betas=BETAS)
    dim = games[0].dim
    steps: list[int] = []
    scores: dict[str, list[list[float]]] = {"is": [], "fid": []}
    consensus: list[float] = []
    consensus_rel: list[float] = []

    def evaluate(step: int) -> None:
        steps.append(step)
        z = algo.z
        per_peer = []
        for i, g in enumerate(games):
            g.load_point(z[i:i + 1])
            per_peer.append(evaluator.scores(g.sample(args.eval_samples, seed=seed + 7)))
        for k in scores:
            scores[k].append([float(s[k]) for s in per_peer])

    t0 = time.perf_counter()
    evaluate(0)
    with Progress(args.steps, f"M={peers} {compression} seed {seed}") as bar:
        for k in range(1, args.steps + 1):
            algo.step(field)
            x = algo.x
            mean = x.mean(dim=0, keepdim=True)
            c = float((x - mean).norm(dim=1).mean())
            consensus.append(c)
            consensus_rel.append(c / max(float(mean.norm()), 1e-12))
            if not math.isfinite(c):
                break
            if k % args.eval_every == 0 or k == args.steps:
                evaluate(k)
                bar.update(k, IS=sum(scores["is"][-1]) / peers)
            else:
                bar.update(k)
    # what one peer sent one neighbour per round on average (keys included); float32 for none
    sent = getattr(mixer, "bytes_sent", 0) / max(1, mixer.stats.rounds) or 4 * dim
    return {"compression": compression, "consensus_step": gamma, "key_interval": args.key_interval,
            "rounds": rounds, "peers": peers, "seed": seed,
            "steps": args.steps, "dim": dim, "eval_steps": steps, "scores": scores, "consensus": consensus,
            "consensus_rel": consensus_rel, "bytes_per_round": sent,
            "bytes_vs_none": sent * rounds / (4 * dim),  # per step: none sends one float32 vector
            "seconds": time.perf_counter() - t0}


def per_run(run: Mapping[str, Any]) -> dict[str, float]:
    """One run's numbers: the peers' mean scores at the end and over the tail, the consensus maxima."""
    out: dict[str, float] = {}
    start = (1.0 - TAIL) * run["eval_steps"][-1]
    for k in ("is", "fid"):
        means = [sum(v) / len(v) for v in run["scores"][k]]
        tail = [m for s, m in zip(run["eval_steps"], means) if s >= start - 1e-9 and s > 0]
        out[k], out[f"{k}_tail"] = means[-1], sum(tail) / len(tail)
    cons = run["consensus"]
    out["consensus_max"], out["consensus_end"] = max(cons), cons[-1]
    out["consensus_rel_max"] = max(run["consensus_rel"])
    out["consensus_max_last_half"] = max(cons[len(cons) // 2:])
    out["bytes_vs_none"] = run["bytes_vs_none"]
    return out


def summarize(runs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (per M and compression: mean ± s.e. over seeds, ratio to none, within 5 %) and the tests."""
    rows, tests = [], []
    for peers in dict.fromkeys(r["peers"] for r in runs):
        at_m = [r for r in runs if r["peers"] == peers]
        numbers = {(r["compression"], r["seed"]): per_run(r) for r in at_m}
        base = {seed: v for (c, seed), v in numbers.items() if c == "none"}
        for comp in dict.fromkeys(r["compression"] for r in at_m):
            seeds = sorted(seed for c, seed in numbers if c == comp)
            vals = [numbers[(comp, s)] for s in seeds]
            gamma = next(r["consensus_step"] for r in at_m if r["compression"] == comp)
            row: dict[str, Any] = {"peers": peers, "compression": comp, "consensus_step": gamma, "seeds": len(seeds)}
            for key in [k for k, _ in SCORES] + ["consensus_max", "consensus_rel_max", "consensus_max_last_half",
                                                 "bytes_vs_none"]:
                m, se = mean_se([v[key] for v in vals])
                row[f"{key}_mean"], row[f"{key}_se"] = m, se
            row["seconds_per_run"] = sum(r["seconds"] for r in at_m if r["compression"] == comp) / len(seeds)
            paired = [s for s in seeds if s in base]
            for key, label in SCORES:
                if comp == "none" or not paired:
                    continue
                ref = mean_se([base[s][key] for s in paired])[0]
                mine = mean_se([numbers[(comp, s)][key] for s in paired])[0]
                ratio = mine / ref if ref else math.nan
                row[f"{key}_ratio"] = ratio
                row[f"{key}_within_5pct"] = bool(abs(ratio - 1.0) <= WITHIN)
                # the cost in quality: IS at most 5 % lower, FID at most 5 % higher (better by more is no cost)
                row[f"{key}_no_worse_5pct"] = bool(ratio >= 1.0 - WITHIN if key.startswith("is") else ratio <= 1.0 + WITHIN)
                if len(paired) >= 2:
                    t = paired_test([numbers[(comp, s)][key] for s in paired], [base[s][key] for s in paired],
                                    alternative="two-sided")
                    tests.append({"peers": peers, "compression": comp, "score": label, "ratio": ratio, **t})
            rows.append(row)
    for test, p_holm in zip(tests, holm([float(t["p"]) for t in tests])):
        test["p_holm"] = p_holm
        test["significant_holm"] = bool(p_holm < ALPHA)
    return rows, tests


def markdown(rows: Sequence[Mapping[str, Any]], tests: Sequence[Mapping[str, Any]]) -> str:
    def ms(r: Mapping[str, Any], key: str, spec: str) -> str:
        return f"{format(r[key + '_mean'], spec)} ± {format(r[key + '_se'], spec)}"

    def ratio(r: Mapping[str, Any], key: str) -> str:
        if f"{key}_ratio" not in r:
            return "1" if r["compression"] == "none" else "-"
        if r[f"{key}_within_5pct"]:
            return f"{r[key + '_ratio']:.3f}"
        return f"{r[key + '_ratio']:.3f}" + (" (>5 % better)" if r[f"{key}_no_worse_5pct"] else " **(>5 % worse)**")

    lines = ["| M | compression | gamma | seeds | IS | FID | IS tail | FID tail | IS / none | FID / none | "
             "IS tail / none | FID tail / none | max consensus | max consensus / norm | bytes / none |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['peers']} | {r['compression']} | {r['consensus_step']:g} | {r['seeds']} | "
                     f"{ms(r, 'is', '.2f')} | {ms(r, 'fid', '.1f')} | {ms(r, 'is_tail', '.2f')} | "
                     f"{ms(r, 'fid_tail', '.1f')} | {ratio(r, 'is')} | {ratio(r, 'fid')} | {ratio(r, 'is_tail')} | "
                     f"{ratio(r, 'fid_tail')} | {ms(r, 'consensus_max', '.3f')} | "
                     f"{r['consensus_rel_max_mean']:.4f} | {r['bytes_vs_none_mean']:.3f} |")
    if tests:
        lines += ["", f"Paired two-sided t-tests against none over seeds (alpha {ALPHA}; Holm over all "
                  f"{len(tests)} tests):", "",
                  "| M | compression | score | ratio to none | mean difference | t | p | p (Holm) | at 5 % (Holm) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {t['peers']} | {t['compression']} | {t['score']} | {t['ratio']:.3f} | "
                         f"{t['mean_difference']:+.3g} | {t['t']:.2f} | {t['p']:.3f} | {t['p_holm']:.3f} | "
                         f"{'**significant**' if t['significant_holm'] else 'not significant'} |")
    return "\n".join(lines)


def plot(path: Path, runs: Sequence[Mapping[str, Any]], peers: int, args: argparse.Namespace) -> Path:
    """IS, FID and the consensus distance vs step: per compression, the mean over seeds and the band across
    seeds (dotted: across peers)."""
    mine = [r for r in runs if r["peers"] == peers]
    panels: dict[str, dict[str, list]] = {"IS": {}, "FID": {}, "consensus distance": {}}
    every = max(1, args.steps // 100)
    for comp in dict.fromkeys(r["compression"] for r in mine):
        group = [r for r in mine if r["compression"] == comp]
        keys = group[0].get("key_interval", 0)
        label = comp if comp == "none" else f"{comp} (gamma {group[0]['consensus_step']:g}" + (
            f", a key every {keys} steps)" if keys else ")")
        panels["IS"][label] = [(r["eval_steps"], r["scores"]["is"]) for r in group]
        panels["FID"][label] = [(r["eval_steps"], r["scores"]["fid"]) for r in group]
        n = min(len(r["consensus"]) for r in group)
        xs = list(range(every, n + 1, every))
        panels["consensus distance"][label] = [(xs, [[r["consensus"][x - 1]] for x in xs]) for r in group]
    return plot_seed_bands(path, panels, xlabel="step",
                           title=f"digits, M = {peers} ring, DP-OAdam, batch {args.batch}/peer, "
                                 f"{len({r['seed'] for r in mine})} seeds")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--peers", type=int, nargs="+", default=[4, 8], help="M values (default 4 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--compressions", nargs="+", default=list(COMPRESSIONS),
                   help=f"mixing.compression values (default {' '.join(COMPRESSIONS)}; none is the reference: keep "
                        "it; topk takes any fraction, e.g. topk:0.05)")
    p.add_argument("--steps", type=int, default=800, help="steps per run (the demo's 800)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=1000, help="generated samples per peer per evaluation")
    p.add_argument("--batch", type=int, default=BATCH, help="per-peer batch (the demo's 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (more only on an otherwise idle machine)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "compression", help="one JSON per run")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "compression", help="compression.json and PNGs")
    p.add_argument("--no-run", action="store_true",
                   help="only summarise the runs already under --runs (an experiment cut short)")
    p.add_argument("--topk-gamma", type=float, default=None,
                   help="consensus step of every topk (default: mixing.consensus_step's for its fraction; at 1 %% on "
                        "digits 0.1 lets the consensus distance creep up and 0.3 diverges); runs are filed by it (-g<value>)")
    p.add_argument("--key-interval", type=int, default=0,
                   help="send every copy in full each N-th step, as the daemon does with mixing.key_interval (its "
                        "default is 100); 0 (default): no key after the first round; runs are filed by it (-k<N>)")
    p.add_argument("--rounds", type=int, default=1,
                   help="mixing rounds per step of every compression (mixing.rounds; none keeps 1, the demo's job and "
                        "the reference); runs are filed by it (-r<N>) when above 1")
    p.add_argument("--quick", action="store_true", help="short form: M = 4, 2 seeds, 6 steps, none and int8")
    args = p.parse_args(argv)
    if args.key_interval < 0:
        p.error(f"--key-interval: must be 0 or more, got {args.key_interval}")
    if args.rounds < 1:
        p.error(f"--rounds: must be 1 or more, got {args.rounds}")
    if args.quick:
        args.peers, args.seeds, args.steps, args.eval_every, args.eval_samples, args.batch = [4], [0, 1], 6, 3, 64, 8
        args.compressions = ["none", "int8"]
    try:
        args.compressions = [canonical(c, "--compressions") for c in args.compressions]
    except P2PGANError as exc:
        p.error(str(exc))
    if "identity" in args.compressions:
        p.error("--compressions: identity is none with extra steps (tests/test_compression.py); leave it out")
    if any(m < 2 for m in args.peers):
        p.error(f"--peers: every M must be >= 2, got {args.peers}")
    if args.steps < 1 or args.eval_every < 1 or args.eval_samples < 16 or args.batch < 1:
        p.error("--steps, --eval-every, --batch must be >= 1 and --eval-samples >= 16")
    if args.topk_gamma is not None and not 0 < args.topk_gamma <= 1:
        p.error(f"--topk-gamma: must be in (0, 1], got {args.topk_gamma}")
    args.gammas = {c: args.topk_gamma if c.startswith("topk") and args.topk_gamma is not None
                   else default_consensus_step(c) for c in args.compressions}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        data, evaluator = load_digits(), make_evaluator("digits")
        for peers in args.peers:  # seed by seed, so that a cut-short experiment still has its pairs
            for seed in args.seeds:
                for comp in args.compressions:
                    gamma = args.gammas[comp]
                    tag = f"-g{gamma:g}" if comp.startswith("topk") else ""  # top-k runs at several steps
                    tag += f"-k{args.key_interval}" if args.key_interval and comp != "none" else ""
                    tag += f"-r{args.rounds}" if args.rounds > 1 and comp != "none" else ""
                    path = args.runs / f"M{peers}-{canonical(comp).replace(':', '')}{tag}-s{seed}-{args.steps}.json"
                    if path.is_file():
                        run = json.loads(path.read_text())
                    elif args.no_run:
                        continue
                    else:
                        run = run_one(comp, gamma, peers, seed, args, data, evaluator)
                        write_json(path, run)
                        final = {k: sum(v[-1]) / peers for k, v in run["scores"].items()}
                        print(f"M={peers} {comp} seed {seed}: {run['seconds']:.0f} s, IS {final['is']:.3f}, "
                              f"FID {final['fid']:.2f}", flush=True)
                    runs.append(run)
    except P2PGANError as exc:
        print(f"exp_compression: error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"exp_compression: error: no runs under {args.runs}", file=sys.stderr)
        return 2
    rows, tests = summarize(runs)
    table = markdown(rows, tests)
    figures = [str(plot(args.out / f"compression_M{m}.png", runs, m, args))
               for m in dict.fromkeys(r["peers"] for r in runs)]
    write_json(args.out / "compression.json", {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "job": {"model": MODEL, "loss": LOSS, "topology": TOPOLOGY, "schedule": SCHEDULE, "betas": BETAS,
                "consensus_steps": {c: args.gammas[c] for c in args.compressions}},
        "note": "peers in one process: none = InProcessMixer, others = ChocoMixer (the wire path's compressors)",
        "rows": rows, "tests": tests, "table": table, "figures": figures,
        "runs": [{**per_run(r), "peers": r["peers"], "compression": r["compression"], "seed": r["seed"],
                  "seconds": r["seconds"]} for r in runs],
        "seconds": time.perf_counter() - t0})
    print(table)
    print(f"wrote {args.out / 'compression.json'} and {', '.join(figures)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
