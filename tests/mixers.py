"""Joined gRPC mixers on loopback for the wire tests: one federation factory, every mixer closed at the end."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2pgan.security.certs import make_federation
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.mixer import GrpcMixer


@contextlib.contextmanager
def mixer_federations(tmp_path: Path, prefix: str, dim: int) -> Iterator[Callable[..., list[GrpcMixer]]]:
    """Yields ``make(m, *, each=None, ready=True, **net)``: M mixers ``p0..p{M-1}`` of a fresh federation (its
    own CA under ``tmp_path``), joined to one roster on loopback and, with ``ready``, past ``wait_ready``;
    ``net`` are NetworkConfig fields for all of them and ``each[i]`` for mixer ``i`` alone."""
    opened: list[GrpcMixer] = []

    def make(m: int, *, each: list[dict[str, Any]] | None = None, ready: bool = True, **net: Any) -> list[GrpcMixer]:
        fed = f"{prefix}-{secrets.token_hex(3)}"
        ids = [f"p{i}" for i in range(m)]
        tls = make_federation(tmp_path / fed, fed, ids)
        mixers = []
        for i, pid in enumerate(ids):
            extra = {**net, **(each[i] if each else {})}
            mixers.append(GrpcMixer(NetworkConfig(federation=fed, peer_id=pid, tls=tls[pid], **extra), dim=dim))
            opened.append(mixers[-1])
        roster = tuple(PeerEntry(pid, "127.0.0.1", mx.port) for pid, mx in zip(ids, mixers))
        for mx in mixers:
            mx.join(roster)
        for mx in mixers if ready else ():
            mx.wait_ready(30)
        return mixers

    try:
        yield make
    finally:
        for mx in opened:
            mx.close()
