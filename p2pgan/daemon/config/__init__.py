"""A peer daemon's YAML configuration: frozen dataclasses, validated in one place.

:func:`load_config` reads the file with ``yaml.safe_load`` and checks every field; every error names the
file, the field as a dotted path and what is allowed (an unknown key is an error too, with a
did-you-mean). Relative paths are resolved against the directory of the YAML file, so a config folder
can be moved as a whole. Example (see ``peers/`` for complete files)::

    peer:       {id: alice, federation: demo, listen: "0.0.0.0:7000"}
    security:   {ca: certs/ca.pem, cert: certs/alice.pem, key: certs/alice.key}   # or insecure: true
    discovery:  {roster: roster.yaml}                                          # or zeroconf_peers: 4
    mixing:     {variant: dp, schedule: overlap, topology: ring, rounds: 1}
    train:      {model: digits, loss: wgan-gp, optimizer: oadam, steps: 2000}
    data:       {format: digits, path: data/alice}
    checkpoint: {dir: state/alice, interval: 200}
    evaluation: {interval: 200}
    metrics:    {path: state/alice/metrics.jsonl}

The package, in layers: :mod:`.schema` (the frozen dataclasses and allowed values, the variants
explained), :mod:`.reader` (the YAML-walking :class:`~.reader._Section`, no p2pgan knowledge),
:mod:`.sections` (one reader per section, with its rules and defaults) and this module, which ties
them together (:func:`parse_config`, ``--set`` :func:`apply_overrides`, :func:`load_config`,
:func:`network_config`) and re-exports what the rest of p2pgan imports from here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from p2pgan.daemon.config.reader import _Section
from p2pgan.daemon.config.schema import (
    BACKENDS,
    DEFAULT_TOPOLOGY,
    DEVICES,
    EVALUATIONS,
    RETIRED_VARIANTS,
    SECTIONS,
    TORCH_INIT_SCHEMES,
    VARIANTS,
    WIRE_DTYPES,
    CheckpointConfig,
    DataConfig,
    DiscoveryConfig,
    EvaluationConfig,
    IdentityConfig,
    MetricsConfig,
    MixingConfig,
    PeerConfig,
    PrivacyConfig,
    SecurityConfig,
    TrainConfig,
)
from p2pgan.daemon.config.sections import (
    _checkpoint,
    _data,
    _discovery,
    _evaluation,
    _identity,
    _metrics,
    _mixing,
    _privacy,
    _security,
    _train,
    default_seed,
)
from p2pgan.errors import ConfigError, config_error
from p2pgan.wire.config import WILDCARD_HOSTS, NetworkConfig, PeerEntry

__all__ = [
    "BACKENDS",
    "DEFAULT_TOPOLOGY",
    "DEVICES",
    "EVALUATIONS",
    "RETIRED_VARIANTS",
    "SECTIONS",
    "TORCH_INIT_SCHEMES",
    "VARIANTS",
    "WIRE_DTYPES",
    "CheckpointConfig",
    "DataConfig",
    "DiscoveryConfig",
    "EvaluationConfig",
    "IdentityConfig",
    "MetricsConfig",
    "MixingConfig",
    "PeerConfig",
    "PrivacyConfig",
    "SecurityConfig",
    "TrainConfig",
    "apply_overrides",
    "default_seed",
    "load_config",
    "network_config",
    "parse_config",
]

log = logging.getLogger(__name__)

_INSECURE_WARNING = (
    "INSECURE TRANSPORT: %s runs with `security.insecure: true`: parameters travel in plain text and "
    "any process that can reach the port can join the mix. Use this only on a trusted test network."
)


def parse_config(data: object, source: str | Path, base_dir: Path | None = None) -> PeerConfig:
    """Validate an already parsed YAML document (``source`` names it in errors)."""
    source_path = Path(source)
    base = base_dir if base_dir is not None else source_path.parent
    top = _Section(str(source), "", data, base)
    top.check_known(SECTIONS, "section")  # before `peer.id: is required` would hide a misspelt `peer:`
    ident = _identity(top.section("peer"))
    security = _security(top.section("security"))
    discovery = _discovery(top.section("discovery"))
    mixing = _mixing(top.section("mixing"))
    train = _train(top.section("train"))
    data_cfg = _data(top.section("data"), train.model)
    checkpoint = _checkpoint(top.section("checkpoint"), ident.id)
    evaluation = _evaluation(top.section("evaluation"), checkpoint.dir)
    metrics = _metrics(top.section("metrics"), checkpoint.dir)
    privacy = _privacy(top.section("privacy"))
    top.done()
    _check_identity_against_discovery(str(source), ident, discovery)
    if mixing.backend == "torch":
        # torch.distributed has neither authentication nor encryption: say so by choosing insecure explicitly
        if not security.insecure:
            raise config_error(str(source), "mixing.backend", "'torch' (torch.distributed) has no TLS or peer "
                               "authentication; it needs `security.insecure: true` (trusted cluster networks only)")
        if discovery.kind != "roster":
            raise config_error(str(source), "mixing.backend", "'torch' needs `discovery.roster` (a fixed, ordered "
                               "membership: rank = position of the peer id in the sorted roster)")
        if mixing.compression != "none":
            raise config_error(str(source), "mixing.compression", f"{mixing.compression!r} is the gRPC backend's; "
                               "backend 'torch' sends float32 vectors (remove the field or set it to none)")
        if mixing.connections != 1:
            raise config_error(str(source), "mixing.connections", f"{mixing.connections} is the gRPC backend's; "
                               "backend 'torch' has its own connections (remove the field or set it to 1)")
        if mixing.wire_dtype != "float32":  # it would be ignored silently: the torch mixer sends float32 tensors
            raise config_error(str(source), "mixing.wire_dtype", f"{mixing.wire_dtype!r} is the gRPC backend's; "
                               "backend 'torch' sends float32 (remove the field or set it to float32)")
    if privacy.enabled and train.seed is not None:
        log.warning("%s: train.seed is set with privacy.mode: dp: this site's minibatch order and latent noise "
                    "are replayable by whoever knows the seed (fine for experiments; leave it unset for a real "
                    "site); the DP noise itself always comes from the OS", source)
    return PeerConfig(source_path, ident, security, discovery, mixing, train, data_cfg, checkpoint, evaluation, metrics,
                      privacy)


def _check_identity_against_discovery(source: str, ident: IdentityConfig, discovery: DiscoveryConfig) -> None:
    """Zeroconf: this peer must be one of ``zeroconf_members`` and announce an address others can dial."""
    if discovery.kind != "zeroconf":
        return  # a roster's own-id check is where the roster is read (p2pgan.daemon.mixer)
    if discovery.zeroconf_members is not None and ident.id not in discovery.zeroconf_members:
        raise config_error(source, "discovery.zeroconf_members", f"{list(discovery.zeroconf_members)} does not "
                           f"list this peer {ident.id!r} (peer.id); every member's list must name every member")
    if (ident.advertise_host or ident.listen_host) in WILDCARD_HOSTS:
        raise config_error(source, "peer.advertise", f"zeroconf announces this peer's address, and peer.listen "
                           f"{ident.listen_host!r} is a wildcard: set the address the others should dial, "
                           "e.g. `peer: {advertise: 192.168.1.20}`")


def apply_overrides(data: object, overrides: Sequence[str], source: str) -> object:
    """``data`` with each ``SECTION.FIELD=VALUE`` of ``overrides`` set (VALUE read as YAML: ``500`` is a
    number, ``[0.5, 0.9]`` a list, ``true`` a boolean), as if the file said so."""
    data = dict(data) if isinstance(data, Mapping) else data
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise config_error(f"--set {item}", "", "must be SECTION.FIELD=VALUE, e.g. --set train.steps=500")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise config_error(f"--set {item}", "", f"{raw!r} is not a YAML value") from None
        if not isinstance(data, Mapping):
            raise config_error(source, "", "the file must be a mapping of sections to apply --set")
        node: dict[str, Any] = data  # type: ignore[assignment]
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise config_error(f"--set {item}", ".".join(parts[: depth + 1]), "is not a section of fields")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PeerConfig:
    """Read and validate a peer's YAML file, with ``--set`` ``overrides`` (:func:`apply_overrides`) applied
    first; raises :class:`ConfigError` naming the file (or the override) and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise config_error(str(path), "", "no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error(str(path), "", f"cannot read it: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise config_error(str(path), "", f"not valid YAML{where}: {problem}") from None
    if data is None and not overrides:
        raise config_error(str(path), "", f"the file is empty; it needs the sections {', '.join(SECTIONS)}")
    data = apply_overrides(data if data is not None else {}, overrides, str(path))
    try:
        cfg = parse_config(data, path, path.resolve().parent)
    except ConfigError as exc:  # a bad overridden field: name the override the user typed, not the file
        rest = str(exc).removeprefix(f"{path}: ")
        field = rest.split(":", 1)[0]
        for item in reversed(overrides):
            key = item.partition("=")[0].strip()
            if key == field or key.startswith(field + ".") or field.startswith(key + "."):
                raise ConfigError(f"--set {item}: {rest}") from None
        raise
    if cfg.security.insecure:
        log.warning(_INSECURE_WARNING, cfg.peer.id)
    return cfg


def network_config(cfg: PeerConfig, roster: tuple[PeerEntry, ...] = ()) -> NetworkConfig:
    """The wire's view of ``cfg``; ``roster`` is the member list read from ``cfg.discovery.roster``."""
    return NetworkConfig(
        federation=cfg.peer.federation,
        peer_id=cfg.peer.id,
        listen_host=cfg.peer.listen_host,
        listen_port=cfg.peer.listen_port,
        advertise_host=cfg.peer.advertise_host,
        tls=cfg.security.tls,
        insecure=cfg.security.insecure,
        discovery=cfg.discovery.kind,
        roster=roster,
        expected_peers=cfg.discovery.zeroconf_peers,
        allowed_members=cfg.discovery.zeroconf_members,
        topology=cfg.mixing.topology,
        seed=cfg.mixing.seed,
        rounds=cfg.mixing.rounds,
        round_timeout_s=cfg.mixing.round_timeout_s,
        connect_timeout_s=cfg.mixing.connect_timeout_s,
        start_quorum=cfg.mixing.start_quorum,
        adaptive_deadline=cfg.mixing.adaptive_deadline,
        wire_dtype=cfg.mixing.wire_dtype,  # type: ignore[arg-type]
        robust=cfg.mixing.robust,
        compression=cfg.mixing.compression,
        consensus_step=cfg.mixing.consensus_step,
        key_interval=cfg.mixing.key_interval,
        streaming=cfg.mixing.streaming,
        connections=cfg.mixing.connections,
    )
