"""One function per section of a peer's YAML file: reads it with a :class:`.reader._Section`, applies the
section's own rules and defaults, and returns its frozen dataclass (:mod:`.schema`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from p2pgan.algorithm.names import DIRECTION_NAMES, FIRST_STEPS, SCHEDULES
from p2pgan.daemon.config.reader import _REQUIRED, _did_you_mean, _parse_address, _Section
from p2pgan.daemon.config.schema import (
    BACKENDS,
    DEFAULT_TOPOLOGY,
    DEVICES,
    EVALUATIONS,
    RETIRED_VARIANTS,
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
    PRIVACY_MODES,
    PRIVACY_UNITS,
    PrivacyConfig,
    SecurityConfig,
    TrainConfig,
)
from p2pgan.errors import ConfigError
from p2pgan.mixing.robust_config import ROBUST_KINDS, RobustConfig
from p2pgan.topology import TOPOLOGY_NAMES
from p2pgan.trainer.catalog import DATASET_FORMATS, LOSS_NAMES, MODEL_DEFAULTS, MODEL_NAMES
from p2pgan.wire.config import TLSFiles
from p2pgan.wire.limits import MAX_CONNECTIONS


def _identity(sec: _Section) -> IdentityConfig:
    pid = sec.name("id")
    federation = sec.name("federation")
    host, port = _parse_address(sec, "listen", "127.0.0.1:0")
    advertise = sec.string("advertise", None)
    sec.done()
    return IdentityConfig(pid, federation, host, port, advertise)


def _security(sec: _Section) -> SecurityConfig:
    insecure = sec.boolean("insecure", False)
    names = ("ca", "cert", "key")
    given = [n for n in names if sec.has(n)]
    if insecure:
        if given:
            raise sec.error(given[0], "must not be given together with `insecure: true` (choose TLS or insecure)")
        sec.done()
        return SecurityConfig(None, True)
    if len(given) != 3:
        missing = [n for n in names if n not in given]
        raise sec.error(
            missing[0],
            "is required: mutual TLS needs ca, cert and key (PEM files from `p2pgan certs init/issue`); "
            "`insecure: true` turns TLS off for test networks only",
        )
    ca, cert, key = (sec.path(n, must_exist=True) for n in names)
    sec.done()
    return SecurityConfig(TLSFiles(ca=ca, cert=cert, key=key), False)


def _discovery(sec: _Section) -> DiscoveryConfig:
    has_roster, has_zc = sec.has("roster"), sec.has("zeroconf_peers")
    if has_roster == has_zc:
        raise sec.error(
            "roster" if not has_roster else "zeroconf_peers",
            "give exactly one of `roster: PATH` (a static roster YAML) or `zeroconf_peers: N` "
            "(find N members, self included, by mDNS)",
        )
    if has_roster:
        roster = sec.path("roster", must_exist=True)
        sec.done()
        return DiscoveryConfig("roster", roster=roster)
    count = sec.integer("zeroconf_peers", minimum=1)
    if not sec.has("zeroconf_members"):
        # without it, whoever of the federation's certificate holders announces first is a member, and two
        # honest peers can end with different member lists (and different topologies): refused
        raise sec.error("zeroconf_members", f"is required with zeroconf_peers: list the {count} peer ids of the "
                        "federation (the same list on every host), e.g. `zeroconf_members: [alice, bob]`")
    raw = sec.raw("zeroconf_members")
    if not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw) or len(set(raw)) != len(raw):
        raise sec.error("zeroconf_members", f"must be a list of distinct peer ids, got {raw!r}")
    if len(raw) != count:
        raise sec.error("zeroconf_members", f"lists {len(raw)} ids but zeroconf_peers is {count}; they must agree")
    members = tuple(sorted(raw))
    sec.done()
    return DiscoveryConfig("zeroconf", zeroconf_peers=count, zeroconf_members=members)


def _mixing(sec: _Section) -> MixingConfig:
    retired = sec.raw("variant", None)
    if isinstance(retired, str) and retired in RETIRED_VARIANTS:
        raise sec.error("variant", f"{retired!r} is no longer a variant; {RETIRED_VARIANTS[retired]}")
    variant = sec.choice("variant", tuple(VARIANTS), "dp")
    default_schedule, forced_topology, forced_rounds = VARIANTS[variant]
    schedule = sec.choice("schedule", SCHEDULES, default_schedule)
    topology = sec.string("topology", None)
    if topology is not None and topology not in TOPOLOGY_NAMES:
        path = sec.resolve(topology)
        if not path.suffix.lower() in (".yaml", ".yml") or not path.exists():
            hint = _did_you_mean(topology, TOPOLOGY_NAMES)
            raise sec.error(
                "topology",
                f"{topology!r} is neither a topology name{hint} nor an existing YAML adjacency file; "
                f"allowed: {', '.join(TOPOLOGY_NAMES)}, or a path to a .yaml adjacency file",
            )
        topology = str(path)
    if forced_topology is not None:
        if topology is not None and topology != forced_topology:
            raise sec.error("topology", f"variant {variant!r} always mixes over {forced_topology!r}; remove the field or set it to {forced_topology!r}")
        topology = forced_topology
    rounds = sec.integer("rounds", forced_rounds or 1, minimum=0, maximum=1000)
    if forced_rounds is not None and rounds != forced_rounds:
        raise sec.error("rounds", f"variant {variant!r} uses exactly {forced_rounds} round (W = J); got {rounds}")
    cfg = MixingConfig(
        variant=variant,
        schedule=schedule,
        topology=topology or DEFAULT_TOPOLOGY,
        rounds=rounds,
        seed=sec.integer("seed", 0, minimum=0),
        round_timeout_s=sec.number("round_timeout_s", 10.0, positive=True),
        connect_timeout_s=sec.number("connect_timeout_s", 120.0, positive=True),
        wire_dtype=sec.choice("wire_dtype", WIRE_DTYPES, "float32"),
        backend=sec.choice("backend", BACKENDS, "grpc"),
        torch_init=sec.string("torch_init", "env://"),
        start_quorum=sec.integer("start_quorum", None, minimum=1),
        adaptive_deadline=sec.boolean("adaptive_deadline", True),
        first_step=sec.choice("first_step", FIRST_STEPS, "gradient"),
        robust=RobustConfig(
            kind=sec.choice("robust", ROBUST_KINDS, "clip"),
            scale=sec.number("robust_scale", RobustConfig.scale, minimum=1.0),
            suspect_after=sec.integer("robust_suspect_after", RobustConfig.suspect_after, minimum=1),
        ),
        compression=(compression := _compression(sec)),
        # CHOCO's gamma: 1 keeps uncompressed mixing bit for bit; top-k diverges at 1 (docs/results.md)
        consensus_step=sec.number("consensus_step", _default_consensus_step(compression), positive=True),
        key_interval=sec.integer("key_interval", 100, minimum=0),
        streaming=sec.boolean("streaming", True),
        connections=sec.integer("connections", 1, minimum=1, maximum=MAX_CONNECTIONS),
    )
    if cfg.consensus_step > 1:
        raise sec.error("consensus_step", f"must be in (0, 1], got {cfg.consensus_step}")
    if not cfg.torch_init.startswith(TORCH_INIT_SCHEMES):
        raise sec.error("torch_init", f"{cfg.torch_init!r} must start with one of {', '.join(TORCH_INIT_SCHEMES)}")
    sec.done()
    return cfg


def _compression(sec: _Section) -> str:
    """``mixing.compression``, in the form peers compare at Hello (p2pgan.compression.spec)."""
    from p2pgan.compression.spec import canonical

    value = sec.string("compression", "none")
    try:
        return canonical(value, "compression")
    except ConfigError as exc:
        raise sec.error("compression", str(exc).split(": ", 1)[1]) from None


def _default_consensus_step(compression: str) -> float:
    from p2pgan.compression.spec import default_consensus_step

    return default_consensus_step(compression)


def default_seed(peer_id: str) -> int:
    """A PUBLIC seed derived from a peer id: stable, different per id, and known to every member.

    Not a private seed (anyone can replay it): a peer whose ``train.seed`` is unset draws a secret one
    (:mod:`p2pgan.privacy.secrets`). Kept for tools that want a reproducible per-peer stream.
    """
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _train(sec: _Section) -> TrainConfig:
    model = sec.choice("model", MODEL_NAMES)
    defaults = MODEL_DEFAULTS[model]  # the learning rates default per model (sagan128: the paper's own)
    loss = sec.choice("loss", LOSS_NAMES, "wgan-gp")
    optimizer = sec.choice("optimizer", DIRECTION_NAMES, "oadam")
    betas_raw = sec.raw("betas", [0.5, 0.9])
    if (
        not isinstance(betas_raw, list)
        or len(betas_raw) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas_raw)
    ):
        raise sec.error("betas", f"must be a list of two numbers in [0, 1), e.g. [0.5, 0.9]; got {betas_raw!r}")
    has_steps, has_epochs = sec.has("steps"), sec.has("epochs")
    if has_steps and has_epochs:
        raise sec.error("epochs", "give either `steps` or `epochs`, not both")
    if not has_steps and not has_epochs:
        raise sec.error("steps", "is required (or `epochs`): how long to train")
    cfg = TrainConfig(
        model=model,
        loss=loss,
        optimizer=optimizer,
        betas=(float(betas_raw[0]), float(betas_raw[1])),
        lr_generator=sec.number("lr_generator", defaults.lr_generator, positive=True),
        lr_discriminator=sec.number("lr_discriminator", defaults.lr_discriminator, positive=True),
        batch_size=sec.integer("batch_size", 64, minimum=1),
        steps=sec.integer("steps", None, minimum=1),
        epochs=sec.number("epochs", None, positive=True),
        init_seed=sec.integer("init_seed", 0, minimum=0),
        seed=sec.integer("seed", None, minimum=0),
        device=sec.choice("device", DEVICES, "auto"),
        threads=sec.integer("threads", 0, minimum=0),
        width=sec.integer("width", None, minimum=1),
        latent_dim=sec.integer("latent_dim", None, minimum=1),
    )
    sec.done()
    return cfg


def _data(sec: _Section, model: str) -> DataConfig:
    fmt = sec.choice("format", DATASET_FORMATS)
    needs_path = fmt not in ("digits", "gaussians")
    path = sec.path("path", _REQUIRED if needs_path else None, must_exist=True)
    if path is not None and not needs_path:
        raise sec.error("path", f"format {fmt!r} is built in and takes no path; remove the field")
    # an image folder is resized to the side the model makes (its default), and to no other: caught here,
    # before the data are read, rather than as a shape mismatch at start-up
    model_size = MODEL_DEFAULTS[model].image_size
    cfg = DataConfig(fmt, path, sec.integer("image_size", model_size or 32, minimum=4),
                     sec.integer("channels", 3, minimum=1, maximum=3))
    if fmt == "imagefolder" and model_size is not None and cfg.image_size != model_size:
        raise sec.error("image_size", f"must be {model_size} for model {model!r} (it makes {model_size}x{model_size} "
                        f"images), got {cfg.image_size}")
    if cfg.channels == 2:
        raise sec.error("channels", "must be 1 (grey) or 3 (RGB), got 2")
    sec.done()
    return cfg


def _checkpoint(sec: _Section, peer_id: str) -> CheckpointConfig:
    cfg = CheckpointConfig(
        dir=sec.path("dir", f"state/{peer_id}"),
        interval=sec.integer("interval", 500, minimum=1),
        keep=sec.integer("keep", 1, minimum=0),
    )
    sec.done()
    return cfg


def _evaluation(sec: _Section, checkpoint_dir: Path) -> EvaluationConfig:
    cfg = EvaluationConfig(
        interval=sec.integer("interval", 500, minimum=0),
        kind=sec.choice("kind", EVALUATIONS, "auto"),
        samples=sec.integer("samples", 1000, minimum=16),
        grid=sec.integer("grid", 64, minimum=1),
        inception_weights=sec.path("inception_weights", None, must_exist=True),
        cache_dir=sec.path("cache_dir", None),
        out_dir=sec.path("out_dir", str(checkpoint_dir / "samples")),
    )
    if cfg.kind == "inception" and cfg.inception_weights is None:
        raise sec.error("inception_weights", "is required for `kind: inception` (a local weights file; nothing is downloaded)")
    sec.done()
    return cfg


def _metrics(sec: _Section, checkpoint_dir: Path) -> MetricsConfig:
    cfg = MetricsConfig(
        path=sec.path("path", str(checkpoint_dir / "metrics.jsonl")),
        prometheus_port=sec.integer("prometheus_port", None, minimum=0, maximum=65535),
        prometheus_addr=sec.string("prometheus_addr", "127.0.0.1"),
        status_interval_s=sec.number("status_interval_s", 10.0, positive=True),
    )
    sec.done()
    return cfg


def _privacy(sec: _Section) -> PrivacyConfig:
    # YAML 1.1 reads a bare `off` as the boolean false: take it as the mode the user wrote
    mode = "off" if sec.raw("mode", "off") is False else sec.choice("mode", PRIVACY_MODES, "off")
    unit = sec.choice("unit", PRIVACY_UNITS, "example")
    audit_dir = sec.path("audit_dir", None)
    audit_canary = sec.boolean("audit_canary", False)
    if audit_canary and audit_dir is None:
        raise sec.error("audit_canary", "needs `audit_dir` (where the audit record goes)")
    if mode == "off":
        for key in ("target_epsilon", "delta", "noise_multiplier", "clip", "audit_canary"):
            if sec.has(key):
                raise sec.error(key, "has no effect with `mode: off`; set `privacy.mode: dp` or remove the field")
        sec.done()
        return PrivacyConfig(mode="off", unit=unit, audit_dir=audit_dir)
    if not sec.has("target_epsilon") and not sec.has("noise_multiplier"):
        raise sec.error("target_epsilon", "`mode: dp` needs `target_epsilon` (the noise is calibrated to it for the "
                        "planned steps), `noise_multiplier` (sigma, given), or both (sigma given, epsilon the budget)")
    delta = sec.number("delta", None, positive=True)
    if delta is not None and delta >= 1:
        raise sec.error("delta", f"must be in (0, 1), well below 1/n for the site's n examples; got {delta}")
    cfg = PrivacyConfig(
        mode=mode,
        target_epsilon=sec.number("target_epsilon", None, positive=True),
        delta=delta,
        noise_multiplier=sec.number("noise_multiplier", None, minimum=0.0),
        clip=sec.number("clip", 1.0, positive=True),
        unit=unit,
        audit_dir=audit_dir,
        audit_canary=audit_canary,
    )
    sec.done()
    return cfg
