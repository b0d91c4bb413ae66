"""The one exception family of p2pgan.

Every error a user can cause or a peer can send derives from :class:`P2PGANError` and carries a
message that says what was wrong and what is allowed. The CLI prints these without a traceback; the
gRPC servicer maps them to status codes in one place (``p2pgan.wire.status``).
"""

from __future__ import annotations


class P2PGANError(Exception):
    """Base class of every error p2pgan raises on purpose."""


class TemporaryError(P2PGANError):
    """A condition that may pass by itself (peers not up yet, a full disk): retrying later may succeed.

    The CLI exits with 75 (EX_TEMPFAIL) for these, and with 2 for every other :class:`P2PGANError`
    (a mistake the user must fix first), so that a service manager restarts only what a restart can fix.
    """


class ConfigError(P2PGANError, ValueError):
    """A configuration file, field or command-line value is invalid.

    Build the message with :func:`config_error` so that it names the file and the field.
    """


class TopologyError(P2PGANError, ValueError):
    """A mixing matrix or graph is invalid (not symmetric, not doubly stochastic, disconnected...)."""


class ProtocolError(P2PGANError):
    """A message received from the network is malformed or not acceptable (never crashes a peer)."""


class StepWindowError(ProtocolError):
    """A message for a step or round outside the receiver's window (too far ahead or behind)."""


class ResourceLimitError(ProtocolError):
    """A peer asked for more than its share (streams, messages); refused so the others are not starved."""


class SecurityError(P2PGANError):
    """A certificate, key or peer identity does not check out."""


class DiscoveryError(TemporaryError):
    """Peers could not be found (yet). A membership that is wrong by configuration is a :class:`ConfigError`."""


class CheckpointError(P2PGANError):
    """A checkpoint is missing, truncated, corrupt or does not match the run."""


class StorageFullError(CheckpointError, TemporaryError):
    """The checkpoint folder cannot take a write now (no space left, quota exceeded): it may pass."""


class DataError(P2PGANError, ValueError):
    """A dataset file or folder is missing, malformed or not in an allowed format."""


class PeerUnavailableError(TemporaryError):
    """A neighbour did not answer within a deadline."""


def config_error(source: str, field: str, problem: str) -> ConfigError:
    """Return a :class:`ConfigError` whose message names ``source`` (a file or ``--flag``) and ``field``."""
    where = f"{source}: {field}" if field else source
    return ConfigError(f"{where}: {problem}")


class PeerProcessError(P2PGANError):
    """A peer daemon process started by the harness or a test exited with an error or did not stop."""
