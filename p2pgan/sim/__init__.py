"""The in-process simulator: toy min-max problems on M virtual peers (``p2pgan simulate``)."""

from __future__ import annotations

from p2pgan.sim.base import Problem, ProblemConfig
from p2pgan.sim.problems import PROBLEM_NAMES, Bilinear, LinearWGAN, make_problem
from p2pgan.sim.runner import SimConfig, Simulation, simulate

__all__ = [
    "PROBLEM_NAMES",
    "Bilinear",
    "LinearWGAN",
    "Problem",
    "ProblemConfig",
    "SimConfig",
    "Simulation",
    "make_problem",
    "simulate",
]
