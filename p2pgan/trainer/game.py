"""A GAN as a min-max game over one flat parameter vector: what DPOSG steps and the peers mix.

``theta = [u, v]``: ``u`` the generator's parameters, ``v`` the discriminator's, flattened in
``named_parameters()`` order (generator first). :meth:`GANGame.field` evaluates the game's gradient field
at a point ``z`` on a minibatch drawn from THIS peer's private data::

    field(z) = [ grad_u L_G(u, v),  grad_v L_D(u, v) ]     both at the same (u, v): simultaneous

Each player descends its own loss; for a zero-sum loss ``L_G = f = -L_D`` this is the field
``[grad_u f, -grad_v f]`` of the min-max problem ``min_u max_v f``. The class follows the contract of
``p2pgan.algorithm.game.MinMaxGame`` (``dim_u``, ``dim_v``, ``field(z: [n, d]) -> [n, d]``). One
:class:`GANGame` is one peer (``n = 1``); :class:`PeerGames` stacks several peers' games for the
in-process simulator (row i is evaluated by game i).

Randomness (minibatch order, latent noise, the gradient-penalty interpolation) comes from private
``torch.Generator`` objects seeded from ``seed``, never from global RNGs, and is captured by
:meth:`GANGame.state_dict`, so a resumed peer draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from p2pgan.errors import ConfigError
from p2pgan.trainer.data import Dataset
from p2pgan.trainer.losses import GANLoss, make_loss
from p2pgan.trainer.models import make_models


@dataclasses.dataclass(frozen=True)
class FieldStats:
    """What the last :meth:`GANGame.field` call measured (for metrics)."""

    loss_g: float
    loss_d: float
    grad_norm: float
    grad_norm_u: float
    grad_norm_v: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class MinibatchSampler:
    """Minibatches of a fixed sample tensor without replacement, reshuffled every epoch (seeded)."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.data = data
        self.batch_size = batch_size
        self._rng = torch.Generator().manual_seed(int(seed))
        self._perm = torch.randperm(len(data), generator=self._rng)
        self._cursor = 0
        self.samples_drawn = 0
        self.last_indices = torch.zeros(0, dtype=torch.long)

    @property
    def epoch(self) -> float:
        """Passes over the data so far (fractional)."""
        return self.samples_drawn / len(self.data)

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self._cursor == len(self._perm):
                self._perm = torch.randperm(len(self.data), generator=self._rng)
                self._cursor = 0
            take = self._perm[self._cursor:self._cursor + need]
            self._cursor += len(take)
            need -= len(take)
            parts.append(take)
        self.samples_drawn += self.batch_size
        idx = torch.cat(parts).to(self.data.device)
        self.last_indices = idx  # which rows the last minibatch holds (local: the privacy audit's ground truth)
        return self.data.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.get_state(), "perm": self._perm.clone(), "cursor": self._cursor,
                "samples_drawn": self.samples_drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        perm = state["perm"]
        if perm.shape != (len(self.data),):
            raise ValueError(f"sampler state is for {perm.shape[0]} samples, this dataset has {len(self.data)}")
        self._rng.set_state(state["rng"])
        self._perm = perm.clone()
        self._cursor = int(state["cursor"])
        self.samples_drawn = int(state["samples_drawn"])


def _flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def layout_digest(generator: nn.Module, discriminator: nn.Module) -> str:
    """SHA-256 (hex) over the parameter names, shapes and dtypes of a generator / discriminator pair."""
    h = hashlib.sha256()
    for prefix, module in (("G.", generator), ("D.", discriminator)):
        for name, p in module.named_parameters():
            h.update(f"{prefix}{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
    return h.hexdigest()


class GANGame:
    """One peer's GAN game: models, loss and private data behind ``field(z)``.

    ``seed`` drives this peer's minibatch order and noise (give each peer its own); the models arrive
    already initialised (build them with the same ``init_seed`` on every peer, see :func:`build_game`).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: GANLoss | str,
        data: Dataset | torch.Tensor,
        *,
        latent_dim: int,
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.G = generator.to(self.device)
        self.D = discriminator.to(self.device)
        self.loss = make_loss(loss) if isinstance(loss, str) else loss
        self.latent_dim = int(latent_dim)
        self.batch_size = int(batch_size)
        samples = data.tensor(self.device) if isinstance(data, Dataset) else data.to(self.device, torch.float32)
        self.sampler = MinibatchSampler(samples, self.batch_size, seed)
        self._noise = torch.Generator().manual_seed(int(seed) + 1_000_003)
        self._params_u = list(self.G.parameters())
        self._params_v = list(self.D.parameters())
        self.dim_u = sum(p.numel() for p in self._params_u)
        self.dim_v = sum(p.numel() for p in self._params_v)
        self.dim = self.dim_u + self.dim_v
        self.last: FieldStats | None = None

    # -- the parameter vector ----------------------------------------------------------------------

    def point(self) -> torch.Tensor:
        """The current parameters as one row ``[1, d]`` (a copy)."""
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1) for p in self._params_u + self._params_v])[None].clone()

    def load_point(self, z: torch.Tensor) -> None:
        """Write a row ``[d]`` or ``[1, d]`` into the generator and discriminator."""
        row = z.reshape(-1)
        if row.numel() != self.dim:
            raise ValueError(f"point has {row.numel()} entries, the game has d = {self.dim}")
        with torch.no_grad():
            offset = 0
            for p in self._params_u + self._params_v:
                n = p.numel()
                p.copy_(row[offset:offset + n].view_as(p))
                offset += n

    def lr_vector(self, lr_g: float, lr_d: float) -> torch.Tensor:
        """Per-coordinate learning rates ``[d]``: ``lr_g`` on the generator part, ``lr_d`` on the discriminator."""
        for name, lr in (("lr_g", lr_g), ("lr_d", lr_d)):
            if not lr > 0:
                raise ValueError(f"{name} must be > 0, got {lr!r}")
        return torch.cat([torch.full((self.dim_u,), float(lr_g)), torch.full((self.dim_v,), float(lr_d))])

    def layout_digest(self) -> str:
        """SHA-256 (hex) over parameter names, shapes and dtypes: peers refuse vectors of another layout."""
        return layout_digest(self.G, self.D)

    # -- the field ---------------------------------------------------------------------------------

    @property
    def epoch(self) -> float:
        """Passes over this peer's data so far."""
        return self.sampler.epoch

    def _latent(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def field(self, z: torch.Tensor) -> torch.Tensor:
        """``[grad_u L_G, grad_v L_D]`` at ``z`` (shape ``[1, d]``) on a fresh private minibatch.

        Loads ``z`` into the models (they stay there: :meth:`sample` then draws from ``z``) and records
        losses and the gradient norm in :attr:`last`. Returns ``[1, d]`` on ``z``'s device and dtype.
        """
        if z.dim() != 2 or z.shape[0] != 1:
            raise ValueError(f"GANGame hosts one peer: field() takes shape [1, {self.dim}], got {tuple(z.shape)}")
        start = time.perf_counter()
        self.load_point(z.to(self.device, torch.float32))
        real = self.sampler.next()
        fake = self.G(self._latent(self.batch_size, self._noise))
        grad_v, loss_d = self.discriminator_gradient(real, fake.detach())
        loss_g = self.loss.generator(self.D, fake)
        grad_u = _flat(torch.autograd.grad(loss_g, self._params_u))
        g = torch.cat([grad_u, grad_v])
        nu, nv = float(grad_u.norm()), float(grad_v.norm())
        self.last = FieldStats(loss_g.item(), loss_d.item(), (nu * nu + nv * nv) ** 0.5, nu, nv,
                               time.perf_counter() - start)
        return g[None].to(z.device, z.dtype)

    def discriminator_gradient(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grad_v L_D, L_D)`` on a real and a (detached) fake minibatch: the one place private data enter
        the field (:class:`p2pgan.privacy.game.DPGANGame` replaces it with a differentially private one)."""
        loss_d = self.loss.discriminator(self.D, real, fake, self._noise)
        return _flat(torch.autograd.grad(loss_d, self._params_v)), loss_d

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples (CPU, float; images in [-1, 1]) from the current generator and fixed noise ``seed``."""
        return self.G(self._latent(n, torch.Generator().manual_seed(int(seed)))).cpu()

    # -- resume ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """RNG and minibatch state (not the parameters, which the algorithm's vectors hold)."""
        return {"noise": self._noise.get_state(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._noise.set_state(state["noise"])
        self.sampler.load_state_dict(state["sampler"])


class PeerGames:
    """Several peers' games as one ``[M, d]`` field for the in-process simulator (row i -> game i)."""

    def __init__(self, games: Sequence[GANGame]) -> None:
        if not games:
            raise ValueError("PeerGames needs at least one game")
        digests = {g.layout_digest() for g in games}
        if len(digests) != 1:
            raise ValueError("PeerGames: the games have different parameter layouts")
        self.games = list(games)
        self.dim_u, self.dim_v, self.dim = games[0].dim_u, games[0].dim_v, games[0].dim

    def field(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[0] != len(self.games):
            raise ValueError(f"field() takes shape [{len(self.games)}, {self.dim}], got {tuple(z.shape)}")
        return torch.cat([g.field(z[i:i + 1]) for i, g in enumerate(self.games)])

    def lr_vector(self, lr_g: float, lr_d: float) -> torch.Tensor:
        return self.games[0].lr_vector(lr_g, lr_d)

    def layout_digest(self) -> str:
        return self.games[0].layout_digest()


def build_game(
    model: str,
    loss: str,
    data: Dataset,
    *,
    batch_size: int = 64,
    init_seed: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    latent_dim: int | None = None,
    width: int | None = None,
) -> GANGame:
    """Models from :func:`~p2pgan.trainer.models.make_models` (initialised with ``init_seed``, shared by all
    peers) + loss + this peer's data; ``seed`` is this peer's private stream of batches and noise."""
    channels = data.sample_shape[0] if data.kind == "image" else None
    g, d, k, shape = make_models(model, latent_dim=latent_dim, channels=channels, width=width,
                                 device=device, seed=init_seed)
    if tuple(shape) != data.sample_shape:
        raise ConfigError(
            f"model {model!r} produces samples of shape {tuple(shape)} but dataset {data.name!r} holds "
            f"{data.sample_shape}"
        )
    return GANGame(g, d, loss, data, latent_dim=k, batch_size=batch_size, seed=seed, device=device)
