"""Run metrics: a JSON-lines log, an optional Prometheus endpoint, and progress display.

One JSON object per line, written with one system call, so a crashed or killed peer leaves every finished
line readable. The two main record types (``"type"``), both carrying ``peer``, ``step``, ``epoch`` and ``time``
(Unix seconds):

- ``"step"``: ``loss_g``, ``loss_d``, ``grad_norm``, ``consensus`` (distance to the neighbours' average),
  ``bytes_sent``, ``bytes_received`` (totals so far), ``compute_s``, ``comm_s`` (this step), plus extras;
- ``"eval"``: ``scores`` (e.g. ``{"is": 8.1, "fid": 12.3}``), plus extras.

A daemon also writes ``start``, ``end``, ``rejoin``, ``member`` records and one ``checkpoint`` record per
checkpoint write (``ok``, ``error``, ``last_good_step``: :class:`p2pgan.daemon.checkpoints.CheckpointKeeper`).
A line the disk refuses (full, read-only) is dropped with one warning, never half written.

Byte fields are in bytes, times in seconds (the ``_s`` suffix).

Non-finite floats are written as ``null`` so every line stays valid JSON. :func:`read_metrics` reads a
file back, skipping a final line cut short by a crash. The Prometheus endpoint (extra ``metrics``:
``pip install 'p2pgan[metrics]'``) follows Prometheus' conventions (:class:`PrometheusExporter`).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from p2pgan.errors import ConfigError, P2PGANError

log = logging.getLogger(__name__)

#: seconds between two lines of a :class:`StatusLine` (patchable by tests)
STATUS_INTERVAL_S = 10.0
#: the numeric fields every step record has
STEP_FIELDS: tuple[str, ...] = (
    "loss_g", "loss_d", "grad_norm", "consensus", "bytes_sent", "bytes_received", "compute_s", "comm_s",
)


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, tensors / numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: upper bounds (seconds) of the step-duration histogram's buckets: a tiny CPU model to a large GPU one
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: running totals a step record carries since the mixer opened (reset by a restart) -> counter name
RUN_TOTALS = {"bytes_sent": "sent_bytes", "bytes_received": "received_bytes", "dropped": "dropped_rounds"}
#: per-step seconds a step record carries -> counter name (summed over steps)
STEP_SECONDS = {"compute_s": "compute_seconds", "comm_s": "communication_seconds"}
#: latest values of a step record -> gauge name and help
STEP_GAUGES = {
    "loss_g": ("loss_generator", "latest generator loss"),
    "loss_d": ("loss_discriminator", "latest discriminator loss"),
    "grad_norm": ("gradient_norm", "latest norm of the game's gradient field"),
    "consensus": ("consensus_distance", "latest distance of the parameters to the neighbours' average"),
    "epoch": ("epoch", "epochs over this peer's private shard"),
    "epsilon": ("privacy_epsilon", "differential privacy spent so far (PLD epsilon at privacy delta; DP sites only)"),
    "epsilon_budget": ("privacy_epsilon_budget", "this site's privacy budget (target epsilon; DP sites only)"),
}


def run_totals(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Totals over every run recorded in one peer's metrics: steps done, bytes, dropped rounds, seconds.

    A step record's ``bytes_sent``, ``bytes_received`` and ``dropped`` count from the start of its run (the
    mixer's life); a restart (a ``start`` record, or a step that does not advance) begins a new run, whose
    totals are added to those before. These are the values the Prometheus counters continue from, so the
    counters survive ``--resume``, and what the report adds up.
    """
    totals = dict.fromkeys(("steps", *RUN_TOTALS, *STEP_SECONDS, "step_s"), 0.0)
    last: Mapping[str, Any] | None = None

    def close_run() -> None:
        if last is not None:
            for key in RUN_TOTALS:
                totals[key] += float(last.get(key) or 0.0)

    for r in records:
        kind = r.get("type")
        if kind == "start" or (kind == "step" and last is not None and int(r["step"]) <= int(last["step"])):
            close_run()
            last = None
        if kind != "step":
            continue
        totals["steps"] += 1
        for key in (*STEP_SECONDS, "step_s"):
            totals[key] += float(r.get(key) or 0.0)
        last = r
    close_run()
    return totals


def _build_labels() -> dict[str, str]:
    """Versions a dashboard groups by: p2pgan, Python, and torch / grpcio where already imported."""
    from p2pgan import __version__

    labels = {"version": __version__, "python": "%d.%d.%d" % sys.version_info[:3]}
    for name in ("torch", "grpc"):
        module = sys.modules.get(name)
        labels[name if name != "grpc" else "grpcio"] = str(getattr(module, "__version__", "")) if module else ""
    return labels


class PrometheusExporter:
    """One peer's metrics at ``http://addr:port/metrics`` (port 0: any free port), by Prometheus conventions.

    Counters end in ``_total`` and continue across restarts from ``carried`` (:func:`run_totals` of the
    records before this run): ``p2pgan_steps_total``, ``p2pgan_sent_bytes_total``,
    ``p2pgan_received_bytes_total``, ``p2pgan_dropped_rounds_total``, ``p2pgan_compute_seconds_total``,
    ``p2pgan_communication_seconds_total``, ``p2pgan_evaluations_total``. Gauges hold the latest values
    (``p2pgan_step``, losses, ``p2pgan_consensus_distance``, ``p2pgan_score{score=...}``);
    ``p2pgan_step_duration_seconds`` is a histogram of wall seconds per step; ``p2pgan_checkpoint_failing``
    (1 while the disk refuses checkpoints), ``p2pgan_checkpoint_step`` (the newest good one) and
    ``p2pgan_checkpoint_failures_total`` come from ``checkpoint`` records; ``p2pgan_build_info`` carries
    the versions. Every series is labelled ``peer``. Bound to loopback unless ``addr`` says otherwise.
    """

    def __init__(self, peer: str, port: int = 0, addr: str = "127.0.0.1",
                 carried: Mapping[str, float] | None = None) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ConfigError(
                "the Prometheus endpoint needs prometheus-client: pip install 'p2pgan[metrics]'"
            ) from None
        pc = prometheus_client
        self.peer = peer
        self.registry = reg = pc.CollectorRegistry()
        carried = dict(carried or {})

        def counter(name: str, doc: str, start: float) -> Any:
            c = pc.Counter(f"p2pgan_{name}", doc, ["peer"], registry=reg).labels(peer=peer)
            if start > 0:
                c.inc(start)
            return c

        self._steps = counter("steps", "DPOSG steps done (all runs of this peer)", carried.get("steps", 0.0))
        self._run_totals = {key: counter(name, f"{name.replace('_', ' ')} (all runs of this peer)", carried.get(key, 0.0))
                            for key, name in RUN_TOTALS.items()}
        self._seconds = {key: counter(name, f"{name.replace('_', ' ')} spent in steps (all runs)", carried.get(key, 0.0))
                         for key, name in STEP_SECONDS.items()}
        self._evaluations = counter("evaluations", "evaluations done in this run", 0.0)
        self._step_seconds = pc.Histogram("p2pgan_step_duration_seconds", "wall seconds per DPOSG step", ["peer"],
                                          buckets=STEP_SECONDS_BUCKETS, registry=reg).labels(peer=peer)
        self._step = pc.Gauge("p2pgan_step", "the step this peer has reached", ["peer"], registry=reg).labels(peer=peer)
        self._gauges = {key: pc.Gauge(f"p2pgan_{name}", doc, ["peer"], registry=reg).labels(peer=peer)
                        for key, (name, doc) in STEP_GAUGES.items()}
        self._scores = pc.Gauge("p2pgan_score", "latest evaluation score", ["peer", "score"], registry=reg)
        self._ckpt_failing = pc.Gauge("p2pgan_checkpoint_failing", "1 while checkpoints cannot be written (the "
                                      "daemon trains on and retries), else 0", ["peer"], registry=reg).labels(peer=peer)
        self._ckpt_step = pc.Gauge("p2pgan_checkpoint_step", "step of the newest good checkpoint", ["peer"],
                                   registry=reg).labels(peer=peer)
        self._ckpt_failures = counter("checkpoint_failures", "checkpoint writes that failed in this run", 0.0)
        pc.Info("p2pgan_build", "versions of p2pgan and its main libraries", ["peer"], registry=reg).labels(
            peer=peer).info(_build_labels())
        self._this_run = dict.fromkeys(RUN_TOTALS, 0.0)
        try:
            self._server, self._thread = pc.start_http_server(port, addr, registry=reg)
        except OSError as exc:
            raise ConfigError(
                f"metrics.prometheus_addr/port: cannot serve Prometheus metrics on {addr}:{port} ({exc.strerror or exc})"
            ) from None
        self.port = int(self._server.server_port)

    def observe(self, record: Mapping[str, Any]) -> None:
        """Update the series from one metrics record (``step`` or ``eval``; others are ignored)."""

        def number(key: str) -> float | None:
            value = record.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        if record.get("type") == "step":
            self._steps.inc()
            for key, c in self._run_totals.items():
                value = number(key)
                if value is not None and value > self._this_run[key]:  # running totals: add what is new
                    c.inc(value - self._this_run[key])
                    self._this_run[key] = value
            for key, c in self._seconds.items():
                value = number(key)
                if value is not None and value >= 0:
                    c.inc(value)
            wall = number("step_s")
            if wall is not None and wall >= 0:
                self._step_seconds.observe(wall)
            for key, g in self._gauges.items():
                value = number(key)
                if value is not None:
                    g.set(value)
        elif record.get("type") == "checkpoint":
            self._ckpt_failing.set(0.0 if record.get("ok") else 1.0)
            if not record.get("ok"):
                self._ckpt_failures.inc()
            good = number("last_good_step")
            if good is not None:
                self._ckpt_step.set(good)
            return  # its step is the checkpoint's, not necessarily the training's newest
        elif record.get("type") == "eval":
            self._evaluations.inc()
            for name, value in (record.get("scores") or {}).items():
                if isinstance(value, (int, float)):
                    self._scores.labels(peer=self.peer, score=name).set(value)
        step = number("step")
        if step is not None:
            self._step.set(step)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


class MetricsWriter:
    """Append metrics records of one peer to a JSON-lines file (and to Prometheus if a port is given)."""

    def __init__(self, path: str | os.PathLike[str], peer: str, *, prometheus_port: int | None = None,
                 prometheus_addr: str = "127.0.0.1") -> None:
        self.path = Path(path)
        self.peer = peer
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot make the metrics folder ({exc.strerror or exc})") from None
        self.exporter = None
        if prometheus_port is not None:
            # counters continue from the runs already in this file (a resumed peer appends to it)
            carried = run_totals(read_metrics(self.path)) if self.path.is_file() else None
            self.exporter = PrometheusExporter(peer, prometheus_port, prometheus_addr, carried=carried)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            if self.exporter is not None:
                self.exporter.close()
            raise ConfigError(f"{self.path}: cannot open metrics file ({exc.strerror or exc})") from None
        #: records that could not be written (full or read-only disk) since the file last took one
        self.dropped = 0

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record (``peer`` and ``time`` added when absent) as one line; returns it.

        A disk that refuses the line (full, read-only, file too large) never ends the run: the record is
        dropped (a cut line is trimmed off again), one warning line says so, and one more when lines
        are written again. Prometheus still sees every record."""
        line = {"peer": self.peer, "time": time.time(), **_clean(record)}
        self._append((json.dumps(line, allow_nan=False, separators=(",", ":")) + "\n").encode())
        if self.exporter is not None:
            self.exporter.observe(line)
        return line

    def _append(self, data: bytes) -> None:
        """One ``write`` of a whole line (an O_APPEND write lands at the end in one piece, or fails)."""
        if self._fd is None:
            return
        size = None
        try:
            size = os.fstat(self._fd).st_size
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.EFBIG, f"wrote {written} of {len(data)} bytes")
        except OSError as exc:
            if size is not None:
                try:
                    os.ftruncate(self._fd, size)  # no half line for a reader to trip on
                except OSError:
                    pass
            if not self.dropped:
                log.warning("%s: cannot append metrics (%s); records are dropped until it can again",
                            self.path, exc.strerror or exc)
            self.dropped += 1
            return
        if self.dropped:
            log.warning("%s: metrics are written again (%d record(s) were dropped)", self.path, self.dropped)
            self.dropped = 0

    def step(self, *, step: int, epoch: float, loss_g: float, loss_d: float, grad_norm: float,
             consensus: float | None = None, bytes_sent: int = 0, bytes_received: int = 0,
             compute_s: float = 0.0, comm_s: float = 0.0, **extra: Any) -> dict[str, Any]:
        """Write a ``"step"`` record (see the module docstring for the fields)."""
        return self.write({"type": "step", "step": step, "epoch": epoch, "loss_g": loss_g, "loss_d": loss_d,
                           "grad_norm": grad_norm, "consensus": consensus, "bytes_sent": bytes_sent,
                           "bytes_received": bytes_received, "compute_s": compute_s, "comm_s": comm_s, **extra})

    def evaluation(self, *, step: int, epoch: float, scores: Mapping[str, float], **extra: Any) -> dict[str, Any]:
        """Write an ``"eval"`` record holding ``scores``."""
        return self.write({"type": "eval", "step": step, "epoch": epoch, "scores": dict(scores), **extra})

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics file; a final line cut short by a crash is skipped, any other bad line
    raises :class:`~p2pgan.errors.P2PGANError` naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise P2PGANError(f"{path}: cannot read metrics ({exc.strerror or exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was interrupted
                log.warning("%s: skipping the truncated last line %d", path, number)
                continue
            raise P2PGANError(f"{path}: line {number} is not valid JSON") from None
    return records


def records_by_peer(paths: Iterable[str | os.PathLike[str]]) -> dict[str, list[dict[str, Any]]]:
    """Read several metrics files and group their records by ``peer``, keeping file order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for record in read_metrics(path):
            grouped.setdefault(str(record.get("peer", Path(path).stem)), []).append(record)
    return grouped


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``: an ETA a person reads at a glance."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StatusLine:
    """A progress line at most every ``interval_s`` seconds: ``what done/total (pct) rate ETA fields``.

    For output that is a log or a pipe, where a redrawn bar would leave ``\r`` frames. The line goes to
    ``logger`` at INFO, or, with ``logger=None``, straight to ``stream`` (stderr). The rate counts from the
    first update, so a resumed run's ETA is not skewed by the steps it skipped.
    """

    def __init__(self, logger: logging.Logger | None, what: str, total: int | None = None,
                 interval_s: float | None = None, *, unit: str = "steps", stream: IO[str] | None = None) -> None:
        self.logger = logger
        self.what = what
        self.total = total
        self.unit = unit
        self.stream = stream
        self.interval_s = STATUS_INTERVAL_S if interval_s is None else interval_s
        self._last: float | None = None
        self._first: tuple[float, int] | None = None
        self.notes: dict[str, Any] = {}  # shown on every line until replaced (e.g. the last scores)

    def format(self, done: int, now: float, **fields: Any) -> str:
        parts = [f"{self.what} {done}" + (f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else "")]
        if self._first is not None and now > self._first[0] and done > self._first[1]:
            rate = (done - self._first[1]) / (now - self._first[0])
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and done < self.total:
                parts.append(f"ETA {_duration((self.total - done) / rate)}")
        values = {**fields, **self.notes}
        if values:
            parts.append(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
        return ", ".join(parts)

    def update(self, done: int, force: bool = False, **fields: Any) -> bool:
        """Show ``done`` (of ``total``) and ``fields`` if the interval has passed (or ``force``); True if shown."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        line = self.format(done, now, **fields)
        if self.logger is not None:
            self.logger.info("%s", line)
        else:
            print(line, file=self.stream or sys.stderr, flush=True)
        return True


class Progress:
    """Progress of long work: a tqdm bar on a terminal, else a :class:`StatusLine` every ``interval_s``
    (CI, nohup, a pipe: no ``\r`` frames in the log). Use as a context manager; :meth:`update` takes the
    absolute count done and the fields to show (latest scores, losses)."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "step", interval_s: float | None = None,
                 stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._fields: dict[str, Any] = {}
        self.bar = None
        self.status = None
        if is_tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, mininterval=0.5)
        else:
            self.status = StatusLine(None, desc, total, interval_s, unit=f"{unit}s", stream=self.stream)

    def update(self, done: int, **fields: Any) -> None:
        self._fields.update(fields)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if fields:
                self.bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in self._fields.items()},
                                     refresh=False)
        elif self.status is not None:
            self.status.update(done, **self._fields)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.status is not None and self.status._last is not None:
            self.status.update(self.done, force=True, **self._fields)  # the final count, always

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
