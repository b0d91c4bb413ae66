"""The GAN trainer: models, losses, private datasets, the game's gradient field, evaluation and images.

Submodules: :mod:`~p2pgan.trainer.models` (``make_models``), :mod:`~p2pgan.trainer.losses` (``make_loss``),
:mod:`~p2pgan.trainer.data` (``load_dataset``, shards), :mod:`~p2pgan.trainer.game` (``GANGame``,
``build_game``), :mod:`~p2pgan.trainer.evaluation` (scores, consensus distance) and
:mod:`~p2pgan.trainer.images` (sample grids and curves as PNG). Import the submodule you need; this
package imports nothing heavy by itself.
"""

from __future__ import annotations
