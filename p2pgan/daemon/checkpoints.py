"""The daemon's checkpoints: which one ``--resume`` continues from, and writing them so that a disk that
fills up or turns read-only never ends a run.

:func:`open_checkpoints` picks the newest *intact* checkpoint at ``--resume`` (a damaged newest one is
left in place and named in one warning line; with none intact the run starts as a late joiner does).

:class:`CheckpointKeeper` writes them. A write that fails (no space left, quota, read-only file system,
file too large, I/O error) leaves the last good checkpoint as it was (writes are atomic:
:func:`p2pgan.checkpoint.atomic_write_bytes`), the daemon trains on, and the write is retried at the
next step boundary after a pause that doubles from :data:`RETRY_FIRST_S` up to :data:`RETRY_MAX_S`.
The first failure and the recovery are one warning line each (a failure with a new error is one more);
the retries in between are quiet. Each attempt is also a ``checkpoint`` metrics record, and the state is
published to ``p2pgan status`` and probes as the health service :data:`p2pgan.wire.health.CHECKPOINT_SERVICE`
(NOT_SERVING while failing) and to Prometheus as ``p2pgan_checkpoint_failing``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2pgan.checkpoint import CheckpointManager, LoadedCheckpoint, NonFiniteStateError
from p2pgan.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: seconds before the first retry of a checkpoint that could not be written (doubles with each failure)
RETRY_FIRST_S = 5.0
#: the longest pause between two retries: a disk freed by the operator is noticed within this time
RETRY_MAX_S = 300.0


def open_checkpoints(cfg: Any, resume: bool) -> tuple[CheckpointManager, LoadedCheckpoint | None]:
    """The checkpoint directory of ``cfg`` and, with ``resume``, its newest intact checkpoint.

    A damaged newest checkpoint (truncated, corrupt: a crash or a full disk while it was copied) is left
    in place for inspection and the newest intact one is used, with one warning line naming both; when
    none is intact the run starts as a late joiner does (state transfer from a running member, or the
    federation's step), with one warning line. Without ``resume`` a directory that already holds
    checkpoints is refused, so a run is never overwritten by accident.
    """
    manager = CheckpointManager(cfg.checkpoint.dir, keep=cfg.checkpoint.keep + 1)
    steps = manager.steps()
    if not resume:
        if steps:
            raise ConfigError(
                f"{cfg.source}: checkpoint.dir {cfg.checkpoint.dir} already holds checkpoints up to step {steps[-1]}; "
                "pass --resume to continue that run, or choose another checkpoint.dir"
            )
        return manager, None
    if not steps:
        log.warning("--resume: no checkpoint in %s yet, starting at step 0", cfg.checkpoint.dir)
        return manager, None
    try:
        loaded = manager.load_latest()
    except CheckpointError as exc:
        log.warning("--resume: no intact checkpoint in %s (%s); starting as a late joiner does: state transfer "
                    "from a running member, or the federation's step", cfg.checkpoint.dir, exc)
        return manager, None
    if loaded is not None and loaded.refused:
        damaged = "; ".join(reason for _, reason in loaded.refused)
        log.warning("--resume: skipping damaged checkpoint(s), left in place: %s; resuming from the newest intact "
                    "one, %s (step %d)", damaged, loaded.path.name, loaded.step)
    return manager, loaded


def _describe(exc: OSError, target: Path) -> str:
    """``<file>: <reason>`` of a failed write (the file the error names, else the one being written)."""
    return f"{exc.filename or target}: {exc.strerror or exc}"


class CheckpointKeeper:
    """Writes a run's checkpoints through ``manager``; a failed write is retried with backoff, never fatal.

    ``emit`` receives one ``checkpoint`` record per attempt (the metrics file); ``on_change(failing)``
    is called when writes start or stop failing (the health service). ``clock`` is patchable by tests.
    """

    def __init__(self, manager: CheckpointManager, *, emit: Callable[[Mapping[str, Any]], Any] | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self.last_good: Path | None = None
        self.last_good_step: int | None = None
        self.error: str | None = None  # the last failure's reason while failing, else None
        self.failing_since: int | None = None  # the step whose checkpoint failed first
        self.failures = 0  # failed attempts since the last good write
        self._emit = emit
        self._on_change = on_change
        self._clock = clock
        self._next_retry = 0.0
        self._cause: int | None = None  # errno of the failure being retried

    @property
    def failing(self) -> bool:
        return self.error is not None

    def due(self, scheduled: bool) -> bool:
        """Whether to write now, at a step boundary: when ``scheduled`` (``checkpoint.interval``) while
        writes work; while they fail, only once the backoff pause is over (a full disk is not asked for
        a model-sized write every interval)."""
        if self.failing:
            return self._clock() >= self._next_retry
        return scheduled

    def save(self, step: int, state: Mapping[str, Any]) -> Path | None:
        """Write the checkpoint of ``step``; returns the newest good checkpoint (this one, or an older one
        when this write failed; None when none was written yet). Never raises for a disk problem."""
        try:
            path = self.manager.save(step, state)
        except NonFiniteStateError as exc:
            log.error("step %d: %s; the last finite checkpoint %s is kept", step, exc, self.last_good)
            return self.last_good
        except OSError as exc:
            self._failed(step, _describe(exc, self.manager.path_for(step)), exc.errno)
            return self.last_good
        self._succeeded(step, path)
        return path

    def _failed(self, step: int, reason: str, cause: int | None) -> None:
        first, new_cause = not self.failing, cause != self._cause
        self._cause = cause
        self.failures += 1
        if first:
            self.failing_since = step
        pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self.failures - 1))
        self._next_retry = self._clock() + pause
        self.error = reason
        if first or new_cause:  # the first failure, or another kind (ENOSPC -> EROFS): one line; retries are quiet
            kept = f"{self.last_good} (step {self.last_good_step})" if self.last_good else "no checkpoint of this run"
            log.warning("checkpoint of step %d not written (%s); training goes on and keeps %s; retrying in %.0f s, "
                        "then less often (at most every %.0f s)", step, reason, kept, pause, RETRY_MAX_S)
        else:
            log.debug("checkpoint of step %d still not written (%s, attempt %d)", step, reason, self.failures)
        self._record(step, ok=False, path=None)
        if first and self._on_change is not None:
            self._on_change(True)

    def _succeeded(self, step: int, path: Path) -> None:
        was_failing = self.failing
        if was_failing:
            log.warning("checkpoints are written again: step %d in %s (%d attempt(s) failed since step %s: %s)",
                        step, path, self.failures, self.failing_since, self.error)
        self.last_good, self.last_good_step = path, step
        self.error, self.failing_since, self.failures, self._cause = None, None, 0, None
        self._record(step, ok=True, path=path)
        if was_failing and self._on_change is not None:
            self._on_change(False)

    def _record(self, step: int, *, ok: bool, path: Path | None) -> None:
        if self._emit is None:
            return
        self._emit({"type": "checkpoint", "step": step, "ok": ok, "path": str(path) if path else None,
                    "error": self.error, "failing_since": self.failing_since, "failures": self.failures,
                    "last_good": str(self.last_good) if self.last_good else None,
                    "last_good_step": self.last_good_step})
