"""The privacy audit: a curious neighbour's attacks on one site, and the canary audit.

- :mod:`.record`: what a peer writes when ``privacy.audit_dir`` is set (the harness's ``--audit-record``).
- :mod:`.canary`: the public gradient canary.
- :mod:`.stats`: ROC AUC, TPR at low FPR with counts and confidence intervals, Clopper-Pearson epsilon bounds.
- :mod:`.attacks`: the update attack, the discriminator-logit attack and the canary test.
- :mod:`.run`: ``p2pgan audit privacy``, ``--run RUN_DIR --peer ID`` on a harness folder or
  ``--config PEER.yaml --non-members PATH`` on a daemon.
"""
