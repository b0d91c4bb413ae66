"""The names a configuration may choose among, apart from the tensor code that implements them.

Torch-free, so that reading a peer's configuration (``p2pgan status``) does not import torch.
"""

from __future__ import annotations

#: optimistic directions (:mod:`p2pgan.algorithm.directions`)
DIRECTION_NAMES = ("osg", "oadam", "oadagrad")
#: DPOSG's schedules (:mod:`p2pgan.algorithm.dposg`): Algorithm 1 literally, or the paper's overlap
SCHEDULES = ("exact", "overlap")
#: ``gradient``: Algorithm 1's start (one gradient at X_0 seeds d_prev); ``zero``: d_prev = 0
FIRST_STEPS = ("gradient", "zero")
