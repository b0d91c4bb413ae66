#!/usr/bin/env python
"""Figure 2 at the paper's scale: CP-OAdam, DP-OAdam and Rand-DP-OAdam with 16 peers, several seeds.

Trains the same GAN with CP-OAdam (complete graph, W = J, all-reduce after each update: exact schedule),
DP-OAdam (fixed ring, 1/3 weights) and Rand-DP-OAdam (a new random permuted ring every round) with the
paper's settings: a FIXED total batch (per-peer batch x M constant), the same learning rate for every
variant, the same initial point, each peer on its own IID shard, one mixing round per step and, for DP
and Rand-DP, the overlap schedule (the paper's Section 5.1). The exact schedule (Algorithm 1, the one
with the proof) runs side by side for DP and Rand-DP. Every setting runs once per seed; a seed fixes
the initial point, the data split and every noise stream, so settings are compared seed by seed.

Reported per setting: the peers' mean score at the end and over the evaluations of the last 20 % of training,
mean +- standard error across seeds, and the spread across peers; the tests: is Rand-DP better than DP
(paired one-sided t-test over seeds, 5 %), and does the schedule change DP or Rand-DP (two-sided).

The peers run IN ONE PROCESS (InProcessMixer, the exact matrix form of the mixing; the network mixers
are tested to give the same numbers), which is what lets M = 16 with several seeds fit 2 CPU cores.

    python scripts/exp_convergence.py                         # full form: M = 16, 3 seeds (hours on 2 cores)
    python scripts/exp_convergence.py --peers 4,8,16          # the same at M = 4, 8 and 16
    python scripts/exp_convergence.py --quick                 # short form (CI): M = 4, 2 seeds, ~1 min
    python scripts/exp_convergence.py --cifar10 /data/cifar-10-batches-py --inception-weights W.pt

Writes OUT/convergence.json (every curve, every peer, every seed; the summary and the tests),
OUT/convergence_<problem>_M<M>.png (mean over seeds, band across seeds, dotted: band across peers)
and OUT/samples_<problem>_M<M>_<setting>.png (seed 0).
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
from p2pgan.experiments.report import format_table, plot_seed_bands, write_json
from p2pgan.experiments.statistics import ALPHA, holm, mean_se, paired_test
from p2pgan.metrics import Progress
from p2pgan.mixing.inprocess import InProcessMixer
from p2pgan.sim.base import ProblemConfig
from p2pgan.sim.gaussians import Gaussians
from p2pgan.sim.problems import make_problem
from p2pgan.topology import make_topology
from p2pgan.trainer.data import Dataset, load_cifar10, load_digits, split_indices
from p2pgan.trainer.evaluation import Evaluator, make_evaluator
from p2pgan.trainer.game import PeerGames, build_game
from p2pgan.trainer.images import save_image_grid, save_points

#: variant -> (label in plots, topology); one mixing round per step for all three, as in the paper
VARIANTS = {"cp": ("CP-OAdam", "complete"), "dp": ("DP-OAdam", "ring"), "rand-dp": ("Rand-DP-OAdam", "random-ring")}
#: the paper's schedule per variant (Section 5.1): CP all-reduces after the update, DP and Rand-DP overlap
PAPER_SCHEDULE = {"cp": "exact", "dp": "overlap", "rand-dp": "overlap"}
#: whether a larger score is better (the direction of the one-sided test)
HIGHER_IS_BETTER = {"is": True, "fid": False, "modes": True, "high_quality": True}
#: share of training, at the end, whose evaluations the tail average covers (x >= (1 - TAIL) * last x)
TAIL = 0.2


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
    return Problem("gaussians", setup, args.gaussian_batch, lr, steps, max(1, steps // args.gaussian_evals), "step",
                   1.0, ("modes", "high_quality"))


def settings(variants: list[str], schedules: list[str]) -> list[tuple[str, str]]:
    """(variant, schedule) pairs to run: CP always exact (W = J, nothing to overlap in the paper), DP and
    Rand-DP with every listed schedule."""
    out = []
    for v in variants:
        for sch in (["exact"] if v == "cp" else schedules):
            out.append((v, sch))
    return out


def label(variant: str, schedule: str) -> str:
    return f"{VARIANTS[variant][0]} ({schedule})"


def run_setting(problem: Problem, variant: str, schedule: str, peers: int, seed: int) -> dict[str, object]:
    """Train ``peers`` in-process peers with one variant and schedule; return the per-peer score curves."""
    _, topo_name = VARIANTS[variant]
    setup = problem.setup(peers, seed)
    lr = problem.lr
    if isinstance(lr, tuple):  # two time scales: the rows are [generator | critic]
        dim_u = setup.x0.shape[1] - setup.dim_v
        lr = lr_vector(dim_u, setup.dim_v, *lr)
    mixer = InProcessMixer(make_topology(topo_name, peers, seed=seed, rounds=1), 1)
    algo = DPOSG(setup.x0, mixer, "oadam", lr, schedule=schedule)
    curves: dict[str, list[list[float]]] = {k: [] for k in problem.score_keys}
    xs: list[float] = []

    def evaluate(step: int) -> None:
        xs.append(step / problem.steps_per_unit)
        per_peer = setup.score(algo.z)
        for k in problem.score_keys:
            curves[k].append([float(s[k]) for s in per_peer])

    t0 = time.perf_counter()
    evaluate(0)
    with Progress(problem.steps, f"{problem.name} M={peers} {variant}/{schedule} seed {seed}") as bar:
        for k in range(1, problem.steps + 1):  # a bar on a terminal, status lines otherwise
            algo.step(setup.field)
            if k % problem.eval_every == 0 or k == problem.steps:
                evaluate(k)
                bar.update(k, **{key: sum(curves[key][-1]) / peers for key in problem.score_keys})
            else:
                bar.update(k)
    return {"x": xs, "scores": curves, "seconds": time.perf_counter() - t0, "z": algo.z, "save": setup.save_samples}


def run_problem(problem: Problem, peers: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every setting and seed of ``problem`` at ``peers``; prints a line per run, writes the PNGs."""
    results: dict[str, dict] = {}
    for variant, schedule in settings(args.variants, args.schedules):
        runs = {}
        for seed in range(args.seed, args.seed + args.seeds):
            r = run_setting(problem, variant, schedule, peers, seed)
            if seed == args.seed:
                r["save"](r["z"], args.out / f"samples_{problem.name}_M{peers}_{variant}_{schedule}.png")
            del r["z"], r["save"]
            runs[str(seed)] = r
            final = {k: sum(v[-1]) / peers for k, v in r["scores"].items()}
            print(f"{problem.name} M={peers} {label(variant, schedule)} seed {seed}: {r['seconds']:.0f} s, final "
                  + ", ".join(f"{k} {v:.3g}" for k, v in final.items()), flush=True)
        results[f"{variant}/{schedule}"] = {"variant": variant, "schedule": schedule, "runs": runs}
    panels = {
        key: {label(res["variant"], res["schedule"]): [(r["x"], r["scores"][key]) for r in res["runs"].values()]
              for res in results.values()}
        for key in problem.score_keys
    }
    plot_seed_bands(args.out / f"convergence_{problem.name}_M{peers}.png", panels, xlabel=problem.x_unit,
                    title=f"{problem.name}: M = {peers}, total batch {problem.total_batch}, lr {problem.lr}, "
                          f"{args.seeds} seeds")
    return results


def per_seed(res: dict, key: str, peers: int) -> tuple[list[float], list[float], list[float]]:
    """Per seed: the peers' mean score at the end, its mean over the evaluations of the last :data:`TAIL`
    of training, and the spread (max - min) across peers at the end."""
    finals, tails, spreads = [], [], []
    for r in res["runs"].values():
        means = [sum(v) / peers for v in r["scores"][key]]
        start = (1.0 - TAIL) * r["x"][-1]
        tail = [m for x, m in zip(r["x"], means) if x >= start - 1e-9]
        finals.append(means[-1])
        tails.append(sum(tail) / len(tail))
        spreads.append(max(r["scores"][key][-1]) - min(r["scores"][key][-1]))
    return finals, tails, spreads


def summarize(name: str, peers: int, results: dict, keys: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """The table rows (mean +- s.e. across seeds) and the paired tests of one problem at one M."""
    rows = []
    for res in results.values():
        row: dict[str, object] = {"problem": name, "peers": peers, "variant": VARIANTS[res["variant"]][0],
                                  "schedule": res["schedule"], "seeds": len(res["runs"])}
        for k in keys:
            finals, tails, spreads = per_seed(res, k, peers)
            for what, values in (("final", finals), ("tail", tails), ("peer spread", spreads)):
                m, se = mean_se(values)
                row[f"{k} {what}"] = f"{m:.4g} ± {se:.2g}"
                row[f"{k} {what} mean"], row[f"{k} {what} se"] = m, se
        row["seconds per run"] = sum(r["seconds"] for r in res["runs"].values()) / len(res["runs"])
        rows.append(row)
    tests = []

    def compare(a: str, b: str, question: str, one_sided: bool) -> None:
        if a not in results or b not in results or len(results[a]["runs"]) < 2:
            return
        for k in keys:
            ta, tb = per_seed(results[a], k, peers)[1], per_seed(results[b], k, peers)[1]
            alternative = ("greater" if HIGHER_IS_BETTER[k] else "less") if one_sided else "two-sided"
            tests.append({"problem": name, "peers": peers, "question": question, "score": f"{k} tail",
                          **paired_test(ta, tb, alternative=alternative)})

    for sch in ("overlap", "exact"):
        compare(f"rand-dp/{sch}", f"dp/{sch}", f"Rand-DP better than DP ({sch})", True)
    for v in ("dp", "rand-dp"):
        compare(f"{v}/overlap", f"{v}/exact", f"{VARIANTS[v][0]}: overlap differs from exact", False)
    compare("dp/overlap", "cp/exact", "DP-OAdam (overlap) differs from CP-OAdam", False)
    return rows, tests


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--peers", default="16", help="comma-separated M values from 2, 4, 8, 16 (default 16, the paper's)")
    p.add_argument("--seeds", type=int, default=3, help="runs per setting, seeds SEED, SEED+1, ... (default 3)")
    p.add_argument("--variants", default="cp,dp,rand-dp", help="comma-separated subset of cp, dp, rand-dp")
    p.add_argument("--schedules", default="overlap,exact",
                   help="schedules for DP and Rand-DP (CP is always exact); default overlap,exact side by side")
    p.add_argument("--epochs", type=float, default=60.0, help="digits / CIFAR epochs (federation passes)")
    p.add_argument("--total-batch", type=int, default=64, help="per-peer batch x peers, constant across M")
    p.add_argument("--lr", type=float, default=1e-3, help="OAdam step size, the same for every variant")
    p.add_argument("--eval-every", type=float, default=2.0, help="epochs between evaluations")
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--gaussian-steps", type=int, default=10000, help="0 skips the 8-Gaussians problem")
    p.add_argument("--gaussian-batch", type=int, default=256, help="total batch of the 8-Gaussians problem")
    p.add_argument("--gaussian-lr-g", type=float, default=Gaussians.default_lr, help="generator step size")
    p.add_argument("--gaussian-lr-d", type=float, default=Gaussians.default_lr_v, help="critic step size")
    p.add_argument("--gaussian-evals", type=int, default=40, help="evaluations per 8-Gaussians run")
    p.add_argument("--skip-images", action="store_true", help="only the 8-Gaussians problem")
    p.add_argument("--cifar10", type=Path, default=None, help="a local CIFAR-10 python-batch folder (instead of digits)")
    p.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights (CIFAR-10 scores)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (more only on an otherwise idle machine)")
    p.add_argument("--out", type=Path, default=Path("runs/convergence"))
    p.add_argument("--quick", action="store_true", help="the short form: M = 4, 2 seeds, a few epochs and steps")
    args = p.parse_args(argv)
    if args.quick:
        args.peers, args.seeds = "4", 2
        args.epochs, args.eval_every, args.eval_samples = 1.0, 0.5, 100
        args.gaussian_steps, args.gaussian_evals = min(args.gaussian_steps, 400), 4
    try:
        args.peers = [int(m) for m in args.peers.split(",") if m.strip()]
    except ValueError:
        p.error(f"--peers: {args.peers!r} must be comma-separated integers from 2, 4, 8, 16")
    if not args.peers or any(m not in (2, 4, 8, 16) for m in args.peers):
        p.error(f"--peers: {args.peers} must be comma-separated values from 2, 4, 8, 16")
    if args.seeds < 1:
        p.error(f"--seeds: must be >= 1, got {args.seeds}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants: unknown {bad}; allowed: {', '.join(VARIANTS)}")
    args.schedules = [v.strip() for v in args.schedules.split(",") if v.strip()]
    if not args.schedules or any(v not in ("exact", "overlap") for v in args.schedules):
        p.error(f"--schedules: {args.schedules} must be a comma-separated subset of overlap, exact")
    for flag, total in (("--total-batch", args.total_batch), ("--gaussian-batch", args.gaussian_batch)):
        for m in args.peers:
            if total % m:
                p.error(f"{flag} {total} must be a multiple of --peers {m}")
    if args.gaussian_evals < 1:
        p.error(f"--gaussian-evals: must be >= 1, got {args.gaussian_evals}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "note": "peers simulated in one process (InProcessMixer); IID shards; OAdam; WGAN-GP; 1 round/step; "
                "first step as in Algorithm 1",
    }
    rows: list[dict[str, object]] = []
    tests: list[dict[str, object]] = []
    t0 = time.perf_counter()
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
            report[problem.name] = {}
            for peers in args.peers:
                results = run_problem(problem, peers, args)
                report[problem.name][str(peers)] = results  # type: ignore[index]
                r, t = summarize(problem.name, peers, results, problem.score_keys)
                rows += r
                tests += t
    except P2PGANError as exc:
        print(f"exp_convergence: error: {exc}", file=sys.stderr)
        return 2
    # the run's tests are one family: Holm's correction for testing them all at once, beside the raw p
    for test, p_holm in zip(tests, holm([float(t["p"]) for t in tests])):
        test["p_holm"] = p_holm
        test["significant_holm"] = bool(p_holm < ALPHA)
    report["summary"], report["tests"], report["seconds"] = rows, tests, time.perf_counter() - t0
    write_json(args.out / "convergence.json", report)
    for name in dict.fromkeys(r["problem"] for r in rows):
        for peers in args.peers:
            mine = [r for r in rows if r["problem"] == name and r["peers"] == peers]
            keys = [c for c in mine[0] if not c.endswith((" mean", " se")) and c not in ("problem", "peers")]
            print(f"\n{name}, M = {peers} (mean ± s.e. over seeds)\n" + format_table(mine, keys))
    if tests:
        cols = ["problem", "peers", "question", "score", "alternative", "n", "mean_difference", "t", "p", "significant",
                "p_holm", "significant_holm"]
        print(f"\npaired t-tests over seeds (alpha {ALPHA}; p_holm: Holm-corrected over these {len(tests)} tests)\n"
              + format_table(tests, cols))
    print(f"wrote {args.out}/convergence.json and PNGs ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
