"""Membership: who is in the federation, who is live right now, and at which step each member is.

One home for the questions the daemon, the wire and discovery all ask (DESIGN.md section 5):
discovery (roster or zeroconf) produces the member list; the wire reports what it hears (messages,
broken streams, leave notices) into a :class:`Membership`; the mixer asks it which neighbours to wait
for; the daemon asks it whether this peer has fallen behind the federation and must catch up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pgan.membership.members import PeerEntry, check_members
from p2pgan.membership.view import CatchUp, Membership, MemberState

if TYPE_CHECKING:
    from p2pgan.membership.churn import live_weights

__all__ = ["CatchUp", "Membership", "MemberState", "PeerEntry", "check_members", "live_weights"]


def __getattr__(name: str) -> Any:
    # live_weights is tensor code: imported on first use, so that the torch-free parts of this package
    # (members, view) do not pull torch into light commands (`p2pgan status`, `p2pgan certs`)
    if name == "live_weights":
        from p2pgan.membership.churn import live_weights

        return live_weights
    raise AttributeError(f"module 'p2pgan.membership' has no attribute {name!r}")
