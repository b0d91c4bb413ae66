"""A curious neighbour's attacks on one site, from what that neighbour's seat sees.

The update attack (the strongest known here). Under the overlap schedule a site sends ``z_k`` and then
``z_{k+1} = mix(z_k) - lr (2 d_k - d_{k-1})``; a seat that knows what the site mixed (M = 2, or both ring
neighbours colluding) reads ``r_k = (mix(z_k) - z_{k+1}) / lr = 2 d_k - d_{k-1}`` off two consecutive
messages and unrolls the site's exact directions ``d_k`` (Algorithm 1's start ``d_0 = r_0``). For OAdam,
``m_k - b1 m_{k-1} = (1 - b1) g_k`` gives the gradient up to Adam's per-coordinate scale:
``e_k = d_k (1 - b1^k) - b1 d_{k-1} (1 - b1^(k-1))``. Each candidate image ``x`` is scored per step by
its coefficient when ``e_k`` is regressed on the real-term gradients (at the site's discriminator
``z_k``) of all of the step's candidates: members of step k's minibatch against non-members (images no
peer trained on). The site's fake-data term, from its secret latent noise, is what hides the minibatch.

The discriminator-logit attack: a candidate's mean critic value under the last K discriminators the site
sent; the site's whole shard against the non-members.

The canary test: per step, the projection of ``e_k`` on the public canary direction; whether the canary
was inserted is the ground truth (:func:`p2pgan.privacy.audit.stats.epsilon_lower_bound`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from p2pgan.privacy.mechanism import per_example_gradients

#: candidates per vmap chunk (bounds the memory of per-example gradients: chunk x dim_v floats)
CHUNK = 128
#: members outside the step's minibatch among each step's candidates (the attacker cannot tell them apart)
OTHER_MEMBERS = 64
#: ridge of the update attack's regression, relative to the mean squared gradient norm of the candidates
RIDGE = 1e-3


@dataclasses.dataclass
class Record:
    """A site's audit record, loaded (:mod:`p2pgan.privacy.audit.record`)."""

    sent: np.ndarray  # [T, dim_v] float32: the discriminator part of what it sent at each step
    mixed: np.ndarray  # [T, dim_v]: what it mixed at each step
    steps: list[int]
    batches: list[list[int]]  # each step's minibatch (indices into its shard): the ground truth
    canary: list[bool | None]


def directions(rec: Record, lr_d: float) -> np.ndarray:
    """The site's directions ``d_k`` [T-1, dim_v] read off consecutive messages (overlap schedule)."""
    r = (rec.mixed[:-1].astype(np.float64) - rec.sent[1:].astype(np.float64)) / lr_d
    d = np.empty_like(r)
    for k in range(len(r)):
        d[k] = r[k] if k == 0 else (r[k] + d[k - 1]) / 2
    return d


def gradient_estimates(d: np.ndarray, optimizer: str, beta1: float) -> np.ndarray:
    """``e_k``: the gradient up to the optimizer's per-coordinate scale (OSG: ``d`` itself)."""
    if optimizer != "oadam":
        return d
    e = np.empty_like(d)
    for k in range(len(d)):
        t = k + 1
        e[k] = d[k] * (1 - beta1 ** t) - (beta1 * d[k - 1] * (1 - beta1 ** (t - 1)) if k else 0.0)
    return e


def _load(d: nn.Module, row: np.ndarray) -> None:
    torch.nn.utils.vector_to_parameters(torch.from_numpy(np.ascontiguousarray(row, np.float32)), d.parameters())


def _grads(d: nn.Module, term: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.cat([per_example_gradients(d, term, x[i:i + CHUNK])[0] for i in range(0, len(x), CHUNK)]) \
        if len(x) else torch.zeros(0, sum(p.numel() for p in d.parameters()))


def update_attack(d: nn.Module, term: Callable[[torch.Tensor], torch.Tensor], rec: Record, members: torch.Tensor,
                  non_members: torch.Tensor, *, lr_d: float, optimizer: str, beta1: float,
                  max_steps: int, others: int = OTHER_MEMBERS) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Per-step scores of minibatch members and of non-members; per-step AUCs; the gradient estimates.

    Each step's score of a candidate is its coefficient when the gradient estimate ``e_k`` is regressed
    (ridge) on the real-term gradients of all candidates of the step: the step's minibatch members,
    ``others`` members outside it, and the non-members (a minibatch member's gradient is IN ``e_k``).
    """
    from p2pgan.privacy.audit.stats import auc

    e = gradient_estimates(directions(rec, lr_d), optimizer, beta1)
    pos: list[np.ndarray] = []
    neg: list[np.ndarray] = []
    per_step: list[float] = []
    rng = np.random.default_rng(0)
    for k in range(max(0, len(e) - max_steps), len(e)):
        batch = torch.as_tensor(rec.batches[k], dtype=torch.long)
        if not len(batch):
            continue
        outside = np.setdiff1d(np.arange(len(members)), batch.numpy())
        extra = torch.as_tensor(rng.choice(outside, min(others, len(outside)), replace=False), dtype=torch.long)
        _load(d, rec.sent[k])  # the site's discriminator when it took step k's gradient
        h = _grads(d, term, torch.cat([members[batch], members[extra], non_members])).double()
        gram = h @ h.T
        ridge = RIDGE * float(gram.diagonal().mean())
        coef = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype),
                                  h @ torch.from_numpy(e[k]).double()).numpy()
        p, n = coef[: len(batch)], coef[len(batch) + len(extra):]
        pos.append(p)
        neg.append(n)
        per_step.append(auc(p, n))
    return (np.concatenate(pos) if pos else np.zeros(0), np.concatenate(neg) if neg else np.zeros(0), per_step, e)


def logit_attack(d: nn.Module, rec: Record, members: torch.Tensor, non_members: torch.Tensor,
                 last_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean critic value over the last ``last_k`` discriminators the site sent: members' and non-members'."""
    total_m, total_n = torch.zeros(len(members)), torch.zeros(len(non_members))
    rows = rec.sent[-last_k:]
    with torch.no_grad():
        for row in rows:
            _load(d, row)
            total_m += d(members).reshape(-1)
            total_n += d(non_members).reshape(-1)
    return (total_m / len(rows)).numpy(), (total_n / len(rows)).numpy()


def canary_scores(e: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Per step: the gradient estimate's cosine with the public canary direction."""
    c = canary.astype(np.float64) / np.linalg.norm(canary)
    return (e @ c) / np.maximum(np.linalg.norm(e, axis=1), 1e-30)
