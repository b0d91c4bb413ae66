"""The peer daemon's run loop: config -> game on private data -> mixer -> DPOSG -> checkpoints and metrics.

One iteration is one DPOSG step (:class:`p2pgan.algorithm.DPOSG`): t mixing rounds with the neighbours,
one stochastic gradient of the GAN game on a minibatch of THIS peer's data, one update. Only the
parameter vector ever goes to the mixer; the dataset is read from ``data.path`` and nothing else.

Per step one ``step`` metrics record (losses, gradient norm, consensus distance, bytes, compute and
communication seconds; ``consensus`` is ``||x_i - mix(x)_i|| / (1 - w_ii)``, which for one round is
exactly the distance from this peer's parameters to the weighted average of its neighbours'); every ``evaluation.interval`` steps an ``eval`` record with scores and a PNG
grid of samples; every ``checkpoint.interval`` steps and at shutdown an atomic checkpoint holding
everything a step needs, so ``--resume`` continues bit-for-bit (a write a full or read-only disk refuses
is retried with backoff while training goes on, and ``--resume`` skips a damaged newest checkpoint:
:mod:`p2pgan.daemon.checkpoints`).

Elastic membership (gRPC backend; DESIGN.md section 5, :mod:`p2pgan.membership`):

- start-up: when the members that answer Hello agree (:mod:`p2pgan.membership.steps`: an order statistic
  no single member can move) that the federation trains ahead of us, this peer (restarted, or a late
  joiner) fetches the state from several of them and adopts what enough of them agree on
  (:mod:`p2pgan.daemon.transfer`; its own checkpoint is the fallback) at the agreed step. When nobody
  trains yet (a fresh start, or every peer restarted with ``--resume``) all start at the agreed step of
  the members' checkpoints, so the federation continues from one consistent step;
- every step boundary: pending FetchState requests of other members are answered with a snapshot; if
  the last step found this peer out of sync (a neighbour had moved past a round without it), it skips
  ahead to the federation's agreed step, fetching the state first when it is more than
  :data:`p2pgan.membership.view.TRANSFER_LAG_STEPS` behind.

SIGTERM / SIGINT / SIGHUP: the current step finishes (a neighbour that is gone costs at most one round
deadline), the neighbours are told that this peer leaves (they stop waiting for it at once), a
checkpoint is written, the mixer closes (streams, mDNS) and the daemon exits 0. A second signal
abandons the step at once, keeping the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from p2pgan.algorithm.guard import FiniteGuard
from p2pgan.checkpoint import FolderClaim, LoadedCheckpoint, capture_rng_state, restore_rng_state
from p2pgan.daemon import elastic
from p2pgan.daemon.checkpoints import CheckpointKeeper, open_checkpoints
from p2pgan.daemon.privacy import audit_recorder, budget_spent, privacy_record, site_game
from p2pgan.daemon.config import PeerConfig
from p2pgan.daemon.signals import StopBeforeTraining, StopSignals
from p2pgan.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: format version of the daemon's checkpoint state (bump when its keys change)
CHECKPOINT_FORMAT = 1
#: fixed noise seed of the sample grids, so grids of different steps and peers are comparable
SAMPLE_SEED = 1234
#: number of Gaussians samples drawn by a peer whose private data is the synthetic 8-Gaussians set
GAUSSIANS_SAMPLES = 10_000


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but torch sees no CUDA device here; use auto or cpu")
    return torch.device(name)


def load_private_data(cfg: PeerConfig, seed: int) -> Any:
    """This peer's own dataset, from ``data.path`` only (or the built-in digits / Gaussians drawn with ``seed``)."""
    from p2pgan.trainer.data import load_dataset

    d = cfg.data
    return load_dataset(d.format, d.path, image_size=d.image_size, channels=d.channels, n=GAUSSIANS_SAMPLES,
                        seed=seed)


def make_peer_evaluator(cfg: PeerConfig, data: Any, device: torch.device) -> Any | None:
    """The evaluator for this peer's samples (``evaluation.kind``; ``auto`` picks by sample shape)."""
    from p2pgan.trainer.evaluation import make_evaluator

    kind = cfg.evaluation.kind
    if kind == "auto":
        if data.kind == "points":
            kind = "gaussians"
        elif data.sample_shape == (1, 8, 8):
            kind = "digits"
        elif cfg.evaluation.inception_weights is not None:
            kind = "inception"
        else:
            kind = "none"
    if kind == "none":
        return None
    return make_evaluator(kind, cache_dir=cfg.evaluation.cache_dir, inception_weights=cfg.evaluation.inception_weights,
                          reference=data, device=device)


def total_steps(cfg: PeerConfig, shard_size: int) -> int:
    """``train.steps``, or ``train.epochs`` over this peer's shard converted to steps (rounded up)."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    epochs = float(cfg.train.epochs or 0.0)  # the config guarantees steps or epochs
    return max(1, math.ceil(epochs * shard_size / cfg.train.batch_size))


@dataclasses.dataclass
class _Run:
    """The pieces of one running peer, so that checkpoints and evaluations see one consistent view."""

    cfg: PeerConfig
    game: Any
    algo: Any
    mixer: Any
    digest: str
    keeper: CheckpointKeeper
    secret_seed: int | None = None  # the private seed drawn from the OS (None when train.seed is set)
    recorder: Any = None  # the audit record (privacy.audit_dir), off by default

    def __post_init__(self) -> None:
        self.guard = FiniteGuard(self.algo)  # a non-finite step is rolled back (p2pgan.algorithm.guard)
        self.grid_failed = False  # a sample grid could not be written (said once)

    def state(self) -> dict[str, Any]:
        """Everything a step needs: both sequences, the previous direction, optimizer moments, step,
        RNG states (the game's private streams and the global ones), membership."""
        return {
            "format": CHECKPOINT_FORMAT,
            "peer": self.cfg.peer.id,
            "federation": self.cfg.peer.federation,
            "layout_digest": self.digest,
            "schedule": self.cfg.mixing.schedule,
            "optimizer": self.cfg.train.optimizer,
            "step": self.algo.steps,
            "algorithm": self.algo.state_dict(),
            "game": self.game.state_dict(),
            "rng": capture_rng_state(),
            "membership": list(getattr(self.mixer, "members", ())),
            **({"secret_seed": self.secret_seed} if self.secret_seed is not None else {}),
        }

    def save(self) -> Path | None:
        """Checkpoint now; returns the newest good checkpoint. A non-finite state is refused and a write the
        disk refuses is retried later (:class:`CheckpointKeeper`): the last good checkpoint is kept."""
        return self.keeper.save(self.algo.steps, self.state())

    def restore(self, loaded: LoadedCheckpoint) -> None:
        st, where = loaded.state, str(loaded.path)
        expected = {"format": CHECKPOINT_FORMAT, "peer": self.cfg.peer.id, "federation": self.cfg.peer.federation,
                    "layout_digest": self.digest, "schedule": self.cfg.mixing.schedule,
                    "optimizer": self.cfg.train.optimizer}
        for key, want in expected.items():
            if st.get(key) != want:
                raise CheckpointError(
                    f"{where}: written for {key} = {st.get(key)!r}, this run has {want!r}; "
                    f"resume with the config that wrote it, or start in a new checkpoint.dir"
                )
        dp_written, dp_now = "accountant" in (st.get("game") or {}), self.cfg.privacy.enabled
        if dp_written and not dp_now:
            raise CheckpointError(f"{where}: written with privacy.mode: dp, this run has privacy off; resume with "
                                  "the privacy section that wrote it, or start in a new checkpoint.dir")
        try:
            self.algo.load_state_dict(st["algorithm"])
            self.game.load_state_dict(st["game"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: does not fit this run ({exc})") from None
        restore_rng_state(st["rng"])
        members = list(getattr(self.mixer, "members", ()))
        if st.get("membership") and members and list(st["membership"]) != members:
            log.warning("membership changed since the checkpoint: %s -> %s", st["membership"], members)


def run_peer(cfg: PeerConfig, *, resume: bool = False) -> int:
    """Run the daemon until ``train.steps`` (or epochs) are done or a signal arrives; returns 0."""
    with StopSignals() as stop, FolderClaim(cfg.checkpoint.dir):  # checked, locked: one daemon per folder
        try:
            return _run_peer(cfg, resume, stop)
        except StopBeforeTraining:
            log.warning("%s before training started: nothing new to checkpoint, exiting", stop.received)
            return 0


def _run_peer(cfg: PeerConfig, resume: bool, stop: StopSignals) -> int:
    from p2pgan.algorithm import DPOSG
    from p2pgan.daemon.mixer import make_mixer
    from p2pgan.metrics import MetricsWriter, StatusLine
    from p2pgan.privacy.randomness import site_seed

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    checkpoints, loaded = open_checkpoints(cfg, resume)
    seed, seed_source = site_seed(cfg.train.seed, loaded.state if loaded is not None else None)
    data = load_private_data(cfg, seed)
    shard_size = len(data)
    steps_total = total_steps(cfg, shard_size)
    game, privacy = site_game(cfg, data, seed, steps_total, device)
    evaluator = make_peer_evaluator(cfg, data, device)
    digest = game.layout_digest()
    lr = game.lr_vector(cfg.train.lr_generator, cfg.train.lr_discriminator).to(device)
    direction_kwargs = {"betas": cfg.train.betas} if cfg.train.optimizer == "oadam" else {}
    status = StatusLine(logging.getLogger("p2pgan.daemon.status"), f"peer {cfg.peer.id}: step",
                        steps_total, cfg.metrics.status_interval_s)

    start_step = int(loaded.state.get("step", 0)) if loaded is not None else 0
    with make_mixer(cfg, game.dim, digest, start_step=start_step) as mixer, MetricsWriter(
        cfg.metrics.path, cfg.peer.id, prometheus_port=cfg.metrics.prometheus_port,
        prometheus_addr=cfg.metrics.prometheus_addr,
    ) as metrics:
        algo = DPOSG(game.point().to(device), mixer, cfg.train.optimizer, lr, schedule=cfg.mixing.schedule,
                     first_step=cfg.mixing.first_step, **direction_kwargs)
        keeper = CheckpointKeeper(checkpoints, emit=metrics.write, on_change=_health_reporter(mixer))
        run = _Run(cfg, game, algo, mixer, digest, keeper, secret_seed=seed if seed_source != "config" else None)
        if loaded is not None:
            run.restore(loaded)
            keeper.last_good, keeper.last_good_step = loaded.path, loaded.step
            log.warning("resumed from %s at step %d", loaded.path, algo.steps)
        run.recorder = audit_recorder(cfg, game, resume=loaded is not None)
        membership = getattr(mixer, "membership", None)
        board = getattr(mixer, "board", None)
        events = elastic.MemberEvents(mixer)
        elastic.start_position(cfg, algo, game, mixer, loaded is not None, steps_total, metrics.write)
        if membership is not None:
            membership.step, membership.training = algo.steps, True
        stop.training = True  # from here on a signal finishes the step and checkpoints
        # what exists now lives as long as the process (torch's and grpc's modules, the model): out of the
        # collector's reach, so the collections that the rounds' short-lived objects set off on gRPC's threads
        # stop rescanning it (a tenth of a compressed round's CPU in bench_wan's profile)
        gc.freeze()
        metrics.write({
            "type": "start", "step": algo.steps, "epoch": game.epoch, "pid": os.getpid(), "shard_size": shard_size,
            "dim": game.dim,
            "total_steps": steps_total, "members": list(getattr(mixer, "members", ())),
            "rank": getattr(mixer, "rank", None), "port": getattr(mixer, "port", None),
            "variant": cfg.mixing.variant, "topology": cfg.mixing.topology, "rounds": cfg.mixing.rounds,
            "resumed_from": str(loaded.path) if loaded is not None else None,
            "absent": sorted(membership.absent()) if membership is not None else [],
            "privacy": privacy, "seed_source": seed_source,
        })
        if privacy.get("mode") == "off":  # said once the federation formed (a config mistake stays one line)
            log.warning("peer %s: %s", cfg.peer.id, privacy["notice"])
        status.logger.info(
            "peer %s: rank %s of %s %s, port %s, %s over %s with t=%d; %d parameters, %d private samples; "
            "metrics %s, checkpoints %s", cfg.peer.id, getattr(mixer, "rank", "?"), mixer.size,
            list(getattr(mixer, "members", ())), getattr(mixer, "port", "?"), cfg.mixing.variant, cfg.mixing.topology,
            cfg.mixing.rounds, game.dim, shard_size, cfg.metrics.path, cfg.checkpoint.dir,
        )
        reason = "done"
        evaluated_at = -1
        try:
            while algo.steps < steps_total:
                if stop.is_set():
                    reason = f"signal {stop.received}"
                    break
                if budget_spent(game):
                    reason = "privacy budget"
                    break
                if board is not None:
                    board.serve(lambda: elastic.snapshot(cfg, algo), algo.steps)
                record = {**_one_step(run, device), **privacy_record(game, algo.steps, steps_total)}
                for event in events.drain():
                    metrics.write(event)
                if membership is not None:
                    record["absent"] = len(membership.absent())
                metrics.step(**record)
                status.update(algo.steps, loss_d=record["loss_d"], loss_g=record["loss_g"],
                              consensus=record["consensus"], sent_mb=record["bytes_sent"] / 1e6,
                              **({"absent": record["absent"]} if record.get("absent") else {}))
                if keeper.due(algo.steps % cfg.checkpoint.interval == 0):
                    run.save()
                if cfg.evaluation.interval and algo.steps % cfg.evaluation.interval == 0:
                    status.notes = metrics.evaluation(**_evaluate(run, evaluator))["scores"]  # on later status lines
                    evaluated_at = algo.steps
                elastic.catch_up(cfg, algo, game, mixer, steps_total, metrics.write)
        finally:
            if run.recorder is not None:
                run.recorder.close()
            if hasattr(mixer, "leave"):
                mixer.leave(reason)  # before the checkpoint: nobody waits a deadline for us meanwhile
        if reason in ("done", "privacy budget") and evaluated_at != algo.steps:
            metrics.evaluation(**_evaluate(run, evaluator))
        path = run.save()
        if keeper.failing:
            log.warning("exiting with the last good checkpoint %s: checkpoints since step %s could not be written (%s)",
                        path, keeper.failing_since, keeper.error)
        status.update(algo.steps, force=True, end=reason)
        final = privacy_record(game, algo.steps, algo.steps)
        metrics.write({"type": "end", "step": algo.steps, "epoch": game.epoch, "reason": reason,
                       "checkpoint": str(path) if path else None, "checkpoint_failing": keeper.failing, **final})
        if reason == "privacy budget":
            log.warning("peer %s: privacy budget reached at step %d (epsilon %.4g of %.4g at delta %g after %d "
                        "private steps): left the federation, checkpoint %s", cfg.peer.id, algo.steps,
                        final["epsilon"], final["epsilon_budget"], final["delta"], final["dp_steps"], path)
    return 0


def _health_reporter(mixer: Any) -> Any:
    """``on_change(failing)`` for the keeper: the health service's checkpoint component (gRPC mixer only)."""
    health = getattr(mixer, "health", None)
    if health is None:
        return None
    from p2pgan.wire.health import CHECKPOINT_SERVICE

    return lambda failing: health.set_component(CHECKPOINT_SERVICE, not failing)


def _one_step(run: _Run, device: torch.device) -> dict[str, Any]:
    """One DPOSG step; returns the ``step`` metrics record."""
    algo, mixer, game = run.algo, run.mixer, run.game
    exact = algo.schedule == "exact"
    before = (algo.x if exact else algo.z).clone()
    d_before = algo.d_prev.clone()
    start = time.perf_counter()
    with run.guard:
        info = algo.step(game)
    wall = time.perf_counter() - start
    if algo.steps == 1 and algo.first_step == "gradient":
        d_before = info.direction  # Algorithm 1's start: the first overlap step used d_{-1} = d_0
    # the mixed point this step used: exact: Xbar = X_k + lr d_k; overlap: mix(z_k) = z_{k+1} + lr (2 d_k - d_{k-1})
    if exact:
        mixed = algo.x + algo.lr * info.direction
    else:
        mixed = algo.z + algo.lr * (2 * info.direction - d_before)
    if run.recorder is not None:
        run.recorder.write(algo.steps, before, mixed, game.sampler.last_indices, getattr(game, "last_canary", None))
    w_self = _self_weight(mixer, algo.steps - 1)
    moved = float((before - mixed).double().norm())
    consensus = moved / (1.0 - w_self) if w_self < 1.0 else 0.0
    stats = mixer.stats
    last = game.last
    return {
        "step": algo.steps, "epoch": game.epoch, "loss_g": last.loss_g, "loss_d": last.loss_d,
        "grad_norm": last.grad_norm, "consensus": consensus, "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received, "compute_s": info.field_seconds, "comm_s": info.mix_seconds,
        "step_s": wall, "dropped": stats.dropped, "rollbacks": run.guard.rollbacks,
        **_robust_record(mixer),
    }


def _robust_record(mixer: Any) -> dict[str, Any]:
    """Robust-mixing counters for the step record (gRPC mixer only): neighbour-rounds clipped or left out,
    members' messages refused by the wire, and the membership's suspects (members reported by robust
    mixing for doing either again and again, or whose steps or states were refused)."""
    robust = getattr(mixer, "robust", None)
    if robust is None:
        return {}
    st = robust.stats
    membership = getattr(mixer, "membership", None)  # one notion of a suspect: robust mixing reports there too
    suspects = sorted(membership.suspects()) if membership is not None else list(st.reported)
    return {"clipped": st.clipped, "rejected": st.rejected, "refused": st.refused, "suspects": suspects}


def _self_weight(mixer: Any, step: int) -> float:
    """This peer's self weight in round 0 of ``step`` (1.0 when the mixer exposes no topology)."""
    topology = getattr(mixer, "topology", None)
    ranks = getattr(mixer, "ranks", ())
    if topology is None or not ranks or getattr(mixer, "rounds", 1) == 0:
        return 1.0
    return float(topology.in_weights(ranks[0], step, 0).get(ranks[0], 0.0))


def _evaluate(run: _Run, evaluator: Any) -> dict[str, Any]:
    """Scores and a sample grid of the model at ``X`` (the point the peer would publish)."""
    from p2pgan.trainer.images import save_samples

    start = time.perf_counter()
    cfg, game, algo = run.cfg, run.game, run.algo
    game.load_point(algo.x)  # field() loads its own point first, so this changes no training state
    n = max(cfg.evaluation.samples, cfg.evaluation.grid)
    samples = game.sample(n, seed=SAMPLE_SEED)
    scores = evaluator.scores(samples) if evaluator is not None else {}
    target = cfg.evaluation.out_dir / f"samples-{algo.steps:07d}.png"
    try:
        path: Path | None = save_samples(samples[: cfg.evaluation.grid], target,
                                         title=f"{cfg.peer.id} step {algo.steps}")
    except OSError as exc:  # a full or read-only disk costs the picture, never the run
        (log.debug if run.grid_failed else log.warning)(
            "sample grid %s not written (%s); training goes on", target, exc.strerror or exc)
        run.grid_failed, path = True, None
    return {"step": algo.steps, "epoch": game.epoch, "scores": scores, "samples": str(path) if path else None,
            "eval_s": time.perf_counter() - start}
