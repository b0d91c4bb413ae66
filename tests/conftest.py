"""Shared fixtures. Tests wait on events with timeouts and never sleep to synchronize."""

from __future__ import annotations
