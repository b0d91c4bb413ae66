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
  one down-sampling and two plain residual blocks in D; 2,258,308 parameters at the default width 128
  (G 1,204,483 + D 1,053,825), 8.61 MiB (9.03 MB) in float32.
- ``sagan128``: the Self-Attention GAN (Zhang et al. 2019) for 128x128 images, the model of the paper's
  ImageNet experiment, in its BigGAN-style ResNet form: spectral norm on every layer of G and D, one
  self-attention block at 64x64 in each; 70,595,526 parameters at the default width 64 (G 32,171,268 +
  D 38,424,258), 269.3 MiB (282.4 MB) in float32. The paper reports 315.07 MB for its SAGAN, which was
  *class-conditional* on ImageNet: per-class batch-norm gains and biases in G and a projection embedding
  in D add 11,008,000 parameters for 1000 classes (81.6 M, 311.3 MiB, in all). p2pgan trains
  unconditionally, so those are not here and nothing stands in for them. See :class:`SAGANGenerator`,
  :class:`SAGANDiscriminator`, :class:`SelfAttention` and :class:`SpectralNormMixin`.

:data:`MODEL_DEFAULTS` holds what a peer config may leave out, per model: the two learning rates and the
side of the images (``data.image_size`` of an image folder).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from p2pgan.errors import ConfigError
from p2pgan.trainer.catalog import MODEL_DEFAULTS, MODEL_NAMES, ModelDefaults  # noqa: F401  (re-exported)

#: power iterations per forward pass of a spectrally normalised layer (see :class:`SpectralNormMixin`)
SN_POWER_ITERATIONS = 5
#: floor of the estimated spectral norm, so that an all-zero weight does not divide by zero
SN_EPS = 1e-12
#: Weyl-sequence multiplier (2^32 / golden ratio) of the power iteration's deterministic start vector
_WEYL_MULTIPLIER = 2654435769


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
    changes width. Generator blocks normalise with batch norm; discriminator blocks do not. ``conv`` is
    the convolution class (:class:`SNConv2d` in SAGAN); SAGAN's and BigGAN's blocks have this same shape.
    """

    def __init__(
        self, c_in: int, c_out: int, resample: str | None, norm: bool, conv: type[nn.Conv2d] = nn.Conv2d
    ) -> None:
        super().__init__()
        self.resample = resample
        self.norm1 = _batch_norm(c_in, 2) if norm else nn.Identity()
        self.conv1 = conv(c_in, c_out, 3, padding=1)
        self.norm2 = _batch_norm(c_out, 2) if norm else nn.Identity()
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.shortcut = conv(c_in, c_out, 1) if (resample is not None or c_in != c_out) else None

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

    def __init__(self, c_in: int, c_out: int, conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, padding=1)
        self.conv2 = conv(c_out, c_out, 3, padding=1)
        self.shortcut = conv(c_in, c_out, 1)

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


def _start_vector(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed unit vector of length ``n`` that no weight is likely to be orthogonal to.

    ``frac(j / golden ratio) - 1/2`` for ``j = 1..n`` (a Weyl sequence), computed in exact integer
    arithmetic so that it is bit-identical on every device: peers on different hardware start the power
    iteration from the same vector. It needs no random generator and no stored state.
    """
    j = torch.arange(1, n + 1, device=device, dtype=torch.int64)
    v = ((j * _WEYL_MULTIPLIER) % 2**32).to(dtype) / 2**32 - 0.5
    return v / v.norm()


def _check_iterations(power_iterations: int) -> int:
    if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 1:
        raise ValueError(f"power_iterations must be a positive integer, got {power_iterations!r}")
    return power_iterations


class SpectralNormMixin:
    """Spectral normalisation (Miyato et al. 2018) that keeps no state besides the weight.

    The layer uses ``weight / sigma(weight)``. ``sigma`` is estimated, in every forward pass, by
    ``power_iterations`` rounds of power iteration on the weight reshaped to ``[out, in * kh * kw]``,
    started from the fixed vector of :func:`_start_vector`; the iteration runs under ``torch.no_grad`` and
    ``sigma = u^T W v`` is then taken with gradient, as in Miyato et al. (the gradient of ``sigma`` is
    ``u v^T``). ``torch.nn.utils.spectral_norm`` and its parametrization instead keep the vector ``u``
    in a buffer and do one iteration per step; p2pgan models may hold no buffers (the parameter vector the
    peers mix must *be* the model), so the layer is a pure function of its parameters here.

    Cost and accuracy: each iteration is two matrix-vector products with the weight, about
    ``4 * weight.numel()`` FLOPs and two reads of the weight, repeated on every forward call (a WGAN-GP step
    calls D four times); for the full ``sagan128`` that is about 0.3 GFLOP and 0.6 GB of weight reads per
    iteration and forward of G + D, small against the convolutions at batch 64; on a GPU the cost is rather
    the launches, about 45 small kernels per layer and forward (43 layers in G + D, some 5,000 launches per
    WGAN-GP step, tens of milliseconds where they are not hidden). Power iteration never overestimates:
    ``sigma`` is a lower bound of the top singular value, so the normalised weight's top singular value is
    >= 1 by the error of the estimate. Freshly initialised weights have crowded spectra and converge slowly
    (measured at initialisation with 5 iterations: 1.06 for a 1024x1024x3x3 convolution, 1.001 for
    64x3x3x3); a weight whose top singular value stands apart (ratio 1/3 to the next) is exact to 1e-4.
    """

    weight: torch.Tensor
    power_iterations: int

    def __init__(self, *args: object, power_iterations: int = SN_POWER_ITERATIONS, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # the torch layer's own arguments
        self.power_iterations = _check_iterations(power_iterations)

    def sigma(self) -> torch.Tensor:
        """The estimated top singular value of the reshaped weight (differentiable w.r.t. the weight)."""
        w = self.weight.flatten(1)
        with torch.no_grad():
            v = _start_vector(w.shape[1], w.device, w.dtype)
            for _ in range(self.power_iterations):
                v = F.normalize(torch.mv(w.t(), F.normalize(torch.mv(w, v), dim=0, eps=SN_EPS)), dim=0, eps=SN_EPS)
            u = F.normalize(torch.mv(w, v), dim=0, eps=SN_EPS)
        return torch.dot(u, torch.mv(w, v)).clamp_min(SN_EPS)

    def normalized_weight(self) -> torch.Tensor:
        """``weight / sigma``: the weight the layer computes with."""
        return self.weight / self.sigma()


class SNConv2d(SpectralNormMixin, nn.Conv2d):
    """``nn.Conv2d`` with buffer-free spectral normalisation (:class:`SpectralNormMixin`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SNLinear(SpectralNormMixin, nn.Linear):
    """``nn.Linear`` with buffer-free spectral normalisation (:class:`SpectralNormMixin`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SelfAttention(nn.Module):
    """SAGAN's self-attention block, in the form of its released code (and BigGAN's).

    ``y = x + gamma * o(softmax(q^T k) v)``: query and key are 1x1 convolutions to ``C/8`` channels, the
    value a 1x1 convolution to ``C/2`` and ``o`` a 1x1 convolution back to ``C``, all spectrally
    normalised and without bias; keys and values are 2x2 max-pooled (every position attends to a quarter
    as many, which quarters the ``[HW, HW/4]`` attention matrix: 64 MiB per sample at 64x64 instead of
    256). ``gamma`` is a parameter that starts at 0, so the block starts as the identity. The attention is
    a plain matmul + softmax rather than ``scaled_dot_product_attention``, whose fused kernels cannot be
    differentiated twice (WGAN-GP's gradient penalty does). Needs even ``H`` and ``W``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner, half = max(1, channels // 8), max(1, channels // 2)  # max(): reduced widths stay valid
        self.query = SNConv2d(channels, inner, 1, bias=False)
        self.key = SNConv2d(channels, inner, 1, bias=False)
        self.value = SNConv2d(channels, half, 1, bias=False)
        self.out = SNConv2d(half, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.query(x).flatten(2)  # [n, C/8, HW]
        k = F.max_pool2d(self.key(x), 2).flatten(2)  # [n, C/8, HW/4]
        v = F.max_pool2d(self.value(x), 2).flatten(2)  # [n, C/2, HW/4]
        attention = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # [n, HW, HW/4]
        o = torch.bmm(v, attention.transpose(1, 2)).view(n, -1, h, w)
        return x + self.gamma * self.out(o)


#: the resolution at which sagan128's G and D attend (BigGAN-128's choice; SAGAN's code uses 32x32)
SAGAN_ATTENTION_RESOLUTION = 64


class SAGANGenerator(nn.Module):
    """SAGAN / BigGAN-style ResNet generator for 128x128 (unconditional).

    Linear from the latent to 4x4x(16 w), five up-sampling residual blocks 16w -> 16w -> 8w -> 4w -> 2w -> w
    (8, 16, 32, 64, 128 pixels), self-attention after the 64x64 block, then BN-ReLU-conv3x3-tanh. Every
    linear and convolution is spectrally normalised (SAGAN applies SN to G as well); batch norm keeps no
    running statistics (:func:`_batch_norm`).
    """

    def __init__(self, latent_dim: int = 128, width: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.width = width
        self.fc = SNLinear(latent_dim, 4 * 4 * 16 * width)
        mults = (16, 16, 8, 4, 2, 1)
        blocks: list[nn.Module] = []
        resolution = 4
        for m_in, m_out in zip(mults, mults[1:]):
            blocks.append(_ResBlock(m_in * width, m_out * width, "up", norm=True, conv=SNConv2d))
            resolution *= 2
            if resolution == SAGAN_ATTENTION_RESOLUTION:
                blocks.append(SelfAttention(m_out * width))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(_batch_norm(width, 2), nn.ReLU(), SNConv2d(width, channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.fc(z).view(-1, 16 * self.width, 4, 4)))


class SAGANDiscriminator(nn.Module):
    """SAGAN / BigGAN-style ResNet discriminator for 128x128 (unconditional).

    Optimised first block w (to 64x64), self-attention at 64x64, down-sampling residual blocks to 2w, 4w,
    8w, 16w (32 down to 4 pixels), a 16w block without down-sampling, ReLU, global *sum* pooling (as SAGAN
    does) and a linear head; everything spectrally normalised, no batch norm.
    """

    def __init__(self, width: int = 64, channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_OptimizedDiscBlock(channels, width, conv=SNConv2d), SelfAttention(width)]
        for m_in, m_out in ((1, 2), (2, 4), (4, 8), (8, 16)):
            blocks.append(_ResBlock(m_in * width, m_out * width, "down", norm=False, conv=SNConv2d))
        blocks.append(_ResBlock(16 * width, 16 * width, None, norm=False, conv=SNConv2d))
        self.blocks = nn.Sequential(*blocks)
        self.fc = SNLinear(16 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))
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
    models, ``width`` overrides the base number of channels / hidden units. ``device="meta"`` builds the
    models without allocating their parameters (to count them or read the layout of a big model).
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
    # "meta" builds shapes without data (parameter counts and layouts of big models at no cost); other
    # devices build on the CPU and move, so that a seed gives the same initialisation everywhere
    build_on = torch.device("meta") if torch.device(device).type == "meta" else torch.device("cpu")
    with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None), build_on:
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
        elif name == "resnet32":
            k, c = latent_dim or 128, channels or 3
            g, d, shape = ResNetGenerator(k, width or 128, c), ResNetDiscriminator(width or 128, c), (c, 32, 32)
        else:
            k, c = latent_dim or 128, channels or 3
            g, d, shape = SAGANGenerator(k, width or 64, c), SAGANDiscriminator(width or 64, c), (c, 128, 128)
    return g.to(device), d.to(device), k, shape


def count_parameters(*modules: nn.Module) -> int:
    """Number of scalar parameters in ``modules`` together."""
    return sum(p.numel() for m in modules for p in m.parameters())
