""":class:`OptimisticOptimizer`: the single-process optimistic update as a ``torch.optim.Optimizer``.

For users with ``nn.Module`` parameters (one process, no mixing): after the gradients of the current
point are in ``p.grad``, ``step()`` applies ``p <- p - 2 lr d_k + lr d_{k-1}`` with ``d = P(grad)``
(OSG / OAdam / OAdagrad). This is DPOSG with one peer, and Optimistic Adam with ``direction="oadam"``.
The first step is Algorithm 1's (``p_1 = p_0 - lr d_0``, i.e. ``d_{-1} = d_0``) unless
``first_step="zero"`` (``d_{-1} = 0``: ``p_1 = p_0 - 2 lr d_0``).

Each parameter minimises along its own gradient, so put the discriminator's own loss gradient in its
``.grad`` (or set ``maximize=True`` on its param group when ``.grad`` holds ``grad_v f``). Param groups
may have different ``lr`` (and directions) for the generator and the discriminator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from p2pgan.algorithm.directions import Direction, make_direction
from p2pgan.algorithm.dposg import FIRST_STEPS
from p2pgan.algorithm.game import check_lr
from p2pgan.errors import ConfigError


def _group_direction(group: dict[str, Any]) -> Direction:
    name = group["direction"]
    if name == "oadam":
        return make_direction(name, betas=group["betas"], eps=group["eps"])
    if name == "oadagrad":
        return make_direction(name, eps=group["eps"])
    return make_direction(name)


class OptimisticOptimizer(torch.optim.Optimizer):
    """Optimistic gradient steps ``p <- p - lr (2 d_k - d_{k-1})`` with a pluggable direction.

    Args:
        params: parameters or param groups (groups may override ``lr``, ``direction``, ``betas``,
            ``eps``, ``maximize``).
        lr: step size (> 0).
        direction: ``"osg"``, ``"oadam"`` or ``"oadagrad"``.
        betas, eps: OAdam's (and OAdagrad's ``eps``) hyperparameters.
        maximize: ascend instead of descend (for a player whose ``.grad`` is ``grad_v f``).
        first_step: ``"gradient"`` (Algorithm 1's start) or ``"zero"`` (see the module docstring).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        direction: str = "oadam",
        betas: tuple[float, float] = (0.5, 0.9),
        eps: float = 1e-8,
        maximize: bool = False,
        first_step: str = "gradient",
    ) -> None:
        if first_step not in FIRST_STEPS:
            raise ConfigError(
                f"OptimisticOptimizer: unknown first_step {first_step!r}; allowed: {', '.join(FIRST_STEPS)}"
            )
        self.first_step = first_step
        defaults = dict(lr=lr, direction=direction, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"], "OptimisticOptimizer: lr")
        if isinstance(group["lr"], torch.Tensor):
            raise ConfigError("OptimisticOptimizer: lr must be a number per param group, not a tensor")
        _group_direction(group)  # validates the direction name and its hyperparameters

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one optimistic step to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            direction = _group_direction(group)
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("OptimisticOptimizer does not support sparse gradients")
                g = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                fresh = not state
                if fresh:
                    state.update(direction.initial_state())
                    state["d_prev"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                d = direction.update(g, state)
                if fresh and self.first_step == "gradient":
                    state["d_prev"] = d
                p.add_(d, alpha=-2.0 * lr).add_(state["d_prev"], alpha=lr)
                state["d_prev"] = d
        return loss
