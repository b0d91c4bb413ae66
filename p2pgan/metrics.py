"""Run metrics: a JSON-lines log, an optional Prometheus endpoint, and progress display.

One JSON object per line, flushed as it is written, so a crashed or killed peer leaves every finished
line readable. Two record types (``"type"``), both carrying ``peer``, ``step``, ``epoch`` and ``time``
(Unix seconds):

- ``"step"``: ``loss_g``, ``loss_d``, ``grad_norm``, ``consensus`` (distance to the neighbours' average),
  ``bytes_sent``, ``bytes_received`` (totals so far), ``compute_s``, ``comm_s`` (this step), plus extras;
- ``"eval"``: ``scores`` (e.g. ``{"is": 8.1, "fid": 12.3}``), plus extras.

Non-finite floats are written as ``null`` so every line stays valid JSON. :func:`read_metrics` reads a
file back, skipping a final line cut short by a crash. The Prometheus endpoint (extra ``metrics``:
``pip install 'p2pgan[metrics]'``) exports the latest step values as gauges labelled by peer.
"""

from __future__ import annotations

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
#: the numeric fields of a step record, in the order the Prometheus gauges are made
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


class PrometheusExporter:
    """Serve the latest step values of one peer at ``http://addr:port/metrics`` (port 0: any free port)."""

    def __init__(self, peer: str, port: int = 0, addr: str = "127.0.0.1") -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ConfigError(
                "the Prometheus endpoint needs prometheus-client: pip install 'p2pgan[metrics]'"
            ) from None
        self.peer = peer
        self.registry = prometheus_client.CollectorRegistry()
        self._gauges = {
            name: prometheus_client.Gauge(f"p2pgan_{name}", f"latest {name} of the peer", ["peer"],
                                          registry=self.registry)
            for name in (*STEP_FIELDS, "step", "epoch")
        }
        self._scores = prometheus_client.Gauge("p2pgan_score", "latest evaluation score", ["peer", "score"],
                                               registry=self.registry)
        try:
            self._server, self._thread = prometheus_client.start_http_server(port, addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve Prometheus metrics on {addr}:{port} ({exc.strerror or exc})") from None
        self.port = int(self._server.server_port)

    def observe(self, record: Mapping[str, Any]) -> None:
        """Update the gauges from one metrics record (step or eval)."""
        for name, gauge in self._gauges.items():
            value = record.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                gauge.labels(peer=self.peer).set(value)
        for name, value in (record.get("scores") or {}).items():
            if isinstance(value, (int, float)):
                self._scores.labels(peer=self.peer, score=name).set(value)

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.exporter = (PrometheusExporter(peer, prometheus_port, prometheus_addr)
                         if prometheus_port is not None else None)
        try:
            self._file: IO[str] = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            if self.exporter is not None:
                self.exporter.close()
            raise ConfigError(f"{self.path}: cannot open metrics file ({exc.strerror or exc})") from None

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record (``peer`` and ``time`` added when absent) as one flushed line; returns it."""
        line = {"peer": self.peer, "time": time.time(), **_clean(record)}
        self._file.write(json.dumps(line, allow_nan=False, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.exporter is not None:
            self.exporter.observe(line)
        return line

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
        if not self._file.closed:
            self._file.close()
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


def progress(total: int | None, desc: str, *, unit: str = "step", initial: int = 0,
             disable: bool | None = None, file: IO[str] | None = None) -> Any:
    """A tqdm bar for long work (``disable=None``: shown only on a terminal). Use as a context manager."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file or sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


class StatusLine:
    """A log line at most every ``interval_s`` seconds: progress for daemons whose output is a log file."""

    def __init__(self, logger: logging.Logger, what: str, total: int | None = None,
                 interval_s: float | None = None) -> None:
        self.logger = logger
        self.what = what
        self.total = total
        self.interval_s = STATUS_INTERVAL_S if interval_s is None else interval_s
        self._last: float | None = None

    def update(self, done: int, force: bool = False, **fields: Any) -> bool:
        """Log ``done`` (of ``total``) and ``fields`` if the interval has passed (or ``force``); True if logged."""
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        of = f"/{self.total}" if self.total else ""
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.logger.info("%s %d%s %s", self.what, done, of, extra)
        return True
