"""Support code of the paper-reproduction scripts under ``scripts/`` (Figures 2 and 3, step overhead).

:mod:`~p2pgan.experiments.worker` is the lean peer process the speed and overhead experiments start
(real OS processes mixing over Gloo or gRPC); :mod:`~p2pgan.experiments.report` writes their JSON,
tables and comparison plots.
"""
