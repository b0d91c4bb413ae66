"""The local harness: a throw-away federation of M real peer daemons on this machine, and its report.

:func:`run_harness` makes, under ``out``:

- ``federation/``: a CA and one certificate per peer (mutual TLS on loopback), the roster;
- ``data/<peer>/``: each peer's private shard of the dataset (IID or by label), nothing else shared;
- ``peers/<peer>.yaml``: each peer's daemon config (the same format a real site uses, see ``peers/``);
- ``state/<peer>/``: what each daemon writes (checkpoints, metrics, sample grids, log);

then starts the M daemons as OS processes (``python -m p2pgan peer --config ...``), shows overall
progress from their metrics files, stops them cleanly (also on Ctrl-C or when one dies, naming it with
its log tail) and writes ``report.md`` and ``report.json`` with PNG curves and sample grids, read against
the same evaluator's score on real data (:mod:`p2pgan.report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from p2pgan.errors import ConfigError
from p2pgan.faults import FaultRunner, parse_faults

if TYPE_CHECKING:  # the modules that import torch are imported where used: `harness --help` stays fast
    from p2pgan.daemon.processes import MetricsTail, PeerSpec

log = logging.getLogger(__name__)

FEDERATION = "harness"
#: dataset -> (model, evaluation kind) used when the harness is not told otherwise
DATASET_MODELS = {"digits": "digits", "gaussians": "mlp2d", "cifar10": "dcgan32", "imagefolder": "dcgan32"}
#: synthetic 8-Gaussians points split among the peers
GAUSSIANS_TOTAL = 10_000
#: seconds between looks at the peers' progress (faults fire at most this late after their step)
FAULT_TICK_S = 0.1
#: folders of a run: the withheld data (--holdout) and the peers' audit records (--audit-record)
HOLDOUT_DIR, AUDIT_DIR = "holdout", "audit"
#: the holdout split's seed is the run's --seed plus this (the split differs from the shards' own)
HOLDOUT_SEED_OFFSET = 17
#: seconds between two status lines when the output is not a terminal (CI, nohup, a pipe)
STATUS_INTERVAL_S = 15.0


@dataclasses.dataclass(frozen=True)
class HarnessOptions:
    """What ``p2pgan harness`` runs (command-line flags map one to one)."""

    peers: int
    out: Path
    steps: int = 300
    dataset: str = "digits"  # digits | gaussians | a CIFAR-10 batch folder | an image folder
    topology: str = "ring"
    rounds: int = 1
    variant: str = "dp"
    schedule: str | None = None  # exact | overlap; None = the variant's default (the paper's)
    discovery: str = "roster"
    split: str = "iid"
    model: str | None = None  # default: by dataset (DATASET_MODELS)
    loss: str = "wgan-gp"
    optimizer: str = "oadam"
    batch_size: int = 32
    lr_generator: float | None = None  # default: the model's (MODEL_DEFAULTS; sagan128: 1e-3)
    lr_discriminator: float | None = None  # default: the model's (MODEL_DEFAULTS; sagan128: 4e-5)
    width: int | None = None
    eval_interval: int | None = None  # default: steps // 10
    checkpoint_interval: int | None = None  # default: steps // 4
    round_timeout_s: float = 10.0
    wire_dtype: str = "float32"  # mixing.wire_dtype: float32 | bfloat16 | float16 (gRPC backend)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    insecure: bool = False
    backend: str = "grpc"  # grpc | torch (torch.distributed Gloo; needs insecure and roster discovery)
    faults: tuple[str, ...] = ()  # --fault specs (p2pgan.faults)
    overrides: tuple[str, ...] = ()  # --set SECTION.FIELD=VALUE, applied to every peer's config
    link: str | None = None  # --link RATE:DELAY: every pair of peers on its own emulated link (p2pgan.netem)
    holdout: float = 0.0  # fraction of the dataset withheld from every peer (OUT/holdout: the audit's non-members)
    audit_record: bool = False  # each peer writes privacy.audit_dir = OUT/audit/<peer> (p2pgan audit privacy)
    timeout_s: float = 24 * 3600.0

    def validate(self) -> None:
        from p2pgan.algorithm.directions import DIRECTION_NAMES
        from p2pgan.algorithm.dposg import SCHEDULES
        from p2pgan.daemon.config import BACKENDS, RETIRED_VARIANTS, VARIANTS
        from p2pgan.topology import TOPOLOGY_NAMES
        from p2pgan.trainer.data import SHARD_MODES
        from p2pgan.trainer.losses import LOSS_NAMES
        from p2pgan.trainer.models import MODEL_NAMES
        from p2pgan.wire.codec import WIRE_DTYPES

        def bad(flag: str, problem: str) -> ConfigError:
            return ConfigError(f"--{flag}: {problem}")

        if self.peers < 1:
            raise bad("peers", f"must be >= 1, got {self.peers}")
        if self.steps < 1:
            raise bad("steps", f"must be >= 1, got {self.steps}")
        if not 0 <= self.holdout < 1:
            raise bad("holdout", f"must be a fraction in [0, 1), got {self.holdout}")
        if self.rounds < 0:
            raise bad("rounds", f"must be >= 0, got {self.rounds}")
        if self.variant in RETIRED_VARIANTS:
            raise bad("variant", f"{self.variant!r} is no longer a variant; use --variant dp --schedule overlap")
        if self.variant not in VARIANTS:
            raise bad("variant", f"{self.variant!r} is not allowed; allowed: {', '.join(VARIANTS)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise bad("schedule", f"{self.schedule!r} is not allowed; allowed: {', '.join(SCHEDULES)}")
        if self.discovery not in ("roster", "zeroconf"):
            raise bad("discovery", f"{self.discovery!r} is not allowed; allowed: roster, zeroconf")
        if self.batch_size < 1:
            raise bad("batch-size", f"must be >= 1, got {self.batch_size}")
        for flag, lr in (("lr-g", self.lr_generator), ("lr-d", self.lr_discriminator)):
            if lr is not None and not lr > 0:
                raise bad(flag, f"must be > 0, got {lr}")
        if self.topology not in TOPOLOGY_NAMES and not Path(self.topology).is_file():
            raise bad("topology", f"{self.topology!r} is not allowed; allowed: {', '.join(TOPOLOGY_NAMES)} or a YAML file")
        for flag, value, allowed in (("model", self.model, MODEL_NAMES), ("loss", self.loss, LOSS_NAMES),
                                     ("optimizer", self.optimizer, DIRECTION_NAMES), ("split", self.split, SHARD_MODES)):
            if value is not None and value not in allowed:
                raise bad(flag, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        if self.backend not in BACKENDS:
            raise bad("backend", f"{self.backend!r} is not allowed; allowed: {', '.join(BACKENDS)}")
        if self.backend == "torch" and (not self.insecure or self.discovery != "roster"):
            raise bad("backend", "torch (torch.distributed, no TLS) needs --insecure and --discovery roster")
        if self.wire_dtype not in WIRE_DTYPES:
            raise bad("wire-dtype", f"{self.wire_dtype!r} is not allowed; allowed: {', '.join(WIRE_DTYPES)}")
        if self.wire_dtype != "float32" and self.backend != "grpc":
            raise bad("wire-dtype", "only the gRPC backend rounds what it sends; torch.distributed sends float32")
        if self.faults and self.backend != "grpc":
            raise bad("fault", "faults need the gRPC backend (torch.distributed has a fixed world)")
        parse_faults(self.faults, self.peers, self.steps)
        if self.link is not None:
            from p2pgan.netem import parse_link

            parse_link(self.link)
            if self.backend != "grpc" or self.discovery != "roster":
                raise bad("link", "emulated links need the gRPC backend and --discovery roster (each peer's roster "
                                  "routes its neighbours through the pair's relay)")
        from p2pgan.daemon.config import apply_overrides

        apply_overrides({}, self.overrides, "--set")  # the form of each override; its value is checked in prepare

    @property
    def late_joiners(self) -> int:
        return sum(1 for f in parse_faults(self.faults, self.peers) if f.kind == "join")


def peer_ids(count: int) -> list[str]:
    """``peer0 .. peer{M-1}``, zero-padded so that sorting them keeps their order (rank = index)."""
    width = len(str(count - 1))
    return [f"peer{i:0{width}d}" for i in range(count)]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (held open together while choosing, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def source_format(spec: str) -> str:
    """What ``--dataset`` names: ``digits``, ``gaussians``, ``cifar10`` (a batch folder) or ``imagefolder``."""
    if spec in ("digits", "gaussians"):
        return spec
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--dataset: {spec!r} is neither digits, gaussians nor an existing folder")
    return "cifar10" if (path / "data_batch_1").is_file() else "imagefolder"


def load_source_dataset(spec: str, *, seed: int = 0, image_size: int | None = None) -> tuple[Any, str]:
    """The dataset to split: ``digits``, ``gaussians`` or a folder (CIFAR-10 batches or ImageFolder layout).

    An image folder is resized to ``image_size`` squares (default 32; :func:`prepare` passes the model's side).
    """
    from p2pgan.trainer.data import gaussians, load_dataset, load_digits

    fmt = source_format(spec)
    if fmt == "digits":
        return load_digits(), fmt
    if fmt == "gaussians":
        return gaussians(GAUSSIANS_TOTAL, seed=seed), fmt
    return load_dataset(fmt, Path(spec).expanduser(), image_size=image_size or 32), fmt


@dataclasses.dataclass(frozen=True)
class Federation:
    """What :func:`prepare` wrote: the peers' ids, configs, and shard sizes."""

    out: Path
    ids: list[str]
    configs: dict[str, Path]
    model: str
    source_format: str
    lr_generator: float  # the learning rates the peers were given (the flags', else the model's defaults)
    lr_discriminator: float
    image_size: int | None = None  # side an image folder was resized to (the model's); None: not resized
    #: with --link: each peer's server port, and the port of the relay peer a dials to reach peer b
    peer_ports: dict[str, int] = dataclasses.field(default_factory=dict)
    link_ports: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def specs(self, resume: bool = False) -> list[PeerSpec]:
        from p2pgan.daemon.config import load_config
        from p2pgan.daemon.processes import PeerSpec

        specs = []
        for pid in self.ids:
            cfg = load_config(self.configs[pid])
            specs.append(PeerSpec(pid, self.configs[pid], self.out / "state" / pid / "daemon.log", cfg.metrics.path, resume))
        return specs


def prepare(opts: HarnessOptions) -> Federation:
    """Write certificates, roster, shards and per-peer configs under ``opts.out``; a refused option
    (a ConfigError) leaves no folder behind that was not there before."""
    out = opts.out.resolve()
    existed = out.exists()
    try:
        return _prepare(opts)
    except ConfigError:
        if not existed and out.exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def _prepare(opts: HarnessOptions) -> Federation:
    from p2pgan.daemon.config import VARIANTS, apply_overrides, load_config
    from p2pgan.discovery import write_roster
    from p2pgan.security.certs import make_federation
    from p2pgan.trainer.data import write_shards
    from p2pgan.trainer.models import MODEL_DEFAULTS
    from p2pgan.wire.config import PeerEntry

    opts.validate()
    out = opts.out.resolve()
    if (out / "state").is_dir() and any((out / "state").iterdir()):
        raise ConfigError(f"--out: {out} already holds a harness run (its state/ folder); choose a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".p2pgan-write-check").touch()
        (out / ".p2pgan-write-check").unlink()
    except OSError as exc:
        raise ConfigError(f"--out: cannot write to {out} ({exc.strerror or exc}); give a folder you can write to") from None
    ids = peer_ids(opts.peers)
    model = opts.model or DATASET_MODELS[source_format(opts.dataset)]
    defaults = MODEL_DEFAULTS[model]
    # an image folder is resized to the side the model makes (sagan128: 128), as a peer's own imagefolder is
    dataset, fmt = load_source_dataset(opts.dataset, seed=opts.seed, image_size=defaults.image_size)
    if opts.holdout:  # withheld from every peer: the privacy audit's non-members
        from p2pgan.trainer.data import holdout_split, save_shard

        dataset, held = holdout_split(dataset, opts.holdout, seed=opts.seed + HOLDOUT_SEED_OFFSET)
        save_shard(held, out / HOLDOUT_DIR)
    if len(dataset) < opts.peers:
        raise ConfigError(f"--peers: {opts.peers} peers cannot share {len(dataset)} samples")
    shape, side = tuple(dataset.x.shape[1:]), defaults.image_size
    if (side is None) != (len(shape) == 1) or (side is not None and shape[-2:] != (side, side)):
        makes = "2-D points" if side is None else f"{side}x{side} images"
        holds = f"{shape[-2]}x{shape[-1]} images" if len(shape) == 3 else f"{shape[-1]}-D points"
        raise ConfigError(f"--model: {model} makes {makes} but --dataset {opts.dataset} holds {holds}; "
                          f"choose a model for this data (default: {DATASET_MODELS[fmt]})")
    lr_g = opts.lr_generator if opts.lr_generator is not None else defaults.lr_generator
    lr_d = opts.lr_discriminator if opts.lr_discriminator is not None else defaults.lr_discriminator
    shard_dirs = write_shards(dataset, out / "data", opts.peers, mode=opts.split, seed=opts.seed, names=ids)
    tls = {} if opts.insecure else make_federation(out / "federation", FEDERATION, ids)
    roster_path = out / "federation" / "roster.yaml"
    ports = free_ports(opts.peers) if opts.discovery == "roster" else [0] * opts.peers
    rosters = {pid: roster_path for pid in ids}
    link_ports: dict[tuple[str, str], int] = {}
    if opts.discovery == "roster":
        roster_path.parent.mkdir(parents=True, exist_ok=True)
        write_roster(roster_path, FEDERATION, [PeerEntry(pid, "127.0.0.1", port) for pid, port in zip(ids, ports)])
    if opts.link is not None:  # peer a reaches peer b through the relay of the pair (a, b): a roster per peer
        pairs = [(a, b) for a in ids for b in ids if a != b]
        link_ports = dict(zip(pairs, free_ports(len(pairs))))
        for a, own in zip(ids, ports):
            rosters[a] = roster_path.with_name(f"roster-{a}.yaml")
            write_roster(rosters[a], FEDERATION, [PeerEntry(b, "127.0.0.1", own if a == b else link_ports[a, b])
                                                  for b in ids])
    torch_init = f"tcp://127.0.0.1:{free_ports(1)[0]}" if opts.backend == "torch" else None
    eval_interval = opts.eval_interval if opts.eval_interval is not None else max(1, opts.steps // 10)
    ckpt_interval = opts.checkpoint_interval if opts.checkpoint_interval is not None else max(1, opts.steps // 4)
    configs = {}
    for pid, port, shard in zip(ids, ports, shard_dirs):
        state = out / "state" / pid
        doc: dict[str, Any] = {
            "peer": {"id": pid, "federation": FEDERATION, "listen": f"127.0.0.1:{port}"},
            "security": {"insecure": True} if opts.insecure else
            {"ca": str(tls[pid].ca), "cert": str(tls[pid].cert), "key": str(tls[pid].key)},
            "discovery": {"roster": str(rosters[pid])} if opts.discovery == "roster" else
            {"zeroconf_peers": opts.peers, "zeroconf_members": ids},
            "mixing": {"variant": opts.variant, "rounds": opts.rounds, "seed": opts.seed,
                       "round_timeout_s": opts.round_timeout_s},
            "train": {"model": model, "loss": opts.loss, "optimizer": opts.optimizer, "batch_size": opts.batch_size,
                      "lr_generator": lr_g, "lr_discriminator": lr_d,
                      "steps": opts.steps, "init_seed": opts.seed, "threads": opts.threads, "device": opts.device},
            "data": {"format": "shard", "path": str(shard)},
            "checkpoint": {"dir": str(state), "interval": ckpt_interval},
            "evaluation": {"interval": eval_interval},
            "metrics": {"path": str(state / "metrics.jsonl")},
        }
        if opts.audit_record:
            doc["privacy"] = {"audit_dir": str(out / AUDIT_DIR / pid)}
        if torch_init is not None:
            doc["mixing"].update(backend="torch", torch_init=torch_init)
        if opts.schedule is not None:
            doc["mixing"]["schedule"] = opts.schedule
        if opts.wire_dtype != "float32":
            doc["mixing"]["wire_dtype"] = opts.wire_dtype
        if VARIANTS[opts.variant][1] is None:
            doc["mixing"]["topology"] = opts.topology
        if VARIANTS[opts.variant][2] is not None:
            doc["mixing"].pop("rounds")
        if opts.width is not None:
            doc["train"]["width"] = opts.width
        if opts.late_joiners:  # the others start without the late joiners
            doc["mixing"]["start_quorum"] = opts.peers - opts.late_joiners
        path = out / "peers" / f"{pid}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# written by p2pgan harness for a throw-away federation on loopback\n"
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        # the harness writes only configs a daemon accepts; a bad --set is named as the user typed it
        load_config(path, opts.overrides)
        if opts.overrides:
            doc = apply_overrides(doc, opts.overrides, str(path))
            path.write_text(header + "# with --set " + " --set ".join(opts.overrides) + "\n"
                            + yaml.safe_dump(doc, sort_keys=False))
        configs[pid] = path
    image_size = defaults.image_size if fmt == "imagefolder" else None
    return Federation(out, ids, configs, model, fmt, lr_g, lr_d, image_size,
                      peer_ports=dict(zip(ids, ports)) if link_ports else {}, link_ports=link_ports)


#: real samples in the reference grid and, for the synthetic Gaussians, in the reference score
REFERENCE_GRID = 64
REFERENCE_GAUSSIANS = 1000


def real_reference(fed: Federation, opts: HarnessOptions) -> dict[str, Any]:
    """The peers' evaluator applied to real data no peer trained on, and a grid of it (``samples-real.png``).

    Digits: the classifier's held-out split (the peers' scores use the same classifier, trained once here
    and cached, so the daemons only load it). Gaussians: fresh samples of the true mixture. Other images:
    a grid only (their scores need local Inception weights, which the harness does not configure).
    """
    from p2pgan.trainer.data import gaussians
    from p2pgan.trainer.evaluation import make_evaluator
    from p2pgan.trainer.images import save_samples

    scores: dict[str, float] = {}
    if fed.source_format == "digits":
        evaluator = make_evaluator("digits")
        real = evaluator.held_out.tensor()  # type: ignore[attr-defined]
        label = "held-out real digits"
        scores = evaluator.scores(real)
    elif fed.source_format == "gaussians":
        real = gaussians(REFERENCE_GAUSSIANS, seed=opts.seed + 1).tensor()
        label = "real 8-Gaussians samples"
        scores = make_evaluator("gaussians").scores(real)
    else:
        real = load_source_dataset(opts.dataset, seed=opts.seed, image_size=fed.image_size)[0].tensor()[:REFERENCE_GRID]
        label = "real images"
    path = save_samples(real[:REFERENCE_GRID], fed.out / "samples-real.png", title=label)
    return {"label": label, "samples": len(real), "scores": {k: float(v) for k, v in scores.items()},
            "samples_png": path.name}


class Progress:
    """Overall progress of the peers' steps (read from their metrics files) with the latest scores: a bar on
    a terminal, a status line every :data:`STATUS_INTERVAL_S` otherwise (:class:`p2pgan.metrics.Progress`)."""

    def __init__(self, tails: dict[str, MetricsTail], steps: int) -> None:
        from p2pgan.metrics import Progress as Display

        self.tails = tails
        # counted in steps of the run (the peers' mean step), not peers x steps
        self.display = Display(steps, f"{len(tails)} peers: mean step", unit="step", interval_s=STATUS_INTERVAL_S)

    def tick(self) -> None:
        total = 0
        score: dict[str, Any] = {}
        for tail in self.tails.values():
            tail.poll()
            last = tail.last("step")
            total += int(last["step"]) if last else 0
            ev = tail.last("eval")
            if ev and ev.get("scores"):
                score = {k: v for k, v in ev["scores"].items() if isinstance(v, (int, float))}
        self.display.update(total // max(1, len(self.tails)), **score)

    def close(self) -> None:
        self.display.close()


def report_options(opts: HarnessOptions, fed: Federation) -> dict[str, Any]:
    """The options as report.json records them: the flags, with the learning rates the peers were given."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}
    options.update(lr_generator=fed.lr_generator, lr_discriminator=fed.lr_discriminator)
    return options


def run_harness(opts: HarnessOptions) -> Path:
    """Prepare, run the M daemons to the end, write the report; returns the path of report.json."""
    from p2pgan.daemon.processes import MetricsTail, PeerGroup
    from p2pgan.metrics import read_metrics
    from p2pgan.report import write_report

    fed = prepare(opts)
    reference = real_reference(fed, opts)
    specs = fed.specs()
    tails = {s.name: MetricsTail(s.metrics) for s in specs}
    started = time.time()
    progress = Progress(tails, opts.steps)
    links = None
    try:
        with contextlib.ExitStack() as stack, PeerGroup([]) as group:
            if opts.link is not None:
                from p2pgan.netem import EmulatedLinks, parse_link

                links = stack.enter_context(EmulatedLinks(fed.peer_ports, parse_link(opts.link),
                                                          listen_ports=fed.link_ports))
            runner = FaultRunner(group, specs, tails, parse_faults(opts.faults, opts.peers))
            runner.start()
            runner.wait(opts.timeout_s, tick=progress.tick, tick_interval_s=FAULT_TICK_S)
            pids = {p.spec.name: p.pid for p in group}  # the last process of each peer
            codes = {p.spec.name: p.returncode for p in group}
    finally:
        progress.close()
    metrics = {s.name: read_metrics(s.metrics) for s in specs}
    extra = {
        "options": report_options(opts, fed),
        "model": fed.model,
        "dataset_format": fed.source_format,
        "wall_s": time.time() - started,
        "pids": pids,
        "exit_codes": codes,
        "configs": {pid: str(path) for pid, path in fed.configs.items()},
        "faults": runner.events,
    }
    if links is not None:
        extra["link"] = {"spec": str(links.spec), "bytes_carried": links.carried()}
    return write_report(fed.out, metrics, extra, reference=reference)
