"""The daemon's stop signals: SIGTERM / SIGINT / SIGHUP finish the current step, a second one abandons it."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("p2pgan.daemon.peer")  # the daemon's log lines, as before this module was split out


class StopBeforeTraining(BaseException):
    """Raised by the signal handler while the daemon is still starting (loading data, waiting for peers).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """


class StopSignals:
    """SIGTERM / SIGINT / SIGHUP -> a flag the loop checks between steps; a second signal abandons the step.

    Until :attr:`training` is set (start-up: loading data, waiting for the other peers) a signal stops
    at once by raising :class:`StopBeforeTraining`: there is nothing new to checkpoint yet. Installs
    handlers on entry (main thread only) and restores the previous ones on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the SSH session that started us closed

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self.training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.training:
            self.received = name
            self.event.set()
            raise StopBeforeTraining(name)
        if self.event.is_set():
            log.warning("second %s: abandoning the current step (the last checkpoint is kept)", name)
            raise KeyboardInterrupt
        self.received = name
        self.event.set()
        log.warning("%s received: finishing the current step, then checkpoint and exit", name)

    def is_set(self) -> bool:
        return self.event.is_set()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
