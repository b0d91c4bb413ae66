"""Generator / discriminator pairs for the games p2pgan trains.

``make_models(name)`` returns ``(G, D, latent_dim, data_shape)``. Every model is built so that its whole
state is its parameters: no BatchNorm running statistics or other buffers (normalisation always uses the
batch statistics). That way the flat parameter vector the peers mix *is* the model, and a peer that
receives a vector reproduces the sender's network exactly. Discriminators never use batch
normalisation, which would break the per-sample gradient penalty of WGAN-GP.

Models:

- ``mlp2d``: small MLPs for the 2-D 8-Gaussians toy problem (data shape ``(2,)``).
- ``digits``: a small conv GAN for the 8x8 grey digits of scikit-learn (data shape ``(1, 8, 8)``).
- ``dcgan32``: a DCGAN for 32x32 images (Radford et al. 2016, sized for 32x32).
- ``resnet32``: the ResNet of WGAN-GP for CIFAR-10 (Gulrajani et al. 2017), the model of the paper's
  CIFAR-10 experiment: 128 channels, three up-sampling residual blocks in G, an optimised first block,
  one down-sampling and two plain residual blocks in D; about 2.2 M parameters (8.4 MiB in float32).
"""

from __future__ import annotations

import torch
from torch import nn

from p2pgan.errors import ConfigError

#: model names accepted by :func:`make_models` (the ``model`` field of a peer config)
MODEL_NAMES: tuple[str, ...] = ("mlp2d", "digits", "dcgan32", "resnet32")


def _batch_norm(channels: int, dims: int) -> nn.Module:
    """BatchNorm that always normalises with batch statistics and keeps no running buffers."""
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(channels, track_running_stats=False)


class MLPGenerator(nn.Module):
    """Latent -> 2-D point."""

    def __init__(self, latent_dim: int = 8, hidden: int = 128, out_dim: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """2-D point -> one score (a logit for ``ns``, a critic value for ``wgan-gp``)."""

    def __init__(self, in_dim: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class DigitsGenerator(nn.Module):
    """Latent -> 1x8x8 image in [-1, 1]: linear to 4x4, one transposed convolution to 8x8, a 3x3 output conv."""

    def __init__(self, latent_dim: int = 32, width: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(latent_dim, 2 * width * 4 * 4)
        self.net = nn.Sequential(
            _batch_norm(2 * width, 2), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # 8x8
            _batch_norm(width, 2), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 2 * self.width, 4, 4))


class DigitsDiscriminator(nn.Module):
    """1x8x8 image -> score: a 3x3 convolution at 8x8, a strided one to 4x4, and a linear head."""

    def __init__(self, width: int = 64, channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),  # 8x8
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class DCGANGenerator(nn.Module):
    """Latent -> Cx32x32 image: linear to 4x4, three stride-2 transposed convolutions."""

    def __init__(self, latent_dim: int = 128, width: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(latent_dim, 4 * width * 4 * 4)
        layers: list[nn.Module] = [_batch_norm(4 * width, 2), nn.ReLU()]
        for c_in, c_out in ((4 * width, 2 * width), (2 * width, width)):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _batch_norm(c_out, 2), nn.ReLU()]
        layers += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 4 * self.width, 4, 4))


class DCGANDiscriminator(nn.Module):
    """Cx32x32 image -> score: three stride-2 convolutions (no batch norm, WGAN-GP safe)."""

    def __init__(self, width: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 16
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 8
            nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 4
            nn.Flatten(),
            nn.Linear(4 * width * 4 * 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class _ResBlock(nn.Module):
    """Residual block of the WGAN-GP ResNet: resample ``up``, ``down`` or ``None``.

    As in the reference model, ``up`` upsamples (nearest) before the first 3x3 convolution, ``down``
    mean-pools after the second, and the shortcut is a 1x1 convolution whenever the block resamples or
    changes width. Generator blocks normalise with batch norm; discriminator blocks do not.
    """

    def __init__(self, c_in: int, c_out: int, resample: str | None, norm: bool) -> None:
        super().__init__()
        self.resample = resample
        self.norm1 = _batch_norm(c_in, 2) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _batch_norm(c_out, 2) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (resample is not None or c_in != c_out) else None

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return nn.functional.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.resample == "up"
        h = torch.relu(self.norm1(x))
        h = self.conv1(self._sample(h) if up else h)
        h = self.conv2(torch.relu(self.norm2(h)))
        h = h if up else self._sample(h)
        s = x if self.shortcut is None else self.shortcut(self._sample(x) if up else x)
        return h + (s if up or self.shortcut is None else self._sample(s))


class _OptimizedDiscBlock(nn.Module):
    """First discriminator block of WGAN-GP's ResNet: no activation before the first convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.avg_pool2d(self.conv2(torch.relu(self.conv1(x))), 2)
        return h + self.shortcut(nn.functional.avg_pool2d(x, 2))


class ResNetGenerator(nn.Module):
    """WGAN-GP ResNet generator for 32x32: linear to 4x4x128, three up blocks, BN-ReLU-conv-tanh."""

    def __init__(self, latent_dim: int = 128, width: int = 128, channels: int = 3) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(latent_dim, 4 * 4 * width)
        self.blocks = nn.Sequential(*(_ResBlock(width, width, "up", norm=True) for _ in range(3)))
        self.out = nn.Sequential(_batch_norm(width, 2), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.fc(z).view(-1, self.width, 4, 4)))


class ResNetDiscriminator(nn.Module):
    """WGAN-GP ResNet critic for 32x32: optimised block, one down block, two plain blocks, mean pool, linear."""

    def __init__(self, width: int = 128, channels: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            _OptimizedDiscBlock(channels, width),
            _ResBlock(width, width, "down", norm=False),
            _ResBlock(width, width, None, norm=False),
            _ResBlock(width, width, None, norm=False),
        )
        self.fc = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).mean(dim=(2, 3))
        return self.fc(h).view(-1)


def make_models(
    name: str,
    *,
    latent_dim: int | None = None,
    channels: int | None = None,
    width: int | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> tuple[nn.Module, nn.Module, int, tuple[int, ...]]:
    """Build the generator and discriminator of model ``name``.

    Returns ``(G, D, latent_dim, data_shape)``: ``G`` maps ``[n, latent_dim]`` noise to ``[n, *data_shape]``
    samples (images in [-1, 1]), ``D`` maps ``[n, *data_shape]`` to ``[n]`` scores. ``seed`` makes the
    initialisation deterministic (all peers of a federation should start from the same point); it uses a
    private generator and leaves the global torch RNG untouched. ``channels`` (1 or 3) applies to image
    models, ``width`` overrides the base number of channels / hidden units.
    """
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"model {name}: channels must be 1 or 3, got {channels!r}")
    if latent_dim is not None and (not isinstance(latent_dim, int) or latent_dim < 1):
        raise ConfigError(f"model {name}: latent_dim must be a positive integer, got {latent_dim!r}")
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ConfigError(f"model {name}: width must be a positive integer, got {width!r}")
    fork_devices: list[int] = []
    with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "mlp2d":
            k = latent_dim or 8
            g, d, shape = MLPGenerator(k, width or 128), MLPDiscriminator(2, width or 128), (2,)
        elif name == "digits":
            k, c = latent_dim or 32, channels or 1
            g, d, shape = DigitsGenerator(k, width or 64, c), DigitsDiscriminator(width or 64, c), (c, 8, 8)
        elif name == "dcgan32":
            k, c = latent_dim or 128, channels or 3
            g, d, shape = DCGANGenerator(k, width or 64, c), DCGANDiscriminator(width or 64, c), (c, 32, 32)
        else:
            k, c = latent_dim or 128, channels or 3
            g, d, shape = ResNetGenerator(k, width or 128, c), ResNetDiscriminator(width or 128, c), (c, 32, 32)
    return g.to(device), d.to(device), k, shape


def count_parameters(*modules: nn.Module) -> int:
    """Number of scalar parameters in ``modules`` together."""
    return sum(p.numel() for m in modules for p in m.parameters())
