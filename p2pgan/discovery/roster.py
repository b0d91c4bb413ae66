"""The static roster: a YAML file naming the federation and every peer (id, address, port, pin).

Example::

    federation: demo
    peers:
      - {id: alice, host: 10.0.0.1, port: 50051}
      - {id: bob, address: "10.0.0.2:50051", fingerprint: "3f:a2:..."}   # optional SHA-256 pin

The membership is the sorted list of ids; every peer computes the same topology from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from p2pgan.errors import ConfigError, config_error
from p2pgan.security.certs import check_name, normalize_fingerprint
from p2pgan.membership.members import PeerEntry


@dataclasses.dataclass(frozen=True)
class Roster:
    federation: str
    peers: tuple[PeerEntry, ...]

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(sorted(p.id for p in self.peers))


def _peer(src: str, i: int, raw: Any) -> PeerEntry:
    where = f"peers[{i}]"
    if not isinstance(raw, dict):
        raise config_error(src, where, f"must be a mapping with id, host/address and port, got {raw!r}")
    unknown = set(raw) - {"id", "host", "address", "port", "fingerprint"}
    if unknown:
        raise config_error(src, f"{where}.{sorted(unknown)[0]}", "unknown field; allowed: id, host, address, port, fingerprint")
    try:
        pid = check_name(raw.get("id"), "peer id")
    except ConfigError as exc:
        raise config_error(src, f"{where}.id", str(exc)) from None
    host, port = raw.get("host"), raw.get("port")
    if "address" in raw:
        if host is not None:
            raise config_error(src, f"{where}.address", "give either address (host:port) or host, not both")
        addr = str(raw["address"])
        host, sep, p = addr.rpartition(":")
        if not sep or not host:
            raise config_error(src, f"{where}.address", f"{addr!r} is not host:port")
        host = host.strip("[]")
        port = port if port is not None else p
    if not host or not isinstance(host, str):
        raise config_error(src, f"{where}.host", "missing (a host name or IP address)")
    try:
        port_i = int(port)
    except (TypeError, ValueError):
        raise config_error(src, f"{where}.port", f"{port!r} is not a port number") from None
    if not 1 <= port_i <= 65535:
        raise config_error(src, f"{where}.port", f"{port_i} is outside 1..65535")
    fp = raw.get("fingerprint")
    if fp is not None:
        try:
            fp = normalize_fingerprint(str(fp))
        except ConfigError as exc:
            raise config_error(src, f"{where}.fingerprint", str(exc)) from None
    return PeerEntry(id=pid, host=host, port=port_i, fingerprint=fp)


def parse_roster(data: Any, source: str) -> Roster:
    """Validate an already-loaded YAML mapping (``source`` names it in errors)."""
    if not isinstance(data, dict):
        raise config_error(source, "", "a roster must be a mapping with 'federation' and 'peers'")
    try:
        fed = check_name(data.get("federation"), "federation")
    except ConfigError as exc:
        raise config_error(source, "federation", str(exc)) from None
    raw_peers = data.get("peers")
    if not isinstance(raw_peers, list) or not raw_peers:
        raise config_error(source, "peers", "must be a non-empty list of peers")
    peers = tuple(_peer(source, i, p) for i, p in enumerate(raw_peers))
    seen: set[str] = set()
    for i, p in enumerate(peers):
        if p.id in seen:
            raise config_error(source, f"peers[{i}].id", f"duplicate peer id {p.id!r}")
        seen.add(p.id)
    return Roster(fed, peers)


def load_roster(path: str | Path) -> Roster:
    """Read and validate a roster YAML file; errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise config_error(str(path), "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise config_error(str(path), "", f"not valid YAML: {exc}") from None
    return parse_roster(data, str(path))


def write_roster(path: str | Path, federation: str, peers: Iterable[PeerEntry]) -> Path:
    path = Path(path)
    entries = []
    for p in peers:
        e: dict[str, Any] = {"id": p.id, "host": p.host, "port": p.port}
        if p.fingerprint:
            e["fingerprint"] = p.fingerprint
        entries.append(e)
    path.write_text(yaml.safe_dump({"federation": federation, "peers": entries}, sort_keys=False))
    return path
