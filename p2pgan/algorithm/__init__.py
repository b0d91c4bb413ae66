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

# The names below are imported on first use (PEP 562): a torch-free module of this package
# (p2pgan.algorithm.names, read by the configuration) must not pull torch in through this file.
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "ALGORITHM_NAMES": "dposg",
    "DGDA": "dposg",
    "DIRECTION_NAMES": "names",
    "DPOSG": "dposg",
    "DecentralizedAlgorithm": "dposg",
    "Direction": "directions",
    "FIRST_STEPS": "names",
    "LearningRate": "game",
    "MinMaxGame": "game",
    "OAdagrad": "directions",
    "OAdam": "directions",
    "OSG": "directions",
    "OptimisticOptimizer": "optimizer",
    "SCHEDULES": "names",
    "StepInfo": "dposg",
    "check_centralized": "dposg",
    "check_lr": "game",
    "lr_vector": "game",
    "make_algorithm": "dposg",
    "make_direction": "directions",
}

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


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"p2pgan.algorithm.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'p2pgan.algorithm' has no attribute {name!r}")
