"""Who is in the federation: a static YAML roster or zeroconf (mDNS), giving a sorted list of peer ids."""

from __future__ import annotations

from p2pgan.discovery.roster import Roster, load_roster, write_roster

__all__ = ["Roster", "load_roster", "write_roster"]
