"""The gRPC mixer: one network peer's row, mixed with its live neighbours over mutual-TLS gRPC.

Life cycle (what the daemon does)::

    with open_mixer(net, dim=d, layout_digest=digest) as mixer:   # server up, membership known
        mixer.wait_ready(net.connect_timeout_s)                   # members answer Hello (or a quorum)
        for k in steps:
            x = mixer.mix(x, k)                                   # x: shape [1, d]
        mixer.leave("done")                                       # neighbours stop waiting at once

Each step runs ``net.rounds`` lock-step rounds. In round r of step k this peer sends its current vector to
``topology.out_neighbours(rank, k, r)`` and waits, until the round's deadline, for the vectors of the
in-neighbours the :class:`~p2pgan.membership.Membership` *awaits* (live ones that have not moved past
the round). The result is ``sum_j W'[rank, j] x_j`` where ``W'`` is the topology's ``W`` with every
missing neighbour's weight moved to the self weight (:mod:`p2pgan.membership.churn`). A neighbour that
misses the deadline, whose stream breaks or that announced its leave is absent from then on, so one
failure costs at most one deadline; it is awaited again once a message shows it mixes at our pace.

Also served here (:class:`~p2pgan.wire.service.PeerHooks`): Hello replies with this peer's step,
FetchState (a consistent snapshot handed over by the training loop through :attr:`GrpcMixer.board`)
and Leave notices; that joining side, and its client (wait_ready, fetch_state, leave), is in
:mod:`p2pgan.wire.joining`. Links to any peer open lazily on first use and are reused; a failed stream reopens
with backoff, and at once when the peer shows up again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent import futures
from types import TracebackType

import torch

from p2pgan.compression.compressors import Encoded
from p2pgan.compression.operators import make_compressor
from p2pgan.compression.spec import canonical
from p2pgan.errors import ConfigError, PeerUnavailableError
from p2pgan.membership import Membership, live_weights
from p2pgan.membership.deadline import RoundDeadline
from p2pgan.mixing.base import MixHandle, Mixer
from p2pgan.mixing.robust import RobustMixing
from p2pgan.security.certs import normalize_fingerprint
from p2pgan.topology import Topology, make_topology
from p2pgan.wire import codec, transport
from p2pgan.wire.compressed import CompressedGossip
from p2pgan.wire.connections import StripedLink, open_link
from p2pgan.wire.config import NetworkConfig, PeerEntry
from p2pgan.wire.health import HealthReporter
from p2pgan.wire.inbox import Inbox, InboxContext
from p2pgan.wire.joining import Joining
from p2pgan.wire.limits import MAX_CONNECTIONS
from p2pgan.wire.service import GossipService
from p2pgan.wire.state import StateBoard
# threads: bounded Push streams (one set per connection, mixing.connections) + reserved for Hello
from p2pgan.wire.streams import MAX_PUSH_STREAMS, RESERVED_WORKERS

log = logging.getLogger(__name__)


class _Handle(MixHandle):
    def __init__(self, future: futures.Future[torch.Tensor]) -> None:
        self._future = future

    def wait(self) -> torch.Tensor:
        return self._future.result()


class GrpcMixer(Joining, Mixer):
    """Hosts ONE row (``ranks == (rank,)``, ``x`` of shape ``[1, dim]``); see the module docstring.

    Hello at start-up (:meth:`wait_ready`), state transfer and Leave are :class:`~p2pgan.wire.joining.Joining`'s.

    Construction starts the server (``.port`` is the bound port); :meth:`join` fixes the membership.
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
        compressor = make_compressor(net.compression, "network.compression")
        if compressor is not None and not 0 < net.consensus_step <= 1:
            raise ConfigError(f"network.consensus_step: {net.consensus_step} is outside (0, 1]")
        if not 1 <= net.connections <= MAX_CONNECTIONS:
            raise ConfigError(f"network.connections: {net.connections} is outside 1..{MAX_CONNECTIONS}")
        if net.key_interval < 0:
            raise ConfigError(f"network.key_interval: {net.key_interval} must be >= 0 (0: keys only on (re)connects)")
        self.net = net
        self.dim = dim
        self.compression = canonical(net.compression)
        #: compressed gossip's copies and keys (None: raw vectors, today's path)
        self.compressed = None if compressor is None else CompressedGossip(
            compressor, dim, gamma=net.consensus_step, key_interval=net.key_interval, overlap=net.streaming)
        self.layout_digest = layout_digest
        self.rounds = net.rounds
        self.members: tuple[str, ...] = ()
        self.rank = -1
        self.size = 0
        self.ranks: tuple[int, ...] = ()
        self.topology: Topology | None = None
        self.membership: Membership | None = None
        #: the training loop answers FetchState requests through this board between steps
        self.board = StateBoard()
        #: set during a step when a neighbour we waited for had already moved past the round: this peer
        #: is behind the federation (the daemon asks the membership how to catch up)
        self.out_of_sync = False
        #: how long a round waits for its awaited neighbours (adapts to observed arrivals, bounded by
        #: ``net.round_timeout_s``)
        self.deadline = RoundDeadline(net.round_timeout_s, adaptive=net.adaptive_deadline)
        self._tls = None if net.insecure else net.tls
        self._wire_dtype = codec.WIRE_DTYPES[net.wire_dtype][0]
        #: messages sent as float32 although ``net.wire_dtype`` is narrower: its range could not hold x (:meth:`_to_wire`)
        self.wire_fallbacks = 0
        self._peers: dict[str, PeerEntry] = {}
        self._pins: dict[str, str] = {}
        self._links: dict[str, transport.Link | StripedLink] = {}
        self._links_lock = threading.Lock()
        self._inbox = Inbox()
        self._worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pgan-mix")
        self._closers: list[Callable[[], None]] = []
        self._closed = False
        self.robust = RobustMixing(net.robust)  # issue 9: bounds every neighbour's pull (p2pgan.mixing.robust)
        self._inbox.on_refused = self.robust.refused  # ... and counts members' refused messages toward a report
        self.round_seconds: list[float] = []  # duration of every round so far (benchmarks, selftest)
        service = GossipService(
            self._inbox, self._authenticate, self, federation=net.federation, peer_id=net.peer_id,
            layout_digest=layout_digest, element_count=dim, compression=self.compression, connections=net.connections,
            max_streams=MAX_PUSH_STREAMS * net.connections,
        )
        self.service = service
        self.health = HealthReporter()  # grpc.health.v1 on the same port: SERVING once wait_ready succeeds
        self._server, self.port = transport.open_server(
            net.listen_host, net.listen_port, [service.handler(), *self.health.handlers()], self._tls,
            max_workers=MAX_PUSH_STREAMS * net.connections + RESERVED_WORKERS,
        )

    # -- membership ------------------------------------------------------------------------------------
    def join(self, peers: tuple[PeerEntry, ...] | None = None) -> None:
        """Fix the membership: ``peers`` (found by discovery) if given, else ``net.roster``."""
        net = self.net
        membership = Membership(net.peer_id, net.roster if peers is None else peers)
        self.membership = membership
        self._peers = dict(membership.entries)
        self._pins = {p.id: normalize_fingerprint(p.fingerprint) for p in self._peers.values() if p.fingerprint}
        self.members = membership.members
        self.size = membership.size
        self.rank = membership.rank
        self.ranks = (self.rank,)
        self.topology = make_topology(net.topology, self.size, seed=net.seed, members=self.members, rounds=net.rounds)
        membership.add_listener(self._on_member_change)
        self.robust.on_suspect = membership.suspect  # one notion of a suspect member
        self._inbox.configure(
            InboxContext(
                federation=net.federation, self_id=net.peer_id, members=frozenset(self.members),
                layout_digest=self.layout_digest, element_count=self.dim, in_neighbours=self._in_neighbour_ids,
                membership=membership,
                accept=None if self.compressed is None else self.compressed.accept,
                on_stale=None if self.compressed is None else self.compressed.stale,
                on_shard=None if self.compressed is None else self.compressed.arrive,
                on_broken=None if self.compressed is None else self.compressed.broken,
            )
        )

    def close_with(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` when the mixer closes (e.g. the zeroconf announcement that found the members)."""
        self._closers.append(closer)

    def _in_neighbour_ids(self, step: int, round: int) -> set[str]:
        assert self.topology is not None
        return {self.members[j] for j in self.topology.in_neighbours(self.rank, step, round)}

    def _authenticate(self, context: object) -> str | None:
        if self._tls is None:
            return None
        return transport.tls_identity(context, self.net.federation, self._pins)  # type: ignore[arg-type]

    def _link(self, pid: str) -> transport.Link | StripedLink:
        with self._links_lock:
            link = self._links.get(pid)
            if link is None:
                link = self._links[pid] = open_link(self._peers[pid], self.net.federation, self._tls,
                                                               on_gone=self._on_gone, connections=self.net.connections)
            return link

    def _refresh_link(self, pid: str) -> None:
        """Replace a broken link to ``pid`` (it is back: dial it now rather than after the backoff)."""
        with self._links_lock:
            link = self._links.get(pid)
            if link is None or not link.broken:
                return
            del self._links[pid]
        link.close()

    def _on_gone(self, pid: str, reason: str) -> None:
        if self.membership is not None and not self._closed:
            self.membership.mark_absent(pid, reason)

    def _on_member_change(self, pid: str, live: bool, reason: str) -> None:
        self._inbox.wake()
        if live:
            self._refresh_link(pid)

    # -- what the servicer asks (PeerHooks) --------------------------------------------------------------
    def status(self) -> tuple[int, bool]:
        m = self.membership
        return (m.step, m.training and not m.leaving) if m is not None else (0, False)

    def contact(self, caller: str) -> None:
        if caller in self._peers:
            self._refresh_link(caller)

    # -- mixing ----------------------------------------------------------------------------------------
    def start(self, x: torch.Tensor, step: int) -> MixHandle:
        self._check_input(x)
        return _Handle(self._worker.submit(self._run, x[0].detach().clone(), step))

    def mix(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """``start(x, step).wait()`` without start's private copy of ``x`` (the caller waits, so ``x`` cannot
        change meanwhile, and rounds never write their input); with no rounds the result is still a copy."""
        self._check_input(x)
        row = x[0].detach() if self.rounds else x[0].detach().clone()
        return self._worker.submit(self._run, row, step, self.rounds > 0).result()

    def _check_input(self, x: torch.Tensor) -> None:
        self._require_joined()
        if x.ndim != 2 or x.shape != (1, self.dim):
            raise ValueError(f"GrpcMixer hosts one row: x must have shape [1, {self.dim}], got {tuple(x.shape)}")
        if self._closed:
            raise PeerUnavailableError("the mixer is closed")

    def _run(self, row: torch.Tensor, step: int, borrowed: bool = False) -> torch.Tensor:
        """The step's rounds on ``row``; ``borrowed``: ``row`` is the caller's, which may change after we return."""
        assert self.membership is not None
        t_start = time.perf_counter()
        self.membership.step = step
        self.out_of_sync = False
        cur = row
        for r in range(self.rounds):
            t0 = time.perf_counter()
            cur, reading = self._round(cur, step, r)
            self.round_seconds.append(time.perf_counter() - t0)
            if r == 0 and borrowed and reading is not None:
                # round 0 sent the caller's own row, which may change once we return: whatever a slow
                # link has not sent yet is copied now (usually nothing); later rounds send our own tensors
                reading.detach()
        self._inbox.advance(step, self.rounds)
        self.stats.rounds += self.rounds
        self.stats.seconds += time.perf_counter() - t_start
        return cur.unsqueeze(0)

    def _round(self, cur: torch.Tensor, step: int, r: int) -> tuple[torch.Tensor, codec.OutgoingMessage | None]:
        """One round: the mixed row, and the message sent that reads ``cur`` in place (None: no message, or
        one that reads its own copy, as a narrower wire dtype does)."""
        topo, m = self.topology, self.membership
        assert topo is not None and m is not None
        self._inbox.advance(step, r)
        weights = topo.in_weights(self.rank, step, r)
        outs = topo.out_neighbours(self.rank, step, r)
        reading = None
        if self.compressed is not None:  # also with no out-neighbour: the own public copy follows x every round
            self.stats.bytes_sent += self.compressed.send(
                cur, step, r, [self.members[j] for j in outs], self._link,
                lambda enc, nbytes, shard_bytes: self._header(step, r, enc, nbytes, shard_bytes), self.net.shard_bytes)
        elif outs:
            wire, wire_name = self._to_wire(cur, step, r)
            header = codec.MessageHeader(
                federation=self.net.federation, sender=self.net.peer_id, step=step, round=r,
                layout_digest=self.layout_digest, dtype=wire_name, element_count=self.dim,
                shard_count=codec.shard_count(wire.numel() * wire.element_size(), self.net.shard_bytes),
            )
            # frames made on demand and shared by the links: a few shards alive, not a copy of the vector
            message = codec.OutgoingMessage(header, codec.le_bytes(wire), self.net.shard_bytes)
            for j in outs:
                self.stats.bytes_sent += self._link(self.members[j]).send_message(message)
            if wire.data_ptr() == cur.data_ptr():
                reading = message
        senders = [self.members[j] for j in weights if j != self.rank]
        limit = self.deadline.current()
        t0 = time.monotonic()
        got = self._inbox.take(step, r, senders, deadline=t0 + limit)
        waited = time.monotonic() - t0
        self.stats.bytes_received = self._inbox.bytes_received
        missing = set()
        for j in weights:
            pid = self.members[j]
            if j == self.rank or pid in got:
                continue
            missing.add(j)
            self.stats.dropped += 1
            if m.passed(pid, step, r):
                self.out_of_sync = True  # it did not wait for us: we are behind
            elif m.is_live(pid):
                m.mark_absent(pid, f"no vector for step {step} round {r} within {limit:.3g} s")
        if not missing:
            self.deadline.observe(waited)
        row = live_weights(weights, self.rank, missing)
        if self.compressed is not None:
            mixed, out_of_step = self.compressed.combine(
                cur, self.robust, self.net.peer_id, {self.members[j]: w for j, w in row.items()}, got, step, r)
            self.stats.dropped += len(out_of_step)
            return mixed, None
        shares = [(self.members[j], got[self.members[j]], w) for j, w in row.items() if j != self.rank]
        # w_ii x_i + sum_j w_ij x_j, each neighbour's pull bounded (a bounded share's rest goes to x_i)
        return self.robust.combine(cur, row[self.rank], shares, r, f"step {step} round {r}"), reading

    def _header(self, step: int, r: int, enc: Encoded, nbytes: int, shard_bytes: int) -> codec.MessageHeader:
        """The header of a compressed-gossip message (:mod:`p2pgan.wire.compressed`) of ``nbytes`` payload cut
        into shards of ``shard_bytes``."""
        assert self.compressed is not None
        return codec.MessageHeader(
            federation=self.net.federation, sender=self.net.peer_id, step=step, round=r,
            layout_digest=self.layout_digest, dtype=codec.ENCODING_DTYPES[enc.encoding], element_count=self.dim,
            shard_count=codec.shard_count(nbytes, shard_bytes), encoding=enc.encoding,
            copy_version=self.compressed.own.version, block_elements=enc.block_elements, value_count=enc.value_count,
        )

    def _to_wire(self, cur: torch.Tensor, step: int, r: int) -> tuple[torch.Tensor, str]:
        """``cur`` in the wire dtype, or in float32 when the cast would turn finite values into inf.

        float16 ends at 65504 (bfloat16 at ~3.39e38): a larger weight would go out as inf, every receiver
        refuses a non-finite vector, and robust mixing then treats this peer as absent, so it would quietly
        drop out of the mix. Messages are self-describing (the header names the dtype, receivers accept all
        of them), so such a message is sent as float32 instead (twice the bytes, nothing lost) and the
        fallback is logged and counted (:attr:`wire_fallbacks`). Only this peer's neighbours' copies are
        ever rounded: its own share of the mix is ``cur`` itself, at full precision (:meth:`_round`).
        """
        name = self.net.wire_dtype
        wire = cur.to(self._wire_dtype)
        if name == "float32":
            return wire, name
        # a finite sum (accumulated in float32: no allocation) proves every value finite; else check exactly
        if math.isfinite(float(wire.sum(dtype=torch.float32))) or bool(torch.isfinite(wire).all()):
            return wire, name
        if not bool(torch.isfinite(cur).all()):
            return wire, name  # already non-finite before the cast: receivers refuse it in any dtype
        self.wire_fallbacks += 1
        biggest = float(cur.abs().max())
        level = logging.WARNING if self.wire_fallbacks == 1 or self.wire_fallbacks % 1000 == 0 else logging.DEBUG
        log.log(level, "step %d round %d: mixing.wire_dtype %s cannot carry a weight of magnitude %.4g (largest "
                "finite %.6g); sent as float32 instead (%d such messages so far; use bfloat16, which has "
                "float32's range, if this persists)", step, r, name, biggest, torch.finfo(self._wire_dtype).max,
                self.wire_fallbacks)
        return cur.to(torch.float32), "float32"

    # -- shutdown --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.health.shutdown()
        self.board.close()
        self._inbox.close()
        self._worker.shutdown(wait=True, cancel_futures=True)
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing must go on (a zeroconf that is already down, ...)
                log.exception("closing %s failed", closer)
        with self._links_lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
        self._server.stop(grace=transport.SERVER_STOP_GRACE_S).wait()

    def __enter__(self) -> GrpcMixer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_mixer(net: NetworkConfig, *, dim: int, layout_digest: str = "",
               discover: Callable[[GrpcMixer], tuple[PeerEntry, ...]] | None = None) -> GrpcMixer:
    """Start the server, fix the membership and return the mixer.

    The members are ``net.roster``, or what ``discover(mixer)`` returns (zeroconf needs the bound port:
    see :func:`p2pgan.daemon.mixer.make_mixer`). The result is a context manager; call
    :meth:`GrpcMixer.wait_ready` before step 0 so that no peer starts mixing while its neighbours are
    still starting up.
    """
    mixer = GrpcMixer(net, dim=dim, layout_digest=layout_digest)
    try:
        mixer.join(discover(mixer) if discover is not None else None)
    except BaseException:
        mixer.close()
        raise
    return mixer
