"""Differential privacy per site (DESIGN.md section 6), a layer beside the trainer that the daemon composes.

- :mod:`.randomness`: the secret seed of a site's private streams; the DP noise from the OS.
- :mod:`.sampling`: Poisson sampling (rate q = batch / n).
- :mod:`.mechanism`: per-example gradients (torch.func), clipping to C, Gaussian noise.
- :mod:`.game`: :class:`~.game.DPGANGame`, the GAN game whose real-data discriminator term is private.
- :mod:`.accountant`: per-site (epsilon, delta) with Google's dp-accounting (PLD; RDP as a cross-check).
- :mod:`.site`: the plan a ``privacy:`` config section becomes (calibrated sigma, default delta).
- :mod:`.audit`: the curious neighbour's attacks and the canary audit (``p2pgan audit privacy``).

Nothing is imported here eagerly: importing the package costs nothing (CLI ``--help`` stays light).
"""
