"""What a peer config may name in the trainer: models and their defaults, datasets, losses.

Plain data, no torch: reading a configuration (``p2pgan status``) must stay light. The tensor code
(:mod:`p2pgan.trainer.models`, :mod:`~p2pgan.trainer.data`, :mod:`~p2pgan.trainer.losses`) imports
these names from here.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """Per-model defaults of the fields a peer config may leave out."""

    lr_generator: float  # train.lr_generator
    lr_discriminator: float  # train.lr_discriminator
    image_size: int | None  # side of the square images the model makes (data.image_size); None: not images


#: model name -> its defaults; the keys are the models :func:`make_models` knows
MODEL_DEFAULTS: dict[str, ModelDefaults] = {
    "mlp2d": ModelDefaults(2e-4, 2e-4, None),
    "digits": ModelDefaults(2e-4, 2e-4, 8),
    "dcgan32": ModelDefaults(2e-4, 2e-4, 32),
    "resnet32": ModelDefaults(2e-4, 2e-4, 32),
    # Liu et al. 2020, Section 5.1: "For Self-Attention GAN on ImageNet, we tune different learning rates for
    # discriminator and generator respectively and choose to use 10^-3 for generator and 4x10^-5 for the
    # discriminator" (not SAGAN's own TTUR of G 1e-4 / D 4e-4).
    "sagan128": ModelDefaults(1e-3, 4e-5, 128),
}

#: model names accepted by :func:`make_models` (the ``model`` field of a peer config)
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_DEFAULTS)


#: dataset formats :func:`p2pgan.trainer.data.load_dataset` reads (the ``data.format`` of a peer config)
DATASET_FORMATS: tuple[str, ...] = ("digits", "gaussians", "cifar10", "imagefolder", "shard")

#: loss names accepted by :func:`p2pgan.trainer.losses.make_loss`
LOSS_NAMES: tuple[str, ...] = ("wgan-gp", "ns")
