"""gRPC plumbing: mutual-TLS credentials, the server, persistent client streams (links), identities.

Identity checks, both ways:
- server side: gRPC's TLS layer accepts only clients whose certificate chains to the federation CA;
  :func:`tls_identity` then reads the peer id from the certificate's ``p2pgan://`` SAN URI and checks
  the federation and the optional fingerprint pin (membership is the inbox's check).
- client side: channels set ``grpc.ssl_target_name_override`` to the peer's identity DNS name
  (``<id>.<federation>.p2pgan``), so the handshake fails unless the server holds that peer's
  certificate from our CA. :func:`probe_identity` additionally fetches the certificate with Python's
  ``ssl`` to check a pinned fingerprint or a zeroconf candidate.

The hot path uses identity (de)serializers: a Push stream carries ``bytes`` frames built by
:mod:`p2pgan.wire.codec`, with no protobuf object per shard.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from functools import lru_cache
from typing import TYPE_CHECKING

import grpc

from p2pgan.errors import ConfigError, SecurityError
from p2pgan.logsafe import printable
from p2pgan.security.certs import fingerprint, identity_dns, normalize_fingerprint, peer_identity, read_tls
from p2pgan.wire.limits import FRAME_OVERHEAD_BYTES, MAX_SHARD_BYTES
from p2pgan.wire.config import PeerEntry, TLSFiles
from p2pgan.wire.v1 import gossip_pb2 as pb

if TYPE_CHECKING:  # the codec needs torch; the light commands import this module without it
    from p2pgan.wire.codec import OutgoingMessage

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Gossip"].full_name
PUSH_METHOD = f"/{SERVICE}/Push"
HELLO_METHOD = f"/{SERVICE}/Hello"
FETCH_STATE_METHOD = f"/{SERVICE}/FetchState"
LEAVE_METHOD = f"/{SERVICE}/Leave"
MAX_MESSAGE_BYTES = MAX_SHARD_BYTES + FRAME_OVERHEAD_BYTES
#: first and largest wait before reopening a failed stream to a neighbour (a returning member is also
#: re-dialled at once when it shows up: :meth:`Link.broken` lets the mixer replace the link)
RECONNECT_BACKOFF_MIN_S = 0.05
RECONNECT_BACKOFF_MAX_S = 2.0
#: status codes of a stream that ended because the neighbour is gone (not because it refused a message)
GONE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
#: messages waiting on a link behind the one being written before further sends are skipped (the
#: neighbour is not draining). Lock-step rounds keep a healthy link at <= 2; the headroom absorbs a
#: gRPC writer thread that is scheduled late on a busy machine. Memory per link is bounded by this + 1.
MAX_QUEUED_MESSAGES = 4
#: how long close() waits for an outgoing stream to flush before cancelling it
CLOSE_GRACE_S = 2.0
#: how long a stopping server lets calls finish; incoming streams are persistent and never end by
#: themselves, so this is short
SERVER_STOP_GRACE_S = 0.2
PROBE_TIMEOUT_S = 5.0
#: trailing metadata of every Hello reply: the answering process's random instance id, so that a daemon
#: dialling its own roster address can tell itself (through a relay or port forward) from a second daemon
#: that holds the same identity
INSTANCE_METADATA_KEY = "p2pgan-instance"
INSTANCE_ID = secrets.token_hex(8)
#: channel argument that tells the connections to one neighbour apart (mixing.connections > 1)
CONNECTION_ARG = "p2pgan.connection"

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", int(RECONNECT_BACKOFF_MAX_S * 1000)),
]

INSECURE_WARNING = (
    "INSECURE TRANSPORT: mutual TLS is OFF (insecure=True). Anyone who can reach this port can read this "
    "peer's parameters and inject their own. Use only on a trusted, isolated network."
)


# -- credentials and server ----------------------------------------------------------------------------
def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    ca, cert, key = read_tls(tls)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TLSFiles) -> grpc.ChannelCredentials:
    ca, cert, key = read_tls(tls)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def open_server(
    host: str, port: int, handlers: Sequence[grpc.GenericRpcHandler], tls: TLSFiles | None, *, max_workers: int
) -> tuple[grpc.Server, int]:
    """Start a gRPC server on ``host:port`` (0 = a free port); return it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="p2pgan-rpc"),
        handlers=handlers,
        # so_reuseport off: a second daemon on the same port must fail to bind, not share the port silently
        options=[*((k, v) for k, v in _CHANNEL_OPTIONS if k.startswith("grpc.max_")), ("grpc.so_reuseport", 0)],
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, server_credentials(tls)) if tls else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"listen address {address}: cannot bind: {exc}") from None
    if not bound:
        raise ConfigError(f"listen address {address}: cannot bind: the port is in use (another p2pgan daemon with "
                          "this config?) or the host is not a local address")
    server.start()
    return server, bound


def open_channel(peer: PeerEntry, federation: str, tls: TLSFiles | None, connection: int | None = None) -> grpc.Channel:
    """A channel to ``peer``; ``connection`` (one of several to it) becomes a channel argument of its own, so
    that gRPC never shares one TCP + TLS session between them (besides the local subchannel pool)."""
    target = f"{peer.host}:{peer.port}"
    base = _CHANNEL_OPTIONS if connection is None else [*_CHANNEL_OPTIONS, (CONNECTION_ARG, connection)]
    if tls is None:
        return grpc.insecure_channel(target, options=base)
    options = [*base, ("grpc.ssl_target_name_override", identity_dns(federation, peer.id))]
    return grpc.secure_channel(target, channel_credentials(tls), options=options)


# -- identities ----------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _identity_of_pem(pem: bytes) -> tuple[str, str, str]:
    fed, pid = peer_identity(pem)
    return fed, pid, fingerprint(pem)


def tls_identity(context: grpc.ServicerContext, federation: str, pins: dict[str, str]) -> str | None:
    """The peer id of the caller's TLS certificate (None on an insecure server).

    Raises :class:`SecurityError` for a certificate of another federation or a fingerprint that does
    not match the pin of that id.
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems:
        if auth.get("transport_security_type") == [b"ssl"]:
            raise SecurityError("the caller presented no client certificate")
        return None
    fed, pid, fp = _identity_of_pem(pems[0])
    if fed != federation:
        raise SecurityError(f"caller {printable(pid)} holds a certificate of federation {printable(fed)}, ours is {federation!r}")
    pin = pins.get(pid)
    if pin and pin != fp:
        raise SecurityError(f"caller {printable(pid)}: certificate fingerprint {fp} does not match the pinned {pin}")
    return pid


def probe_identity(host: str, port: int, tls: TLSFiles, timeout: float = PROBE_TIMEOUT_S) -> tuple[str, str, str]:
    """TLS-handshake with ``host:port`` using our client certificate; ``(federation, id, fingerprint)``.

    The server's certificate must chain to our CA (:class:`SecurityError` otherwise).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the identity is the SAN URI, checked by the caller
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise SecurityError(f"{host}:{port}: certificate does not chain to our federation CA: {exc.verify_message}") from None
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(f"{host}:{port}: TLS handshake failed: {exc}") from None
    if der is None:
        raise SecurityError(f"{host}:{port}: presented no certificate")
    fed, pid = peer_identity(der)
    return fed, pid, fingerprint(der)


def check_pin(peer: PeerEntry, tls: TLSFiles, federation: str) -> None:
    """Verify ``peer``'s identity and, when pinned, its fingerprint with :func:`probe_identity`."""
    fed, pid, fp = probe_identity(peer.host, peer.port, tls)
    if (fed, pid) != (federation, peer.id):
        raise SecurityError(f"{peer.host}:{peer.port} is {printable(pid)} of federation {printable(fed)}, expected {peer.id!r} of {federation!r}")
    if peer.fingerprint and normalize_fingerprint(peer.fingerprint) != fp:
        raise SecurityError(f"peer {peer.id!r}: certificate fingerprint {fp} does not match the pinned {peer.fingerprint}")


# -- client links --------------------------------------------------------------------------------------
class _Stream:
    """One open Push call fed from a queue of messages (each its frames: a list, or an iterator made on demand)."""

    def __init__(
        self, push: grpc.StreamUnaryMultiCallable, on_taken: Callable[[], None], on_written: Callable[[], None]
    ) -> None:
        self.queue: queue.SimpleQueue[Iterable[bytes] | None] = queue.SimpleQueue()
        self.pending = 0  # messages put on the queue and not yet taken by gRPC's writer
        self._on_taken = on_taken
        self._on_written = on_written
        self.call = push.future(self._frames())

    def _frames(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            # Counted off when taken, not after its last frame: gRPC asks for the next frame only when
            # its writer thread runs again, which on a loaded machine can be long after the neighbour
            # has read the message, and would make a healthy link look congested.
            self._on_taken()
            try:
                yield from item
            finally:  # written, or the call ended mid-message: either way this link takes no more of it
                _close_queued_item(item)
            # drop the message before blocking on the next one: held, it would keep a whole vector's
            # frames alive through the next round (one extra vector of memory per peer; issue 11 item 3)
            del item
            self._on_written()


def _close_queued(q: queue.SimpleQueue[Iterable[bytes] | None]) -> None:
    """Empty ``q``, closing every message iterator in it (see :class:`p2pgan.wire.codec.OutgoingMessage`)."""
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        _close_queued_item(item)


def _close_queued_item(item: Iterable[bytes] | None) -> None:
    close = getattr(item, "close", None)
    if close is not None:
        close()


class Link:
    """The persistent connection to one neighbour: a channel plus a Push stream reopened with backoff.

    :meth:`send` never blocks on the network: it queues a message (or skips it while the neighbour is
    unreachable or not draining, which the neighbour sees as a missed round).
    """

    def __init__(self, peer: PeerEntry, federation: str, tls: TLSFiles | None,
                 on_gone: Callable[[str, str], None] | None = None, connection: int | None = None) -> None:
        self.peer = peer
        self._on_gone = on_gone  # (peer id, reason): the stream ended because the neighbour is gone
        self.channel = open_channel(peer, federation, tls, connection)
        self._push = self.channel.stream_unary(PUSH_METHOD, request_serializer=None, response_deserializer=pb.PushSummary.FromString)
        self.hello = self.channel.unary_unary(
            HELLO_METHOD, request_serializer=pb.HelloRequest.SerializeToString, response_deserializer=pb.HelloReply.FromString
        )
        self.fetch_state = self.channel.unary_stream(
            FETCH_STATE_METHOD, request_serializer=pb.StateRequest.SerializeToString, response_deserializer=None
        )
        self.leave = self.channel.unary_unary(
            LEAVE_METHOD, request_serializer=pb.LeaveNotice.SerializeToString, response_deserializer=pb.LeaveAck.FromString
        )
        # re-entrant: grpc runs a done-callback inline when the call already failed (dead neighbour),
        # and _on_done takes this lock while send() still holds it
        self._lock = threading.RLock()
        self._stream: _Stream | None = None
        self._backoff_s = RECONNECT_BACKOFF_MIN_S
        self._retry_at = 0.0
        self._congested = False
        self._closed = False
        self.bytes_sent = 0
        #: Push streams opened so far: a new one means the other end may have lost what came before
        #: (compressed gossip sends a key on it; p2pgan.wire.compressed)
        self.generation = 0

    def send(self, frames: Iterable[bytes], nbytes: int | None = None) -> bool:
        """Queue one message (its frames, or an iterator of them made on demand, of ``nbytes`` in all);
        False if it was skipped (link down and backing off, or congested)."""
        opened = None
        with self._lock:
            if self._closed:
                return False
            stream = self._stream
            if stream is None or stream.call.done():
                if time.monotonic() < self._retry_at:
                    return False
                stream = opened = self._stream = _Stream(
                    self._push, lambda: self._on_taken(stream), self._on_written
                )
                self.generation += 1
            if stream.pending >= MAX_QUEUED_MESSAGES:
                if not self._congested:  # once per episode: a paused neighbour would flood the log
                    log.warning("peer %s is not draining its stream; skipping messages until it does", self.peer.id)
                self._congested = True
                return False
            self._congested = False
            stream.pending += 1
            stream.queue.put(frames)
        if opened is not None:
            # outside the lock: gRPC runs the callback at once, in this thread, if the call already failed
            opened.call.add_done_callback(lambda call: self._on_done(opened, call))
        self.bytes_sent += sum(len(f) for f in frames) if nbytes is None else nbytes  # type: ignore[arg-type]
        return True

    def send_message(self, message: OutgoingMessage) -> int:
        """Queue all of ``message`` (see :meth:`send`); the bytes queued, 0 if it was skipped."""
        frames = message.subscribe()
        if self.send(frames, message.nbytes):
            return message.nbytes
        frames.close()
        return 0

    @property
    def ready(self) -> bool:
        """:meth:`send` would queue a message now (not closed, not backing off, not congested)."""
        with self._lock:
            if self._closed:
                return False
            stream = self._stream
            if stream is None or stream.call.done():
                return time.monotonic() >= self._retry_at
            return stream.pending < MAX_QUEUED_MESSAGES

    def _on_taken(self, stream: _Stream) -> None:
        with self._lock:
            stream.pending -= 1

    def _on_written(self) -> None:
        """A whole message went into the stream: the link works, so the next failure backs off afresh."""
        with self._lock:
            self._backoff_s = RECONNECT_BACKOFF_MIN_S

    def _on_done(self, stream: _Stream, call: grpc.Future) -> None:
        if self._closed or call.cancelled():
            return
        exc = call.exception()
        with self._lock:
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(2 * self._backoff_s, RECONNECT_BACKOFF_MAX_S)
        _close_queued(stream.queue)  # messages this call will never send hold no frames back for other links
        stream.queue.put(None)
        if exc is not None and isinstance(exc, grpc.Call):
            code = exc.code()
            gone = code in GONE_CODES
            log.log(logging.INFO if gone else logging.ERROR, "stream to %s ended: %s: %s (retry in %.2f s)",
                    self.peer.id, code.name, exc.details(), self._backoff_s)
            if gone and self._on_gone is not None:
                self._on_gone(self.peer.id, f"stream broken ({code.name}: {exc.details()})")

    @property
    def fresh(self) -> bool:
        """The next :meth:`send` opens a new stream (none yet, or the last one ended)."""
        with self._lock:
            return self._stream is None or self._stream.call.done()

    @property
    def broken(self) -> bool:
        """The last stream failed (and no new one works yet): a fresh link would reach a returning peer sooner."""
        with self._lock:
            return self._stream is not None and self._stream.call.done() and not self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.queue.put(None)
            try:
                stream.call.result(timeout=CLOSE_GRACE_S)
            except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError):
                stream.call.cancel()
        self.channel.close()
