"""The shape of a peer's configuration: frozen dataclasses, one per YAML section, and the allowed values.

Nothing here reads YAML (:mod:`.reader` and :mod:`.sections` do); these are the types the rest of the
daemon receives from :func:`p2pgan.daemon.config.load_config`.

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
from pathlib import Path
from typing import Literal

from p2pgan.mixing.robust_config import RobustConfig
from p2pgan.wire.config import TLSFiles

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
#: the top-level sections of a peer's YAML file, in the order they are read
SECTIONS = ("peer", "security", "discovery", "mixing", "train", "data", "checkpoint", "evaluation", "metrics",
            "privacy")
#: ``privacy.mode``: ``off`` (no formal privacy) or ``dp`` (differentially private discriminator updates)
PRIVACY_MODES = ("off", "dp")
#: ``privacy.unit``: what one neighbouring dataset differs by (only single examples are built)
PRIVACY_UNITS = ("example",)


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
    compression: str = "none"  # compressed gossip (p2pgan.compression): none | identity | bf16-delta | int8 | topk:F
    consensus_step: float = 1.0  # CHOCO's gamma (compressed gossip only)
    key_interval: int = 100  # steps between full public copies on every link (compressed gossip only)
    #: compressed gossip: a message leaves while it is written and is applied while it arrives (the round's CPU
    #: overlaps its link); False does each in turn, for hosts with no core to spare beside the training
    streaming: bool = True
    connections: int = 1  # gRPC connections (TCP + TLS sessions) per neighbour; a message's shards striped over them


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
    #: this peer's private stream of minibatches and noise; None (the default) = a secret seed drawn from
    #: the OS at first start and kept in the checkpoint (p2pgan.privacy.secrets)
    seed: int | None
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
class PrivacyConfig:
    """Differential privacy of this site's data (``privacy:`` section; :mod:`p2pgan.privacy`).

    ``mode: dp`` privatises the discriminator's real-data term (Poisson sampling, per-example clipping to
    ``clip``, Gaussian noise); the noise multiplier is either given (``noise_multiplier``) or calibrated at
    start from ``target_epsilon`` and ``delta`` for the planned steps; with both, sigma is given and
    ``target_epsilon`` is the budget the site stops at. ``delta`` None = the default for the
    site's n examples (:func:`p2pgan.privacy.accountant.default_delta`).
    """

    mode: str = "off"
    target_epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    clip: float = 1.0
    unit: str = "example"
    #: audit recording (off by default; a debugging aid for `p2pgan audit privacy`): each step, the
    #: discriminator part of the vectors this peer sent and mixed, and its minibatch's indices (private:
    #: the folder must stay on the site)
    audit_dir: Path | None = None
    #: the canary audit: a public gradient canary enters the clipped sum with probability 1/2 per step (dp only)
    audit_canary: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode == "dp"


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
    privacy: PrivacyConfig = PrivacyConfig()
