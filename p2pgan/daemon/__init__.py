"""The peer daemon: one long-running process per site that trains its share of the GAN with DPOSG.

Thin on purpose: config (:mod:`p2pgan.daemon.config`) -> game -> mixer (:func:`make_mixer`) ->
algorithm -> checkpoints and metrics (:mod:`p2pgan.daemon.peer`).
"""
