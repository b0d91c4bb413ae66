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

The variant picks the topology (:data:`VARIANTS`): ``dp`` = DPOSG on the configured topology
(default ring), ``rand-dp`` = DPOSG on ``random-ring``, ``cp`` = DPOSG on ``complete`` with one round
(the centralized average). The schedule is its own setting (:data:`p2pgan.algorithm.SCHEDULES`):
``exact`` is Algorithm 1 literally (the one with the proof), ``overlap`` the paper's implementation
(its Section 5.1: the exchange runs while the gradient is computed). Defaults follow the paper's
experiments: ``overlap`` for ``dp`` and ``rand-dp``, ``exact`` for ``cp`` (all-reduce after each
update). ``first_step`` (``gradient`` = Algorithm 1's start, or ``zero``) seeds the first step.
The former ``variant: overlap`` is refused with what to write instead (``variant: dp`` and
``schedule: overlap``), so an old config never silently changes meaning.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from p2pgan.algorithm.directions import DIRECTION_NAMES
from p2pgan.algorithm.dposg import FIRST_STEPS, SCHEDULES
from p2pgan.errors import ConfigError, config_error
from p2pgan.mixing.robust import ROBUST_KINDS, RobustConfig
from p2pgan.security.certs import check_name
from p2pgan.topology import TOPOLOGY_NAMES
from p2pgan.trainer.data import DATASET_FORMATS
from p2pgan.trainer.losses import LOSS_NAMES
from p2pgan.trainer.models import MODEL_DEFAULTS, MODEL_NAMES
from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles

log = logging.getLogger(__name__)

#: variant -> (default schedule, forced topology or None = as configured, forced rounds or None)
VARIANTS: dict[str, tuple[str, str | None, int | None]] = {
    "dp": ("overlap", None, None),
    "rand-dp": ("overlap", "random-ring", None),
    "cp": ("exact", "complete", 1),
}
#: variant names that no longer exist -> what to write instead
RETIRED_VARIANTS = {
    "overlap": "the schedule is its own setting now: write `variant: dp` and `schedule: overlap` "
    "(overlap is already dp's default)",
}
DEVICES = ("auto", "cpu", "cuda")
WIRE_DTYPES = ("float32", "bfloat16", "float16")
#: mixer backends (:func:`p2pgan.daemon.mixer.make_mixer`): the gRPC gossip of p2pgan.wire, or
#: torch.distributed (Gloo / NCCL) for clusters that already run it
BACKENDS = ("grpc", "torch")
#: torch.distributed init methods a config may name (``env://`` = torchrun's variables)
TORCH_INIT_SCHEMES = ("tcp://", "file://", "env://")
EVALUATIONS = ("auto", "digits", "gaussians", "inception", "none")
DEFAULT_TOPOLOGY = "ring"

_INSECURE_WARNING = (
    "INSECURE TRANSPORT: %s runs with `security.insecure: true`: parameters travel in plain text and "
    "any process that can reach the port can join the mix. Use this only on a trusted test network."
)


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    """Who this peer is and where it listens (``peer:`` section)."""

    id: str
    federation: str
    listen_host: str
    listen_port: int
    advertise_host: str | None = None


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    """Mutual-TLS files (``security:`` section); ``tls`` is None only when ``insecure`` is true."""

    tls: TLSFiles | None
    insecure: bool = False


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    """How the membership is found (``discovery:`` section): a roster file or zeroconf."""

    kind: Literal["roster", "zeroconf"]
    roster: Path | None = None
    zeroconf_peers: int | None = None
    #: zeroconf: the ids that may be members (self included); every peer with the same list ends with
    #: the same membership, and any other certificate holder that announces itself is refused
    zeroconf_members: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MixingConfig:
    """Gossip settings (``mixing:`` section), after the variant has been applied."""

    variant: str
    schedule: str  # "exact" or "overlap" (p2pgan.algorithm schedules)
    topology: str
    rounds: int
    seed: int
    round_timeout_s: float
    connect_timeout_s: float
    wire_dtype: str
    backend: str
    torch_init: str = "env://"  # backend torch: tcp://HOST:PORT of rank 0, file:///shared/path, or env://
    #: members (self included) that must answer before step 0 when none trains yet; None = all of them
    start_quorum: int | None = None
    #: rounds wait less than round_timeout_s once they have seen how long complete rounds take
    adaptive_deadline: bool = True
    first_step: str = "gradient"  # "gradient" (Algorithm 1) or "zero" (p2pgan.algorithm.FIRST_STEPS)
    robust: RobustConfig = RobustConfig()  # robust mixing: clip (default), trim or off


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The game and its optimizer (``train:`` section). Exactly one of ``steps`` / ``epochs`` is set."""

    model: str
    loss: str
    optimizer: str
    betas: tuple[float, float]
    lr_generator: float  # default per model (p2pgan.trainer.models.MODEL_DEFAULTS)
    lr_discriminator: float
    batch_size: int
    steps: int | None
    epochs: float | None
    init_seed: int  # model initialisation: the SAME on every peer of a federation
    seed: int  # this peer's private stream of minibatches and noise
    device: str
    threads: int  # torch intra-op threads (0 = torch's default)
    width: int | None  # model size override (channels / hidden units)
    latent_dim: int | None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """This peer's PRIVATE dataset (``data:`` section): nothing from it ever leaves the peer."""

    format: str
    path: Path | None  # None only for the bundled / synthetic formats (digits, gaussians)
    image_size: int  # imagefolder: images are resized to this square (default and only value: the model's side)
    channels: int  # imagefolder: 1 (grey) or 3 (RGB)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    dir: Path
    interval: int  # steps between checkpoints (one is always written at shutdown)
    keep: int  # how many previous checkpoints are kept besides the newest


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    interval: int  # steps between evaluations; 0 = only at the end
    kind: str  # auto: digits for 8x8 images, gaussians for points, inception when weights are given
    samples: int  # generated samples used for the scores
    grid: int  # samples shown in the PNG grid
    inception_weights: Path | None  # local FID Inception weights (pt_inception-2015-12-05-6726825d.pth): standard IS/FID
    cache_dir: Path | None  # where the digits classifier is cached (default $P2PGAN_CACHE or ~/.cache/p2pgan)
    out_dir: Path  # sample grids


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    path: Path  # JSON lines, one per step and one per evaluation
    prometheus_port: int | None
    prometheus_addr: str  # bind address of the endpoint: loopback unless a remote Prometheus must scrape
    status_interval_s: float  # seconds between human-readable status lines on stderr


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """The whole, validated configuration of one peer daemon."""

    source: Path
    peer: IdentityConfig
    security: SecurityConfig
    discovery: DiscoveryConfig
    mixing: MixingConfig
    train: TrainConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    evaluation: EvaluationConfig
    metrics: MetricsConfig


# -- validation helpers ---------------------------------------------------------------------------
_REQUIRED = object()


class _Section:
    """Reads the fields of one mapping, remembering which were used so unknown ones can be reported."""

    def __init__(self, source: str, prefix: str, mapping: object, base_dir: Path) -> None:
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise config_error(source, prefix or "(top level)", f"must be a mapping of fields, got {_kind(mapping)}")
        for key in mapping:
            if not isinstance(key, str):
                raise config_error(source, self._join(prefix, str(key)), "field names must be strings")
        self.source = source
        self.prefix = prefix
        self.base_dir = base_dir
        self._data: dict[str, Any] = dict(mapping)
        self._allowed: list[str] = []

    @staticmethod
    def _join(prefix: str, key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def field(self, key: str) -> str:
        return self._join(self.prefix, key)

    def error(self, key: str, problem: str) -> ConfigError:
        return config_error(self.source, self.field(key), problem)

    def has(self, key: str) -> bool:
        self._allowed.append(key)
        return self._data.get(key) is not None

    def raw(self, key: str, default: Any = _REQUIRED) -> Any:
        self._allowed.append(key)
        value = self._data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        return value

    def missing(self, key: str, default: Any) -> bool:
        """True when ``key`` is absent and has a default (the typed readers then return the default as is)."""
        self._allowed.append(key)
        return self._data.get(key) is None and default is not _REQUIRED

    def section(self, key: str) -> _Section:
        self._allowed.append(key)
        return _Section(self.source, self.field(key), self._data.get(key), self.base_dir)

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {_kind(value)}")
        return value

    def name(self, key: str) -> str:
        """A peer id or federation name (they become certificate identities and DNS labels)."""
        value = self.string(key)
        try:
            return check_name(value, key.replace("id", "peer id"))
        except ConfigError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if not isinstance(value, str) or value not in allowed:
            hint = _did_you_mean(str(value), allowed)
            raise self.error(key, f"{value!r} is not allowed{hint}; allowed: {', '.join(allowed)}")
        return value

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_kind(value)}")
        _check_range(self, key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, minimum: float | None = None, positive: bool = False) -> Any:
        if self.missing(key, default):
            return default
        value = self.raw(key)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                raise self.error(key, f"must be a number, got the string {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.error(key, f"must be a number, got {_kind(value)}")
        if positive and value <= 0:
            raise self.error(key, f"must be > 0, got {value}")
        _check_range(self, key, value, minimum, None)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_kind(value)}")
        return value

    def path(self, key: str, default: Any = _REQUIRED, *, must_exist: bool = False) -> Any:
        value = self.string(key, default)
        if value is None:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = self.base_dir / p
        if must_exist and not p.exists():
            raise self.error(key, f"{p} does not exist")
        return p

    def check_known(self, names: tuple[str, ...], what: str = "field") -> None:
        """Raise on a key outside ``names`` before any is read (an unknown section, named as such)."""
        for key in self._data:
            if key not in names:
                raise self.error(key, f"unknown {what}{_did_you_mean(key, list(names))}; allowed: {', '.join(names)}")

    def done(self) -> None:
        """Raise on the first key that no reader asked for (a typo or a field that does not exist)."""
        for key in self._data:
            if key not in self._allowed:
                hint = _did_you_mean(key, self._allowed)
                allowed = ", ".join(sorted(set(self._allowed)))
                raise self.error(key, f"unknown field{hint}; allowed here: {allowed}")


def _check_range(sec: _Section, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise sec.error(key, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise sec.error(key, f"must be <= {maximum}, got {value}")


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (Mapping, list)):
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(dict.fromkeys(options)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_address(sec: _Section, key: str, default: str) -> tuple[str, int]:
    value = sec.string(key, default)
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise sec.error(key, f"{value!r} is not HOST:PORT with a port in 0..65535 (0 = any free port)")
    return host, int(port_text)


# -- the sections ---------------------------------------------------------------------------------
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
    members = None
    if sec.has("zeroconf_members"):
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
        path = Path(topology).expanduser()
        path = path if path.is_absolute() else sec.base_dir / path
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
    )
    if not cfg.torch_init.startswith(TORCH_INIT_SCHEMES):
        raise sec.error("torch_init", f"{cfg.torch_init!r} must start with one of {', '.join(TORCH_INIT_SCHEMES)}")
    sec.done()
    return cfg


def default_seed(peer_id: str) -> int:
    """A peer's default private seed: stable, and different for different peer ids."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _train(sec: _Section, peer_id: str) -> TrainConfig:
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
        seed=sec.integer("seed", default_seed(peer_id), minimum=0),
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


SECTIONS = ("peer", "security", "discovery", "mixing", "train", "data", "checkpoint", "evaluation", "metrics")


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
    train = _train(top.section("train"), ident.id)
    data_cfg = _data(top.section("data"), train.model)
    checkpoint = _checkpoint(top.section("checkpoint"), ident.id)
    evaluation = _evaluation(top.section("evaluation"), checkpoint.dir)
    metrics = _metrics(top.section("metrics"), checkpoint.dir)
    top.done()
    if mixing.backend == "torch":
        # torch.distributed has neither authentication nor encryption: say so by choosing insecure explicitly
        if not security.insecure:
            raise config_error(str(source), "mixing.backend", "'torch' (torch.distributed) has no TLS or peer "
                               "authentication; it needs `security.insecure: true` (trusted cluster networks only)")
        if discovery.kind != "roster":
            raise config_error(str(source), "mixing.backend", "'torch' needs `discovery.roster` (a fixed, ordered "
                               "membership: rank = position of the peer id in the sorted roster)")
        if mixing.wire_dtype != "float32":  # it would be ignored silently: the torch mixer sends float32 tensors
            raise config_error(str(source), "mixing.wire_dtype", f"{mixing.wire_dtype!r} is the gRPC backend's; "
                               "backend 'torch' sends float32 (remove the field or set it to float32)")
    return PeerConfig(source_path, ident, security, discovery, mixing, train, data_cfg, checkpoint, evaluation, metrics)


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
    )
