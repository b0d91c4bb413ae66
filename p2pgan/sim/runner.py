"""Run an algorithm on M virtual peers of a toy problem and measure where it goes.

:func:`simulate` is what ``p2pgan simulate`` calls; tests and benchmarks call it directly. Metrics
(on the evaluated model ``z``, see :attr:`p2pgan.algorithm.DecentralizedAlgorithm.z`):

- ``distance``: ``||mean_i z_i - z*||`` for problems with a known equilibrium ``z*``;
- ``consensus``: ``mean_i ||z_i - mean_j z_j||`` (0 when all peers agree);
- the problem's own metrics of the average model (e.g. ``modes`` and ``high_quality`` for gaussians).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from p2pgan.algorithm import (
    ALGORITHM_NAMES,
    DIRECTION_NAMES,
    SCHEDULES,
    DecentralizedAlgorithm,
    lr_vector,
    make_algorithm,
)
from p2pgan.errors import config_error
from p2pgan.mixing import InProcessMixer, Mixer
from p2pgan.sim.base import Problem, ProblemConfig
from p2pgan.sim.problems import PROBLEM_NAMES, make_problem
from p2pgan.topology import make_topology

#: former ``--algorithm`` names -> what to write instead (as a peer config's retired ``variant: overlap``)
RETIRED_ALGORITHMS = {
    "overlap": "the schedule is its own setting now: write `--algorithm dposg --schedule overlap` "
    "(overlap is already dposg's default)",
}
#: ``--schedule`` when not given, as the daemon's defaults: the paper's overlap for DPOSG on a graph (dp,
#: rand-dp), Algorithm 1's exact schedule for cp; dgda has none
DEFAULT_SCHEDULES: dict[str, str | None] = {"dposg": "overlap", "cp": "exact", "dgda": None}


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One simulation; every field maps to a ``p2pgan simulate`` flag and is validated here.

    ``topology`` / ``rounds`` / ``lr`` / ``optimizer`` left as None take the defaults (ring, 1, the
    problem's). ``cp`` forces the complete graph with one round. ``schedule`` left as None is
    :data:`DEFAULT_SCHEDULES` (see :attr:`effective_schedule`).
    """

    problem: str = "bilinear"
    peers: int = 8
    topology: str | None = None
    rounds: int | None = None
    steps: int = 1000
    lr: float | None = None
    lr_u: float | None = None
    lr_v: float | None = None
    algorithm: str = "dposg"
    schedule: str | None = None  # exact | overlap (DPOSG and cp); default: DEFAULT_SCHEDULES
    optimizer: str | None = None
    seed: int = 0
    dim: int | None = None
    hetero: float = 0.0
    sigma: float = 0.0
    batch: int = 64
    eval_every: int | None = None
    device: str = "cpu"
    compression: str = "none"  # mixing.compression: CHOCO public copies (p2pgan.compression.choco.ChocoMixer)
    consensus_step: float = 1.0  # CHOCO's gamma

    def __post_init__(self) -> None:
        from p2pgan.compression.spec import parse_compression
        from p2pgan.errors import ConfigError

        try:
            parse_compression(self.compression, "--compression")
        except ConfigError as exc:
            raise config_error("--compression", "", str(exc).split(": ", 1)[1]) from None
        if not 0 < self.consensus_step <= 1:
            raise config_error("--consensus-step", "", f"must be in (0, 1], got {self.consensus_step}")
        if self.problem not in PROBLEM_NAMES:
            raise config_error("--problem", "", f"unknown problem {self.problem!r}; allowed: {', '.join(PROBLEM_NAMES)}")
        if self.algorithm in RETIRED_ALGORITHMS:
            raise config_error("--algorithm", "", f"{self.algorithm!r} is no longer an algorithm; "
                               f"{RETIRED_ALGORITHMS[self.algorithm]}")
        if self.algorithm not in ALGORITHM_NAMES:
            raise config_error("--algorithm", "", f"unknown algorithm {self.algorithm!r}; allowed: {', '.join(ALGORITHM_NAMES)}"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise config_error("--schedule", "", f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.schedule is not None and DEFAULT_SCHEDULES[self.algorithm] is None:
            raise config_error("--schedule", "", f"{self.algorithm} has no schedule (it mixes, then steps); "
                               "leave --schedule out")
        if self.optimizer is not None and self.optimizer not in DIRECTION_NAMES:
            raise config_error("--optimizer", "", f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(DIRECTION_NAMES)}"
            )
        if self.algorithm == "cp" and self.topology not in (None, "complete"):
            raise config_error("--topology", "", f"cp is the complete graph (W = J); got {self.topology!r}")
        if self.algorithm == "cp" and self.rounds not in (None, 1):
            raise config_error("--rounds", "", f"cp averages exactly in 1 round; got {self.rounds}")
        if self.rounds is not None and self.rounds < 0:
            raise config_error("--rounds", "", f"must be an integer >= 0, got {self.rounds}")
        if self.steps < 1:
            raise config_error("--steps", "", f"must be an integer >= 1, got {self.steps}")
        for flag, v in (("--lr", self.lr), ("--lr-u", self.lr_u), ("--lr-v", self.lr_v)):
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise config_error(flag, "", f"must be a finite number > 0, got {v}")
        if self.eval_every is not None and self.eval_every < 1:
            raise config_error("--eval-every", "", f"must be an integer >= 1, got {self.eval_every}")

    @property
    def effective_schedule(self) -> str | None:
        """The schedule run: ``schedule`` where given, else :data:`DEFAULT_SCHEDULES`; None for dgda."""
        return self.schedule if self.schedule is not None else DEFAULT_SCHEDULES[self.algorithm]

    def learning_rates(self, problem: Problem) -> tuple[float, float]:
        """(lr_u, lr_v): the flags where given, else ``--lr``, else the problem's defaults."""
        base = self.lr if self.lr is not None else problem.default_lr
        default_v = problem.default_lr_v if self.lr is None and problem.default_lr_v is not None else base
        return (
            self.lr_u if self.lr_u is not None else base,
            self.lr_v if self.lr_v is not None else default_v,
        )

    def problem_config(self) -> ProblemConfig:
        return ProblemConfig(
            peers=self.peers,
            dim=self.dim,
            hetero=self.hetero,
            sigma=self.sigma,
            batch=self.batch,
            seed=self.seed,
            device=self.device,
        )


@dataclasses.dataclass
class Simulation:
    """A built simulation: the problem, the mixer and the algorithm, ready to :meth:`run`."""

    config: SimConfig
    problem: Problem
    mixer: Mixer
    algorithm: DecentralizedAlgorithm
    topology_name: str

    @classmethod
    def build(cls, config: SimConfig) -> Simulation:
        problem = make_problem(config.problem, config.problem_config())
        topo_name = "complete" if config.algorithm == "cp" else (config.topology or "ring")
        rounds = 1 if config.rounds is None else config.rounds
        topology = make_topology(topo_name, config.peers, seed=config.seed, rounds=rounds)
        topology.validate()
        mixer: Mixer = InProcessMixer(topology, rounds)
        if config.compression != "none":
            from p2pgan.compression.choco import ChocoMixer
            from p2pgan.compression.operators import make_compressor

            compressor = make_compressor(config.compression, "--compression")
            assert compressor is not None
            mixer = ChocoMixer(topology, rounds, compressor, config.consensus_step)
        lr_u, lr_v = config.learning_rates(problem)
        lr = lr_u if lr_u == lr_v else lr_vector(problem.dim_u, problem.dim_v, lr_u, lr_v, device=problem.device)
        direction = config.optimizer or problem.default_optimizer
        algo = make_algorithm(config.algorithm, problem.initial(), mixer, direction, lr,
                              schedule=config.effective_schedule or "exact")
        return cls(config, problem, mixer, algo, topo_name)

    def metrics(self) -> dict[str, Any]:
        """Distance to the equilibrium, consensus error and the problem's metrics, now."""
        z = self.algorithm.z
        avg = z.mean(dim=0)
        out: dict[str, Any] = {"step": self.algorithm.steps}
        eq = self.problem.equilibrium()
        out["distance"] = float((avg - eq.to(avg.dtype)).norm()) if eq is not None else None
        out["consensus"] = float((z - avg).norm(dim=1).mean())
        if math.isfinite(out["consensus"]) and (out["distance"] is None or math.isfinite(out["distance"])):
            out.update(self.problem.evaluate(avg))
        return out

    def run(self, progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the configured steps; ``progress(steps_done, last_metrics)`` is called after each step.

        Stops early (``diverged: true``) when the iterates stop being finite.
        """
        cfg = self.config
        lr_u, lr_v = cfg.learning_rates(self.problem)
        every = cfg.eval_every or max(1, cfg.steps // 20)
        history = [self.metrics()]
        diverged = False
        t0 = time.perf_counter()
        for k in range(1, cfg.steps + 1):
            self.algorithm.step(self.problem)
            if k % every == 0 or k == cfg.steps:
                m = self.metrics()
                history.append(m)
                if not math.isfinite(m["consensus"]) or (m["distance"] is not None and not math.isfinite(m["distance"])):
                    diverged = True
            if progress is not None:
                progress(k, history[-1])
            if diverged:
                break
        seconds = time.perf_counter() - t0
        last = history[-1]
        result: dict[str, Any] = {
            "problem": cfg.problem,
            "algorithm": cfg.algorithm,
            "schedule": cfg.effective_schedule,
            "optimizer": cfg.optimizer or self.problem.default_optimizer,
            "topology": self.topology_name,
            "peers": cfg.peers,
            "rounds": self.mixer.rounds,
            "compression": cfg.compression,
            "consensus_step": cfg.consensus_step if cfg.compression != "none" else None,
            "dim": self.problem.dim,
            "lr_u": lr_u,
            "lr_v": lr_v,
            "seed": cfg.seed,
            "steps": self.algorithm.steps,
            "diverged": diverged,
            "seconds": seconds,
            "steps_per_second": self.algorithm.steps / seconds if seconds > 0 else None,
        }
        for key, value in last.items():
            if key != "step":
                result[key] = value if not isinstance(value, float) or math.isfinite(value) else None
        result["history"] = [
            {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in h.items()} for h in history
        ]
        return result


def simulate(config: SimConfig, *, show_progress: bool = False, plot: Path | None = None) -> dict[str, Any]:
    """Build and run one simulation; returns the JSON-ready result (``distance``, ``consensus``, ``history``...).

    ``show_progress`` shows progress with the latest metrics on stderr (a bar on a terminal, status lines
    otherwise); ``plot`` writes a PNG of the
    curves (and, for ``gaussians``, of the average model's samples).
    """
    sim = Simulation.build(config)
    if not show_progress:
        result = sim.run()
    else:
        from p2pgan.metrics import Progress

        with Progress(config.steps, f"{config.algorithm} {config.problem}", stream=sys.stderr) as bar:

            def progress(k: int, m: dict[str, Any]) -> None:
                fields = {key: _short(v) for key, v in m.items() if key != "step"} if m["step"] == k else {}
                bar.update(k, **fields)

            result = sim.run(progress)
    if plot is not None:
        from p2pgan.sim.plot import write_png

        sampler = getattr(sim.problem, "samples", None)
        samples = sampler(sim.algorithm.z.mean(dim=0)) if callable(sampler) and not result["diverged"] else None
        write_png(plot, result, samples)
        result["plot"] = str(plot)
    return result


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
