"""The algorithm layer: DPOSG and its baselines, optimistic directions, the min-max game interface.

Public API (what the trainer, daemon and baselines code against)::

    make_direction(name, **hyperparameters) -> Direction        # "osg" | "oadam" | "oadagrad"
    DPOSG(x0[n, d], mixer, direction, lr, schedule="exact"|"overlap", first_step="gradient"|"zero")
        .step(field) -> StepInfo
    make_algorithm(name, x0, mixer, direction, lr, schedule=)   # "dposg" | "dgda" | "cp"; "exact" | "overlap"
    MinMaxGame (dim_u, dim_v, field(z[n, d]) -> g[n, d]),  lr_vector(dim_u, dim_v, lr_u, lr_v)
    OptimisticOptimizer(params, lr, direction="oadam")          # torch.optim flavour, one process
"""

from __future__ import annotations

from p2pgan.algorithm.directions import DIRECTION_NAMES, OSG, Direction, OAdagrad, OAdam, make_direction
from p2pgan.algorithm.dposg import (
    ALGORITHM_NAMES,
    DGDA,
    DPOSG,
    FIRST_STEPS,
    SCHEDULES,
    DecentralizedAlgorithm,
    StepInfo,
    check_centralized,
    make_algorithm,
)
from p2pgan.algorithm.game import LearningRate, MinMaxGame, check_lr, lr_vector
from p2pgan.algorithm.optimizer import OptimisticOptimizer

__all__ = [
    "ALGORITHM_NAMES",
    "DGDA",
    "DIRECTION_NAMES",
    "DPOSG",
    "FIRST_STEPS",
    "OSG",
    "SCHEDULES",
    "DecentralizedAlgorithm",
    "Direction",
    "LearningRate",
    "MinMaxGame",
    "OAdagrad",
    "OAdam",
    "OptimisticOptimizer",
    "StepInfo",
    "check_centralized",
    "check_lr",
    "lr_vector",
    "make_algorithm",
    "make_direction",
]
