"""The one place where p2pgan errors become gRPC status codes (and a log line)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc

from p2pgan.errors import (
    DiscoveryError,
    P2PGANError,
    PeerUnavailableError,
    ProtocolError,
    ResourceLimitError,
    SecurityError,
    StepWindowError,
)
from p2pgan.logsafe import RefusalLog

log = logging.getLogger(__name__)
#: longest status message sent back (messages quote peer strings only through logsafe.printable)
MAX_DETAIL_CHARS = 1000

#: most specific first
STATUS_CODES: tuple[tuple[type[P2PGANError], grpc.StatusCode], ...] = (
    (SecurityError, grpc.StatusCode.PERMISSION_DENIED),
    (StepWindowError, grpc.StatusCode.OUT_OF_RANGE),
    (ResourceLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (PeerUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DiscoveryError, grpc.StatusCode.FAILED_PRECONDITION),
    (P2PGANError, grpc.StatusCode.INTERNAL),
)


def status_code(exc: P2PGANError) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


@contextlib.contextmanager
def grpc_status(context: grpc.ServicerContext, rpc: str, refusals: RefusalLog | None = None) -> Iterator[None]:
    """Run an RPC body; turn a :class:`P2PGANError` (or a bug) into an aborted call with a clear status.

    Refusals are logged through ``refusals`` (the server's rate limiter: a few lines in full per remote
    host, rpc and code, then a summary with a count), or each in full when it is None.
    """
    try:
        yield
    except P2PGANError as exc:
        code = status_code(exc)
        caller = context.peer().rpartition(":")[0]  # host, not the ephemeral port: one key per remote host
        detail = str(exc)[:MAX_DETAIL_CHARS]
        line = f"{rpc} from {caller} refused ({code.name}): {detail}"
        if refusals is None:
            log.warning("%s", line)
        else:
            refusals.refused(caller, f"{rpc} {code.name}", line)
        context.abort(code, detail)
    except grpc.RpcError:
        raise  # the call was cancelled or aborted already; nothing to report back
    except Exception as exc:  # a bug of ours must not take the server down
        if not context.is_active():
            return
        log.exception("%s from %s failed", rpc, context.peer())
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
