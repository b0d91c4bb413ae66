"""The standard gRPC health service (``grpc.health.v1.Health``) on the daemon's own gRPC port.

What a Kubernetes ``grpc:`` probe, ``grpc_health_probe`` or a load balancer calls. Two service names
answer: ``""`` (the server as a whole, what probes ask by default) and the gossip service's full name
(:data:`GOSSIP_SERVICE`). Both say NOT_SERVING while the daemon starts (the server is up but the
membership has not formed: not every member has answered yet), SERVING once it has, and NOT_SERVING
again when it leaves (the mixer closes: after the last step, before the port closes). ``Watch``
streams each change, so a client need not poll.

The health service sits behind the same mutual TLS as the gossip service: a probe presents a
certificate issued by the federation CA (``p2pgan certs issue --peer probe ...``) and checks the
daemon's identity name ``<peer>.<federation>.p2pgan``, for example::

    grpc_health_probe -addr=HOST:PORT -tls -tls-ca-cert ca.pem -tls-client-cert probe/peer.pem \\
        -tls-client-key probe/peer.key -tls-server-name alice.demo.p2pgan

It reveals nothing but the serving state, so any certificate of the federation may ask (the gossip
service additionally requires a member of the roster). The servicer itself is grpcio-health-checking's.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from p2pgan import sdnotify
from p2pgan.wire.v1 import gossip_pb2 as pb

#: the gossip service's full name, which probes may ask about besides the overall ``""``
GOSSIP_SERVICE = pb.DESCRIPTOR.services_by_name["Gossip"].full_name
#: the service names this server reports on
SERVICE_NAMES: tuple[str, ...] = ("", GOSSIP_SERVICE)
#: a component's own health: SERVING while the daemon's checkpoints are written, NOT_SERVING while the
#: disk refuses them (the daemon trains on; ``p2pgan status`` shows it). Not part of the overall ``""``.
CHECKPOINT_SERVICE = "p2pgan.Checkpoint"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HandlerCollector:
    """Stands in for a server so that the library's ``add_HealthServicer_to_server`` hands us its
    handler table, to be passed to :func:`p2pgan.wire.transport.open_server` with the gossip handler."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        """Registered (pre-resolved) methods are an optimisation; the generic handler serves the same RPCs."""


class HealthReporter:
    """The daemon's serving state, published through ``grpc.health.v1.Health``.

    Starts NOT_SERVING; :meth:`set_serving` flips it; :meth:`shutdown` makes it NOT_SERVING for good
    (a leaving daemon never reports SERVING again). The same changes go to systemd when it asked for
    them (:mod:`p2pgan.sdnotify`: READY=1 on SERVING, STOPPING=1 on shutdown).
    """

    def __init__(self) -> None:
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        for name in SERVICE_NAMES:
            self.servicer.set(name, NOT_SERVING)
        self.servicer.set(CHECKPOINT_SERVICE, SERVING)  # no failed write known
        self._serving = False
        self._shut = False

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The generic RPC handlers to serve next to the gossip service."""
        collector = _HandlerCollector()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, collector)
        return collector.handlers

    @property
    def serving(self) -> bool:
        return self._serving

    def set_serving(self, serving: bool) -> None:
        self._serving = serving
        for name in SERVICE_NAMES:
            self.servicer.set(name, SERVING if serving else NOT_SERVING)
        # systemd (Type=notify) counts the unit as started when the health service turns SERVING
        if serving:
            sdnotify.notify("READY=1", "STATUS=serving")
        else:
            sdnotify.notify("STATUS=not serving")

    def set_component(self, name: str, ok: bool) -> None:
        """Report one component's health (e.g. :data:`CHECKPOINT_SERVICE`) under its own service name."""
        if self._shut:
            return
        self.servicer.set(name, SERVING if ok else NOT_SERVING)

    def shutdown(self) -> None:
        """NOT_SERVING from now on, whatever is set later (the daemon is leaving)."""
        self._serving = False
        self._shut = True
        self.servicer.enter_graceful_shutdown()
        sdnotify.notify("STOPPING=1", "STATUS=leaving")


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0, *, wait_for_ready: bool = False) -> str:
    """Ask a server's health once; returns ``"SERVING"``, ``"NOT_SERVING"``, ... (raises grpc.RpcError:
    UNAVAILABLE at once for a server that is down, unless ``wait_for_ready`` waits up to ``timeout``)."""
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=wait_for_ready)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
