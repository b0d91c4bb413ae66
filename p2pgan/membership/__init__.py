"""Membership: who is in the federation, who is live right now, and at which step each member is.

One home for the questions the daemon, the wire and discovery all ask (DESIGN.md section 5):
discovery (roster or zeroconf) produces the member list; the wire reports what it hears (messages,
broken streams, leave notices) into a :class:`Membership`; the mixer asks it which neighbours to wait
for; the daemon asks it whether this peer has fallen behind the federation and must catch up.
"""

from __future__ import annotations

from p2pgan.membership.churn import live_weights
from p2pgan.membership.members import PeerEntry, check_members
from p2pgan.membership.view import CatchUp, Membership, MemberState

__all__ = ["CatchUp", "Membership", "MemberState", "PeerEntry", "check_members", "live_weights"]
