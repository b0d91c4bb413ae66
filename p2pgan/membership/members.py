"""Federation members as discovery finds them: an id, an address, an optional certificate pin."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from p2pgan.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PeerEntry:
    """One federation member as a roster lists it (or as zeroconf found it, once its TLS identity checked out)."""

    id: str
    host: str
    port: int
    fingerprint: str | None = None  # SHA-256 of the DER certificate, hex; pinned when given


def check_members(peers: Sequence[PeerEntry], self_id: str, *, source: str) -> None:
    """The membership must hold this peer once and no id twice (else :class:`ConfigError`)."""
    ids = [p.id for p in peers]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{source}: duplicate peer ids {dup}")
    if self_id not in ids:  # a mistake in the roster or peer.id, not a condition that passes: exit 2
        raise ConfigError(f"{source}: this peer {self_id!r} is not among the members {sorted(ids)}")
