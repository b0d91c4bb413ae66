"""The thin gRPC servicer: decode, call plain logic (:class:`p2pgan.wire.inbox.Inbox`, :class:`PeerHooks`), map errors once.

Push is served by a generic handler with identity deserialization, so each stream message reaches the
inbox as the raw ``bytes`` of a Frame (no protobuf object per shard); Hello, FetchState and Leave use
the generated classes. FetchState streams the frames :mod:`p2pgan.wire.state` encodes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import grpc

from p2pgan.errors import SecurityError
from p2pgan.logsafe import RefusalLog
from p2pgan.wire.codec import PROTOCOL_VERSION
from p2pgan.wire import state as state_wire
from p2pgan.wire.inbox import Inbox
from p2pgan.wire.status import grpc_status
from p2pgan.wire.streams import MAX_PUSH_STREAMS, MAX_STREAMS_PER_MEMBER, StreamGate
from p2pgan.wire.transport import INSTANCE_ID, INSTANCE_METADATA_KEY, SERVICE
from p2pgan.wire.v1 import gossip_pb2 as pb

#: (grpc context) -> caller's peer id from its TLS certificate, or None on an insecure server
Authenticator = Callable[[grpc.ServicerContext], "str | None"]


class PeerHooks(Protocol):
    """What the servicer asks of the peer behind it (the gRPC mixer implements it)."""

    def status(self) -> tuple[int, bool]:
        """(current step, training yet?) for Hello replies."""

    def contact(self, caller: str) -> None:
        """A member called us (it is up): re-dial it if our link to it is broken."""

    def state_frames(self, caller: str) -> Iterator[bytes]:
        """The FetchState reply for ``caller`` (blocks until a consistent snapshot exists)."""

    def left(self, caller: str, step: int, reason: str) -> None:
        """``caller`` announced that it leaves."""


class GossipService:
    """Serves Push (parameter streams into the inbox), Hello (identity/readiness/step), FetchState and Leave."""

    def __init__(self, inbox: Inbox, authenticate: Authenticator, hooks: PeerHooks, *, federation: str, peer_id: str,
                 layout_digest: str, element_count: int, compression: str = "none", connections: int = 1,
                 max_streams: int = MAX_PUSH_STREAMS) -> None:
        self._inbox = inbox
        self._authenticate = authenticate
        self._hooks = hooks
        self._federation = federation
        # per-member and total bounds on Push streams, idle timeout; a member keeps one stream per connection
        # (mixing.connections, the same for every member) and one more covers a reconnect
        self.streams = StreamGate(max_streams=max_streams, per_member=connections + MAX_STREAMS_PER_MEMBER - 1)
        self.serves = state_wire.ServeGate()  # per-member, total and rate bounds on FetchState calls
        self.refusals = RefusalLog(logging.getLogger("p2pgan.wire.status"))  # rate-limited refusal lines
        self._hello = pb.HelloReply(
            federation=federation, peer_id=peer_id, protocol_version=PROTOCOL_VERSION,
            layout_digest=layout_digest, element_count=element_count, compression=compression,
            connections=connections,
        )

    def push(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> pb.PushSummary:
        with grpc_status(context, "Push", self.refusals):
            identity = self._authenticate(context)
            with self.streams.stream(identity, lambda: (context.cancel(), self._inbox.wake()), requests,
                                     address=context.peer()) as stream:
                return pb.PushSummary(messages=self._inbox.receive(identity, stream, lambda: bool(stream.cancelled)))
        return pb.PushSummary()  # only reached when the caller went away

    def _caller(self, context: grpc.ServicerContext, federation: str, sender: str) -> str:
        """The calling member's id: its certificate's (checked against the membership) or, insecure, the claim."""
        identity = self._authenticate(context)
        if federation != self._federation:
            raise SecurityError(f"caller of federation {federation!r}, ours is {self._federation!r}")
        if identity is not None and sender and sender != identity:
            raise SecurityError(f"caller claims to be {sender!r} but its certificate names {identity!r}")
        caller = identity or sender
        self._inbox.check_caller(caller)
        return caller

    def hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        with grpc_status(context, "Hello", self.refusals):
            identity = self._authenticate(context)
            self._inbox.check_caller(identity)
            if identity is not None:
                self._hooks.contact(identity)
            context.set_trailing_metadata(((INSTANCE_METADATA_KEY, INSTANCE_ID),))  # lets a daemon spot itself
            step, training = self._hooks.status()
            reply = pb.HelloReply()
            reply.CopyFrom(self._hello)
            reply.step, reply.training = step, training
            return reply
        return pb.HelloReply()

    def fetch_state(self, request: pb.StateRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with contextlib.ExitStack() as held:
            frames: Iterable[bytes] = ()
            with grpc_status(context, "FetchState", self.refusals):
                caller = self._caller(context, request.federation, request.sender)
                held.enter_context(self.serves.admit(caller))  # or RESOURCE_EXHAUSTED at once
                timer = threading.Timer(state_wire.SERVE_DEADLINE_S, context.cancel)  # a stalled reader
                timer.daemon = True
                timer.start()
                held.callback(timer.cancel)
                self._hooks.contact(caller)
                frames = self._hooks.state_frames(caller)
            yield from frames

    def leave(self, request: pb.LeaveNotice, context: grpc.ServicerContext) -> pb.LeaveAck:
        with grpc_status(context, "Leave", self.refusals):
            caller = self._caller(context, request.federation, request.sender)
            self._hooks.left(caller, int(request.step), request.reason[:200])
        return pb.LeaveAck()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Push": grpc.stream_unary_rpc_method_handler(
                    self.push, request_deserializer=None, response_serializer=pb.PushSummary.SerializeToString
                ),
                "Hello": grpc.unary_unary_rpc_method_handler(
                    self.hello, request_deserializer=pb.HelloRequest.FromString,
                    response_serializer=pb.HelloReply.SerializeToString,
                ),
                "FetchState": grpc.unary_stream_rpc_method_handler(
                    self.fetch_state, request_deserializer=pb.StateRequest.FromString, response_serializer=None,
                ),
                "Leave": grpc.unary_unary_rpc_method_handler(
                    self.leave, request_deserializer=pb.LeaveNotice.FromString,
                    response_serializer=pb.LeaveAck.SerializeToString,
                ),
            },
        )
