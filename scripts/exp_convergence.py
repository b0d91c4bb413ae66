#!/usr/bin/env python
"""Figure 2 analogue: does decentralized training converge like the centralized baseline, per epoch?

Trains the same GAN with CP-OAdam (complete graph, W = J), DP-OAdam (fixed ring, 1/3 weights) and
Rand-DP-OAdam (random permuted ring every round), M peers, a FIXED total batch (per-peer batch x M
constant), the same learning rate and the same initial point, and records every peer's score against
the epoch (one epoch = one pass over the whole dataset by the federation together). Each peer trains on
its own IID shard. Also the 8-Gaussians problem: modes covered and high-quality fraction vs step.

The peers run IN ONE PROCESS (InProcessMixer, the exact matrix form of the mixing; the network mixers
are tested to give the same numbers), which is what makes a run fit the time budget on 2 CPU cores.

    python scripts/exp_convergence.py                   # M = 4, digits + 8 Gaussians, ~15 min on 2 cores
    python scripts/exp_convergence.py --quick           # ~1-2 min smoke run
    python scripts/exp_convergence.py --peers 8 --cifar10 /data/cifar-10-batches-py --inception-weights W.pt

Writes OUT/convergence.json (every curve, every peer), OUT/convergence_digits.png (IS and FID vs epoch
with the min-max band across peers), OUT/convergence_gaussians.png and OUT/samples_<variant>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from p2pgan.algorithm import DPOSG, lr_vector
from p2pgan.errors import P2PGANError
from p2pgan.experiments.report import format_table, plot_variant_bands, write_json, write_markdown
from p2pgan.metrics import Progress
from p2pgan.mixing.inprocess import InProcessMixer
from p2pgan.topology import make_topology
from p2pgan.sim.gaussians import Gaussians
from p2pgan.sim.problems import ProblemConfig, make_problem
from p2pgan.trainer.data import Dataset, load_cifar10, load_digits, split_indices
from p2pgan.trainer.evaluation import Evaluator, make_evaluator
from p2pgan.trainer.game import PeerGames, build_game
from p2pgan.trainer.images import save_image_grid, save_points

#: variant -> (label in plots, topology); one mixing round per step for all three, as in the paper
VARIANTS = {"cp": ("CP-OAdam", "complete"), "dp": ("DP-OAdam", "ring"), "rand-dp": ("Rand-DP-OAdam", "random-ring")}


@dataclasses.dataclass(frozen=True)
class Setup:
    """One variant's run of one problem, ready to train: the rows, their field and how to score them."""

    x0: torch.Tensor  # [M, d], the same initial point on every peer
    field: Callable[[torch.Tensor], torch.Tensor]  # [M, d] -> [M, d], each peer on its own data
    score: Callable[[torch.Tensor], list[dict[str, float]]]  # rows -> one dict of scores per peer
    save_samples: Callable[[torch.Tensor, Path], object]  # rows -> a PNG of peer 0's samples
    dim_v: int  # the critic's share of a row (for two-time-scale step sizes)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One training problem and its schedule: ``setup(peers, seed)`` builds fresh peers for each variant."""

    name: str
    setup: Callable[[int, int], Setup]
    total_batch: int
    lr: float | tuple[float, float]  # one step size, or (generator, critic)
    steps: int
    eval_every: int  # steps
    x_unit: str  # "epoch" or "step"
    steps_per_unit: float
    score_keys: tuple[str, ...]
    reference: dict[str, float] | None = None  # the evaluator's scores of real data no peer trains on
    reference_label: str = "real data"


def image_problem(name: str, data: Dataset, model: str, evaluator: Evaluator, args: argparse.Namespace) -> Problem:
    """A GAN on images: one :class:`GANGame` per peer on its IID shard, batch ``total / M``."""

    def setup(peers: int, seed: int) -> Setup:
        games = [
            build_game(model, "wgan-gp", data.subset(idx), batch_size=args.total_batch // peers,
                       init_seed=seed, seed=seed * 1000 + i)
            for i, idx in enumerate(split_indices(data.y, peers, seed=seed))
        ]

        def score(z: torch.Tensor) -> list[dict[str, float]]:
            out = []
            for i, g in enumerate(games):
                g.load_point(z[i : i + 1])
                out.append(evaluator.scores(g.sample(args.eval_samples, seed=seed + 7)))
            return out

        def save(z: torch.Tensor, path: Path) -> object:
            games[0].load_point(z[:1])
            return save_image_grid(games[0].sample(64, seed=1), path)

        return Setup(games[0].point().repeat(peers, 1), PeerGames(games).field, score, save, games[0].dim_v)

    per_epoch = len(data) / args.total_batch
    held_out = getattr(evaluator, "held_out", None)  # the digits classifier's split that it never trained on
    real = held_out.tensor() if held_out is not None else data.tensor()[: args.eval_samples]
    return Problem(name, setup, args.total_batch, args.lr, round(args.epochs * per_epoch),
                   max(1, round(args.eval_every * per_epoch)), "epoch", per_epoch, ("is", "fid"),
                   reference=evaluator.scores(real), reference_label="held-out real digits" if held_out is not None
                   else "real images")


def gaussians_problem(args: argparse.Namespace) -> Problem:
    """8 Gaussians with the simulator's batched MLPs (all peers in one batched pass), batch ``total / M``."""

    def setup(peers: int, seed: int) -> Setup:
        sim = make_problem("gaussians", ProblemConfig(peers=peers, batch=args.gaussian_batch // peers, seed=seed))

        def score(z: torch.Tensor) -> list[dict[str, float]]:
            return [sim.evaluate(z[i]) for i in range(peers)]

        def save(z: torch.Tensor, path: Path) -> object:
            return save_points(sim.samples(z[0]), path, reference=sim.centres.cpu().numpy())

        return Setup(sim.initial(), sim.field, score, save, sim.dim_v)

    steps = args.gaussian_steps
    lr = (args.gaussian_lr_g, args.gaussian_lr_d)
    return Problem("gaussians", setup, args.gaussian_batch, lr, steps, max(1, steps // 40), "step",
                   1.0, ("modes", "high_quality"))


def run_variant(problem: Problem, variant: str, peers: int, seed: int, out: Path) -> dict[str, object]:
    """Train ``peers`` in-process peers with one variant; return the per-peer score curves."""
    _, topo_name = VARIANTS[variant]
    setup = problem.setup(peers, seed)
    lr = problem.lr
    if isinstance(lr, tuple):  # two time scales: the rows are [generator | critic]
        dim_u = setup.x0.shape[1] - setup.dim_v
        lr = lr_vector(dim_u, setup.dim_v, *lr)
    algo = DPOSG(setup.x0, InProcessMixer(make_topology(topo_name, peers, seed=seed), 1), "oadam", lr)
    curves: dict[str, list[list[float]]] = {k: [] for k in problem.score_keys}
    xs: list[float] = []

    def evaluate(step: int) -> None:
        xs.append(step / problem.steps_per_unit)
        per_peer = setup.score(algo.z)
        for k in problem.score_keys:
            curves[k].append([float(s[k]) for s in per_peer])

    t0 = time.perf_counter()
    evaluate(0)
    with Progress(problem.steps, f"{problem.name} {variant}") as bar:  # status lines when not on a terminal
        for k in range(1, problem.steps + 1):
            algo.step(setup.field)
            if k % problem.eval_every == 0 or k == problem.steps:
                evaluate(k)
                bar.update(k, **{key: sum(curves[key][-1]) / peers for key in problem.score_keys})
            else:
                bar.update(k)
    seconds = time.perf_counter() - t0
    setup.save_samples(algo.z, out / f"samples_{problem.name}_{variant}.png")
    return {problem.x_unit: xs, "scores": curves, "seconds": seconds}


def band_series(xs: list[float], per_peer: list[list[float]]) -> dict[str, list[tuple[float, float]]]:
    peers = len(per_peer[0])
    return {f"peer{i}": [(x, v[i]) for x, v in zip(xs, per_peer)] for i in range(peers)}


def run_problem(problem: Problem, args: argparse.Namespace) -> dict[str, dict]:
    """Every variant on ``problem``; prints a line per variant and writes the comparison PNG."""
    results: dict[str, dict] = {}
    for variant in args.variants:
        r = run_variant(problem, variant, args.peers, args.seed, args.out)
        results[variant] = r
        final = {k: sum(v[-1]) / args.peers for k, v in r["scores"].items()}
        print(f"{problem.name} {VARIANTS[variant][0]}: {r['seconds']:.0f} s, final mean "
              + ", ".join(f"{k} {v:.3g}" for k, v in final.items()), flush=True)
    panels = {
        key: {VARIANTS[v][0]: band_series(results[v][problem.x_unit], results[v]["scores"][key]) for v in args.variants}
        for key in problem.score_keys
    }
    plot_variant_bands(args.out / f"convergence_{problem.name}.png", panels, xlabel=problem.x_unit,
                       title=f"{problem.name}: {args.peers} peers, total batch {problem.total_batch}, lr {problem.lr}",
                       reference=problem.reference, reference_label=problem.reference_label)
    return results


def summary_rows(name: str, results: dict, keys: tuple[str, ...], peers: int) -> list[dict[str, object]]:
    rows = []
    for variant, r in results.items():
        row: dict[str, object] = {"problem": name, "variant": VARIANTS[variant][0]}
        for k in keys:
            means = [sum(v) / peers for v in r["scores"][k]]
            tail = means[-max(1, len(means) // 5):]  # last fifth of the evaluations: less noisy than the last one
            row[f"{k} final"] = means[-1]
            row[f"{k} last-20% mean"] = sum(tail) / len(tail)
            row[f"{k} peer spread"] = max(r["scores"][k][-1]) - min(r["scores"][k][-1])
        row["seconds"] = r["seconds"]
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--peers", type=int, default=4, choices=(2, 4, 8, 16))
    p.add_argument("--variants", default="cp,dp,rand-dp", help="comma-separated subset of cp, dp, rand-dp")
    p.add_argument("--epochs", type=float, default=60.0, help="digits / CIFAR epochs (federation passes)")
    p.add_argument("--total-batch", type=int, default=64, help="per-peer batch x peers, constant across M")
    p.add_argument("--lr", type=float, default=1e-3, help="OAdam step size, the same for every variant")
    p.add_argument("--eval-every", type=float, default=2.0, help="epochs between evaluations")
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--gaussian-steps", type=int, default=10000, help="0 skips the 8-Gaussians problem")
    p.add_argument("--gaussian-batch", type=int, default=256, help="total batch of the 8-Gaussians problem")
    p.add_argument("--gaussian-lr-g", type=float, default=Gaussians.default_lr, help="generator step size")
    p.add_argument("--gaussian-lr-d", type=float, default=Gaussians.default_lr_v, help="critic step size")
    p.add_argument("--skip-images", action="store_true", help="only the 8-Gaussians problem")
    p.add_argument("--cifar10", type=Path, default=None, help="a local CIFAR-10 python-batch folder (instead of digits)")
    p.add_argument("--inception-weights", type=Path, default=None, help="local FID Inception weights pt_inception-2015-12-05-6726825d.pth (standard IS / FID)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (more only on an otherwise idle machine)")
    p.add_argument("--out", type=Path, default=Path("runs/convergence"))
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run (few epochs and steps)")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {bad}; allowed: {', '.join(VARIANTS)}")
    for flag, total in (("--total-batch", args.total_batch), ("--gaussian-batch", args.gaussian_batch)):
        if total % args.peers:
            p.error(f"{flag} {total} must be a multiple of --peers {args.peers}")
    if args.quick:
        args.epochs, args.eval_every, args.eval_samples = 4.0, 1.0, 200
        args.gaussian_steps = min(args.gaussian_steps, 1500)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": "peers simulated in one process (InProcessMixer); IID shards; OAdam; WGAN-GP; 1 round/step",
    }
    rows: list[dict[str, object]] = []
    try:
        problems = []
        if not args.skip_images:
            if args.cifar10 is not None:
                if args.inception_weights is None:
                    raise P2PGANError("--cifar10 needs --inception-weights (a local file; nothing is downloaded)")
                data = load_cifar10(args.cifar10)
                evaluator = make_evaluator("inception", inception_weights=args.inception_weights, reference=data)
                problems.append(image_problem("cifar10", data, "dcgan32", evaluator, args))
            else:
                problems.append(image_problem("digits", load_digits(), "digits", make_evaluator("digits"), args))
        if args.gaussian_steps > 0:
            problems.append(gaussians_problem(args))
        for problem in problems:
            results = run_problem(problem, args)
            report[problem.name] = results
            if problem.reference:
                report[f"{problem.name}_reference"] = {"label": problem.reference_label, "scores": problem.reference}
            rows += summary_rows(problem.name, results, problem.score_keys, args.peers)
    except P2PGANError as exc:
        print(f"exp_convergence: error: {exc}", file=sys.stderr)
        return 2
    report["summary"] = rows
    write_json(args.out / "convergence.json", report)
    for name in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == name]
        keys = [k for k in mine[0] if k not in ("problem", "variant", "seconds")]
        print(f"\n{name} ({args.peers} peers)\n" + format_table(mine, ["variant", *keys, "seconds"]))
    sections = []
    for name in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == name]
        keys = [k for k in mine[0] if k not in ("problem", "variant", "seconds")]
        ref = report.get(f"{name}_reference")
        note = (f"\n\nReal data ({ref['label']}), same evaluator: " + ", ".join(f"{k} {v:.3g}" for k, v in
                ref["scores"].items()) + " (dashed in the figure).") if isinstance(ref, dict) else ""
        sections.append((f"{name}, {args.peers} peers", format_table(mine, ["variant", *keys, "seconds"]) + note))
    pictures = sorted(p.name for p in args.out.glob("convergence_*.png")) + sorted(
        p.name for p in args.out.glob("samples_*.png"))
    page = write_markdown(args.out / "report.md", "Convergence of CP-OAdam, DP-OAdam and Rand-DP-OAdam",
                          [f"Settings: {report['note']}; variants {', '.join(args.variants)}; "
                           f"{args.epochs:g} epochs; seed {args.seed}. Numbers: convergence.json."], sections, pictures)
    print(f"wrote {page} (tables, real-data reference, figures), {args.out}/convergence.json and PNGs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
