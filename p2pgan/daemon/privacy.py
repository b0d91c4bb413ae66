"""The daemon's privacy composition: the site's game (differentially private or not), its budget, the
privacy figures of the metrics records and the opt-in audit record (:mod:`p2pgan.privacy` does the work)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from p2pgan.daemon.config import PeerConfig

log = logging.getLogger("p2pgan.daemon.peer")


#: steps between two epsilon figures in the step records (a PLD evaluation costs ~0.05-0.3 s)
PRIVACY_RECORD_INTERVAL = 10


def site_game(cfg: PeerConfig, data: Any, seed: int, steps_total: int, device: torch.device) -> tuple[Any, dict]:
    """The game on this site's data: differentially private when ``privacy.mode`` is dp; and what to report."""
    from p2pgan.privacy.site import NO_PRIVACY, plan

    kwargs = {"batch_size": cfg.train.batch_size, "init_seed": cfg.train.init_seed, "seed": seed, "device": device,
              "latent_dim": cfg.train.latent_dim, "width": cfg.train.width}
    if not cfg.privacy.enabled:
        from p2pgan.trainer.game import build_game

        return build_game(cfg.train.model, cfg.train.loss, data, **kwargs), {"mode": "off", "notice": NO_PRIVACY}
    from p2pgan.privacy.game import build_private_game

    # one mechanism per gradient: the steps, plus Algorithm 1's first gradient (or a rejoin's seed gradient)
    p = plan(cfg.privacy, len(data), cfg.train.batch_size, steps_total + 1)
    log.warning("peer %s: %s", cfg.peer.id, p.describe())
    game = build_private_game(cfg.train.model, cfg.train.loss, data, clip=p.clip, noise_multiplier=p.sigma,
                              delta=p.delta, target_epsilon=p.target_epsilon, **kwargs)
    return game, {"mode": "dp", **p.as_dict()}


def audit_recorder(cfg: PeerConfig, game: Any, *, resume: bool) -> Any:
    """The audit record of ``privacy.audit_dir`` (None when unset), with the canary armed if asked for."""
    if cfg.privacy.audit_dir is None:
        return None
    from p2pgan.privacy.audit.record import AuditRecorder

    if cfg.privacy.audit_canary:
        from p2pgan.privacy.audit.canary import canary_vector

        game.canary = canary_vector(game.dim_v, cfg.privacy.clip)
    log.warning("peer %s: privacy audit record in %s (it holds minibatch indices: keep it on this site)",
                cfg.peer.id, cfg.privacy.audit_dir)
    return AuditRecorder(cfg.privacy.audit_dir, game.dim_u, game.dim_v, resume=resume)


def budget_spent(game: Any) -> bool:
    """True when one more private gradient would take this site past its privacy budget."""
    accountant = getattr(game, "accountant", None)
    return accountant is not None and accountant.exhausted(1)


def privacy_record(game: Any, step: int, last: int) -> dict[str, Any]:
    """Epsilon so far and the budget, every :data:`PRIVACY_RECORD_INTERVAL` steps and at ``last``."""
    accountant = getattr(game, "accountant", None)
    if accountant is None:
        return {}
    if step % PRIVACY_RECORD_INTERVAL and step != last and step > 1:
        return {"dp_steps": accountant.steps}
    return accountant.record()
