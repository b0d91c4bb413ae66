"""The gRPC mixer: one network peer's row, mixed with its neighbours over mutual-TLS gRPC.

Life cycle (what the daemon does)::

    with open_mixer(net, dim=d, layout_digest=digest) as mixer:   # server up, membership resolved
        mixer.wait_ready(net.connect_timeout_s)                   # every member answers Hello
        for k in steps:
            x = mixer.mix(x, k)                                   # x: shape [1, d]

Each step runs ``net.rounds`` lock-step rounds. In round r of step k this peer sends its current vector to
``topology.out_neighbours(rank, k, r)`` and waits until the round's deadline (``net.round_timeout_s``)
for ``topology.in_weights(rank, k, r)``'s senders; the result is ``sum_j W[rank, j] x_j``. A neighbour
that misses the deadline is dropped for that round: its weight moves to the self weight (the row
still sums to 1), a warning is logged and ``stats.dropped`` counts it. Links to any peer open lazily on
first use and are reused (Rand-DP talks to new peers every round); a failed stream reopens with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from types import TracebackType

import torch

from p2pgan.discovery.roster import check_members
from p2pgan.errors import ConfigError, PeerUnavailableError, SecurityError
from p2pgan.mixing.base import MixHandle, Mixer
from p2pgan.mixing.robust import RobustMixing
from p2pgan.security.certs import normalize_fingerprint
from p2pgan.topology import Topology, make_topology
from p2pgan.wire import codec, transport
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.inbox import Inbox, InboxContext
from p2pgan.wire.service import GossipService
from p2pgan.wire.streams import SERVER_WORKERS  # threads: bounded Push streams + reserved for Hello
from p2pgan.wire.v1 import gossip_pb2 as pb

log = logging.getLogger(__name__)

#: how often wait_ready retries a member that is not up yet
READY_RETRY_S = 0.2


class _Handle(MixHandle):
    def __init__(self, future: futures.Future[torch.Tensor]) -> None:
        self._future = future

    def wait(self) -> torch.Tensor:
        return self._future.result()


class GrpcMixer(Mixer):
    """Hosts ONE row (``ranks == (rank,)``, ``x`` of shape ``[1, dim]``); see the module docstring.

    Construction starts the server (``.port`` is the bound port); :meth:`join` resolves the membership.
    :func:`open_mixer` does both.
    """

    def __init__(self, net: NetworkConfig, *, dim: int, layout_digest: str = "") -> None:
        super().__init__()
        if net.tls is None and not net.insecure:
            raise ConfigError("network.tls: certificates are required (mutual TLS); insecure=True disables it")
        if net.insecure:
            log.warning(transport.INSECURE_WARNING)
        if not codec.MIN_SHARD_BYTES <= net.shard_bytes <= codec.MAX_SHARD_BYTES:
            raise ConfigError(
                f"network.shard_bytes: {net.shard_bytes} is outside {codec.MIN_SHARD_BYTES}..{codec.MAX_SHARD_BYTES}"
            )
        if dim < 1:
            raise ConfigError(f"dim: the parameter vector must have at least one element, got {dim}")
        self.net = net
        self.dim = dim
        self.layout_digest = layout_digest
        self.rounds = net.rounds
        self.members: tuple[str, ...] = ()
        self.rank = -1
        self.size = 0
        self.ranks: tuple[int, ...] = ()
        self.topology: Topology | None = None
        self._tls = None if net.insecure else net.tls
        self._wire_dtype = codec.WIRE_DTYPES[net.wire_dtype][0]
        self._peers: dict[str, PeerEntry] = {}
        self._pins: dict[str, str] = {}
        self._links: dict[str, transport.Link] = {}
        self._links_lock = threading.Lock()
        self._inbox = Inbox()
        self._worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pgan-mix")
        self._discovery = None
        self._closed = False
        self.robust = RobustMixing(net.robust)  # issue 9: bounds every neighbour's pull (p2pgan.mixing.robust)
        self._inbox.on_refused = self.robust.refused  # ... and counts members' refused messages toward a report
        self.round_seconds: list[float] = []  # duration of every round so far (benchmarks, selftest)
        service = GossipService(
            self._inbox, self._authenticate, federation=net.federation, peer_id=net.peer_id,
            layout_digest=layout_digest, element_count=dim,
        )
        self._server, self.port = transport.open_server(
            net.listen_host, net.listen_port, [service.handler()], self._tls, max_workers=SERVER_WORKERS
        )

    # -- membership ------------------------------------------------------------------------------------
    def join(self, peers: tuple[PeerEntry, ...] | None = None) -> None:
        """Fix the membership: ``peers`` if given, else the roster or zeroconf as ``net.discovery`` says."""
        net = self.net
        if peers is None and net.discovery == "zeroconf":
            from p2pgan.discovery.mdns import ZeroconfDiscovery

            self._discovery = ZeroconfDiscovery(net, port=self.port)
            peers = self._discovery.discover(net.expected_peers, timeout=net.connect_timeout_s)
        elif peers is None:
            peers = net.roster
        check_members(peers, net.peer_id, source="roster")
        self._peers = {p.id: p for p in peers}
        self._pins = {p.id: normalize_fingerprint(p.fingerprint) for p in peers if p.fingerprint}
        self.members = tuple(sorted(self._peers))
        self.size = len(self.members)
        self.rank = self.members.index(net.peer_id)
        self.ranks = (self.rank,)
        self.topology = make_topology(net.topology, self.size, seed=net.seed, members=self.members)
        self._inbox.configure(
            InboxContext(
                federation=net.federation, self_id=net.peer_id, members=frozenset(self.members),
                layout_digest=self.layout_digest, element_count=self.dim, in_neighbours=self._in_neighbour_ids,
            )
        )

    def _in_neighbour_ids(self, step: int, round: int) -> set[str]:
        assert self.topology is not None
        return {self.members[j] for j in self.topology.in_neighbours(self.rank, step, round)}

    def _authenticate(self, context: object) -> str | None:
        if self._tls is None:
            return None
        return transport.tls_identity(context, self.net.federation, self._pins)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every other member answers Hello as the right peer (or raise PeerUnavailableError).

        Also checks pinned fingerprints of the members with a TLS probe. Call once before step 0.
        """
        self._require_joined()
        deadline = time.monotonic() + (self.net.connect_timeout_s if timeout is None else timeout)
        missing = [m for m in self.members if m != self.net.peer_id]
        last_error: dict[str, str] = {}
        while missing:
            for pid in list(missing):
                try:
                    reply = self._link(pid).hello(
                        pb.HelloRequest(federation=self.net.federation, sender=self.net.peer_id),
                        timeout=max(0.05, min(1.0, deadline - time.monotonic())),
                    )
                except Exception as exc:  # grpc.RpcError: not up yet
                    last_error[pid] = str(getattr(exc, "details", lambda: exc)())
                    continue
                if reply.federation != self.net.federation or reply.peer_id != pid:
                    raise SecurityError(f"peer {pid!r} answered as {reply.peer_id!r} of {reply.federation!r}")
                if reply.element_count != self.dim:
                    raise ConfigError(f"peer {pid!r} mixes vectors of {reply.element_count} elements, ours have {self.dim}")
                if self._tls is not None and self._peers[pid].fingerprint:
                    transport.check_pin(self._peers[pid], self._tls, self.net.federation)
                missing.remove(pid)
            if missing:
                if time.monotonic() >= deadline:
                    detail = "; ".join(f"{p}: {last_error.get(p, '?')}" for p in missing)
                    raise PeerUnavailableError(f"peers not reachable within the timeout: {detail}")
                time.sleep(READY_RETRY_S)  # polling a remote peer, not synchronizing threads

    def _require_joined(self) -> None:
        if self.topology is None:
            raise PeerUnavailableError("the mixer has no membership yet: call join() (open_mixer does)")

    def _link(self, pid: str) -> transport.Link:
        with self._links_lock:
            link = self._links.get(pid)
            if link is None:
                link = self._links[pid] = transport.Link(self._peers[pid], self.net.federation, self._tls)
            return link

    # -- mixing ----------------------------------------------------------------------------------------
    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        self._check_input(x)
        return _Handle(self._worker.submit(self._run, x[0].detach().clone(), step))

    def mix(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """``start(x, step).wait()`` without start's private copy of ``x`` (the caller waits, so ``x`` cannot
        change meanwhile, and rounds never write their input); with no rounds the result is still a copy."""
        self._check_input(x)
        row = x[0].detach() if self.rounds else x[0].detach().clone()
        return self._worker.submit(self._run, row, step).result()

    def _check_input(self, x: torch.Tensor) -> None:
        self._require_joined()
        if x.ndim != 2 or x.shape != (1, self.dim):
            raise ValueError(f"GrpcMixer hosts one row: x must have shape [1, {self.dim}], got {tuple(x.shape)}")
        if self._closed:
            raise PeerUnavailableError("the mixer is closed")

    def _run(self, row: torch.Tensor, step: int) -> torch.Tensor:
        assert self.topology is not None
        t_start = time.perf_counter()
        cur = row
        for r in range(self.rounds):
            t0 = time.perf_counter()
            cur = self._round(cur, step, r)
            self.round_seconds.append(time.perf_counter() - t0)
        self._inbox.advance(step, self.rounds)
        self.stats.rounds += self.rounds
        self.stats.seconds += time.perf_counter() - t_start
        return cur.unsqueeze(0)

    def _round(self, cur: torch.Tensor, step: int, r: int) -> torch.Tensor:
        topo = self.topology
        assert topo is not None
        self._inbox.advance(step, r)
        weights = topo.in_weights(self.rank, step, r)
        outs = topo.out_neighbours(self.rank, step, r)
        if outs:
            wire = cur.to(self._wire_dtype)
            header = codec.MessageHeader(
                federation=self.net.federation, sender=self.net.peer_id, step=step, round=r,
                layout_digest=self.layout_digest, dtype=self.net.wire_dtype, element_count=self.dim,
                shard_count=codec.shard_count(wire.numel() * wire.element_size(), self.net.shard_bytes),
            )
            frames = codec.encode(header, codec.le_bytes(wire), self.net.shard_bytes)
            nbytes = sum(len(f) for f in frames)
            for j in outs:
                if self._link(self.members[j]).send(frames):
                    self.stats.bytes_sent += nbytes
        senders = [self.members[j] for j in weights if j != self.rank]
        got = self._inbox.take(step, r, senders, deadline=time.monotonic() + self.net.round_timeout_s)
        self.stats.bytes_received = self._inbox.bytes_received
        self_weight = weights.get(self.rank, 0.0)
        out = cur * self_weight
        extra = 0.0
        gate = self.robust.begin(cur, r, f"step {step} round {r}")
        for j, w in weights.items():
            if j == self.rank:
                continue
            vec = got.get(self.members[j])
            if vec is None:
                extra += w
                self.stats.dropped += 1
                log.warning(
                    "step %d round %d: no vector from %s within %.3g s; its weight %.3g goes to ourselves",
                    step, r, self.members[j], self.net.round_timeout_s, w,
                )
            else:
                extra += gate.add(out, vec, w, self.members[j])  # w x_j, or less with the rest to x_i
        if extra:
            out.add_(cur, alpha=extra)
        return out

    # -- shutdown --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.close()
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._discovery is not None:
            self._discovery.close()
        with self._links_lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
        self._server.stop(grace=transport.SERVER_STOP_GRACE_S).wait()

    def __enter__(self) -> GrpcMixer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_mixer(net: NetworkConfig, *, dim: int, layout_digest: str = "") -> GrpcMixer:
    """Start the server, resolve the membership (roster or zeroconf) and return the mixer.

    The result is a context manager; call :meth:`GrpcMixer.wait_ready` before step 0 so that no peer
    starts mixing while its neighbours are still starting up.
    """
    mixer = GrpcMixer(net, dim=dim, layout_digest=layout_digest)
    try:
        mixer.join()
    except BaseException:
        mixer.close()
        raise
    return mixer
