"""``python -m p2pgan.netem``: see :mod:`p2pgan.netem.cli`."""

from p2pgan.netem.cli import main

raise SystemExit(main())
