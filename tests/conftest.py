"""Shared fixtures. Tests wait on events with timeouts and never sleep to synchronize.

Every pytest-timeout deadline (a test's ``@pytest.mark.timeout`` or the ini default) is multiplied by
:data:`deadlines.SCALE`, so that a loaded machine passes the suite: a deadline bounds a hang, it does not
time anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from deadlines import SCALE, SCALE_ENV


def pytest_report_header(config: pytest.Config) -> str:
    return f"p2pgan: test deadlines x {SCALE:g} ({SCALE_ENV} to set)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else \
            float(marker.kwargs.get("timeout", default)) if marker is not None else default
        if seconds > 0:
            kwargs = {k: v for k, v in (marker.kwargs.items() if marker is not None else ()) if k != "timeout"}
            item.add_marker(pytest.mark.timeout(seconds * SCALE, **kwargs), append=False)


@pytest.fixture(autouse=True)
def _root_log_handlers_do_not_outlive_the_test() -> Iterator[None]:
    """An in-process CLI call (``p2pgan.logs.configure``) points the root logger at the ``sys.stderr`` of its
    test, which pytest closes afterwards: a warning a later test's thread logs would then fail on the closed
    stream ("--- Logging error ---" between tests). The root logger's own handlers and level are put back."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:  # pytest's own are subclasses
            root.removeHandler(handler)
    root.setLevel(level)
