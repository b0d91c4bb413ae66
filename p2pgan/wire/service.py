"""The thin gRPC servicer: decode, call plain logic (:class:`p2pgan.wire.inbox.Inbox`), map errors once.

Push is served by a generic handler with identity deserialization, so each stream message reaches the
inbox as the raw ``bytes`` of a Frame (no protobuf object per shard); Hello uses the generated classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from p2pgan.logsafe import RefusalLog
from p2pgan.wire.codec import PROTOCOL_VERSION
from p2pgan.wire.inbox import Inbox
from p2pgan.wire.status import grpc_status
from p2pgan.wire.streams import StreamGate
from p2pgan.wire.transport import INSTANCE_ID, INSTANCE_METADATA_KEY, SERVICE
from p2pgan.wire.v1 import gossip_pb2 as pb

#: (grpc context) -> caller's peer id from its TLS certificate, or None on an insecure server
Authenticator = Callable[[grpc.ServicerContext], "str | None"]


class GossipService:
    """Serves Push (parameter streams into the inbox) and Hello (identity/readiness)."""

    def __init__(self, inbox: Inbox, authenticate: Authenticator, *, federation: str, peer_id: str,
                 layout_digest: str, element_count: int) -> None:
        self._inbox = inbox
        self._authenticate = authenticate
        self.streams = StreamGate()  # per-member and total bounds on Push streams, idle timeout
        self.refusals = RefusalLog(logging.getLogger("p2pgan.wire.status"))  # rate-limited refusal lines
        self._hello = pb.HelloReply(
            federation=federation, peer_id=peer_id, protocol_version=PROTOCOL_VERSION,
            layout_digest=layout_digest, element_count=element_count,
        )

    def push(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> pb.PushSummary:
        with grpc_status(context, "Push", self.refusals):
            identity = self._authenticate(context)
            with self.streams.stream(identity, lambda: (context.cancel(), self._inbox.wake()), requests) as stream:
                return pb.PushSummary(messages=self._inbox.receive(identity, stream, lambda: bool(stream.cancelled)))
        return pb.PushSummary()  # only reached when the caller went away

    def hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        with grpc_status(context, "Hello", self.refusals):
            self._inbox.check_caller(self._authenticate(context))
            context.set_trailing_metadata(((INSTANCE_METADATA_KEY, INSTANCE_ID),))  # lets a daemon spot itself
            return self._hello
        return pb.HelloReply()

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
            },
        )
