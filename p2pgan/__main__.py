"""``python -m p2pgan`` is the same as the ``p2pgan`` console command."""

from __future__ import annotations

from p2pgan.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
