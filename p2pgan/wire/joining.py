"""The joining side of the gRPC mixer: Hello at start-up, state transfer and Leave, both ways.

A peer that starts (or restarts) first asks every member Hello (:meth:`Joining.wait_ready`): who is up, as
the right peer, with our vector size, compression and connection count, and at which step; a joiner of a
running federation then fetches a member's state (:meth:`Joining.fetch_state`, served by
:meth:`Joining.state_frames` from the training loop's :class:`~p2pgan.wire.state.StateBoard`), and a peer
that stops tells the live members (:meth:`Joining.leave`, heard by :meth:`Joining.left`).

:class:`Joining` is a part of :class:`p2pgan.wire.mixer.GrpcMixer` (it inherits it); the mixer's round
logic and link management stay in :mod:`p2pgan.wire.mixer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc

from p2pgan.errors import ConfigError, PeerUnavailableError, SecurityError
from p2pgan.logsafe import printable
from p2pgan.membership import Membership
from p2pgan.membership.steps import agreed_step
from p2pgan.topology import Topology
from p2pgan.wire import transport
from p2pgan.wire.config import NetworkConfig, PeerEntry, TLSFiles
from p2pgan.wire.connections import StripedLink
from p2pgan.wire.health import HealthReporter
from p2pgan.wire.state import StateBoard, StateLayout, StateSnapshot, decode_state, encode_state
from p2pgan.wire.v1 import gossip_pb2 as pb

log = logging.getLogger("p2pgan.wire.mixer")  # the mixer's lines, as before the split

#: how often wait_ready retries a member that is not up yet
READY_RETRY_S = 0.2
#: once the federation is found running, the members that did not answer yet get this many more Hello
#: polls (a second or two): a joiner checks the states of as many members as it can reach
RUNNING_POLLS = 2
#: how long a FetchState call waits for the serving peer's next step boundary (server side)
STATE_SERVE_TIMEOUT_S = 10.0
#: how long a joiner waits for one member's whole state reply: this much, plus the bytes at
#: STATE_FETCH_MIN_RATE; a hung or unreachable member costs seconds, and the others are asked meanwhile
STATE_FETCH_BASE_S = 15.0
#: the slowest transfer rate (bytes per second) a state reply is given time for
STATE_FETCH_MIN_RATE = 20e6
#: how long a leaving peer waits for its Leave notices to be delivered
LEAVE_TIMEOUT_S = 1.0
#: characters of a member's gRPC status details shown in a log line (it is the member's text)
STATUS_DETAIL_CHARS = 200


def wrong_hello(reply: pb.HelloReply, pid: str, federation: str, dim: int, compression: str = "none",
                connections: int = 1) -> ConfigError | SecurityError | None:
    """What is wrong with member ``pid``'s Hello reply, if anything."""
    if reply.federation != federation or reply.peer_id != pid:
        return SecurityError(f"peer {pid!r} answered as {printable(reply.peer_id)} of "
                             f"{printable(reply.federation)}")
    if reply.element_count != dim:
        return ConfigError(f"peer {pid!r} mixes vectors of {reply.element_count} elements, ours have {dim}")
    if (reply.compression or "none") != compression:
        return ConfigError(f"peer {pid!r} gossips with mixing.compression {printable(reply.compression or 'none')}, "
                           f"ours is {compression!r}; every member needs the same")
    if (reply.connections or 1) != connections:  # an older peer says 0: one connection
        return ConfigError(f"peer {pid!r} keeps mixing.connections {reply.connections or 1}, ours is "
                           f"{connections}; every member needs the same")
    return None


class Joining:
    """Hello, state transfer and Leave of one peer; the mixer that inherits it sets these attributes."""

    net: NetworkConfig
    dim: int
    compression: str
    layout_digest: str
    size: int
    membership: Membership | None
    topology: Topology | None
    board: StateBoard
    health: HealthReporter
    _tls: TLSFiles | None
    _peers: dict[str, PeerEntry]
    _link: Callable[[str], transport.Link | StripedLink]

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the other members to answer Hello as the right peers, then fix who is live.

        Returns when every member answered, or when the members that already train agree on a step
        ahead of ours (the federation is running: this peer joins it; see :meth:`Membership.running`
        and :mod:`p2pgan.membership.steps`), or when ``net.start_quorum``
        members (self included) answered. Members that did not answer start as absent. Raises
        :class:`PeerUnavailableError` if none of that happens within ``timeout``. Also checks pinned
        fingerprints of the members with a TLS probe. Call once before step 0.
        """
        membership = self._require_joined()
        net = self.net
        deadline = time.monotonic() + (net.connect_timeout_s if timeout is None else timeout)
        quorum = min(net.start_quorum or self.size, self.size)
        missing = list(membership.others())
        last_error: dict[str, str] = {}
        refused: dict[str, ConfigError | SecurityError] = {}
        polls = 0  # polls since the federation was found running
        while missing:
            wait = max(0.05, min(1.0, deadline - time.monotonic()))
            calls = {pid: self._link(pid).hello.future(
                pb.HelloRequest(federation=net.federation, sender=net.peer_id), timeout=wait) for pid in missing}
            for pid, call in calls.items():
                try:
                    reply = call.result()
                except grpc.RpcError as exc:  # not up yet
                    last_error[pid] = str(exc.details() if isinstance(exc, grpc.Call) else exc)
                    continue
                missing.remove(pid)
                if self._tls is not None and self._peers[pid].fingerprint:
                    transport.check_pin(self._peers[pid], self._tls, net.federation)
                wrong = wrong_hello(reply, pid, net.federation, self.dim, self.compression, net.connections)
                if wrong is not None:  # one member's odd reply must not stop us: it counts as absent
                    refused[pid] = wrong
                    membership.suspect(pid, f"Hello reply refused: {wrong.args[0]}")
                    continue
                membership.reported(pid, int(reply.step), training=reply.training)
            # the federation runs ahead of us by the agreed step of those that train (one member's word
            # that it trains does not end our wait: p2pgan.membership.steps)
            running = agreed_step(membership.step, membership.running().values(), self.size) > membership.step + 1
            if not missing or (running and polls >= RUNNING_POLLS) or self.size - len(missing) >= quorum:
                break
            polls = polls + 1 if running else 0
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{p}: {last_error.get(p, '?')}" for p in missing)
                raise PeerUnavailableError(f"peers not reachable within the timeout: {detail}")
            time.sleep(READY_RETRY_S)  # polling a remote peer, not synchronizing threads
        if refused and len(refused) == self.size - 1 - len(missing):
            # every member that answered was refused: the odd one out is this peer (its config, its model)
            raise next(iter(refused.values()))
        for pid in missing:
            membership.mark_absent(pid, "did not answer at start-up")
        for pid, exc in refused.items():
            membership.mark_absent(pid, f"its Hello reply was refused: {exc.args[0]}")
        self.health.set_serving(True)

    def _require_joined(self) -> Membership:
        if self.membership is None or self.topology is None:
            raise PeerUnavailableError("the mixer has no membership yet: call join() (open_mixer does)")
        return self.membership

    # -- the server side (PeerHooks) ----------------------------------------------------------------------
    def state_frames(self, caller: str) -> Iterator[bytes]:
        snap = self.board.request(STATE_SERVE_TIMEOUT_S)
        log.info("handing our state at step %d to %s", snap.step, caller)
        return encode_state(snap, federation=self.net.federation, sender=self.net.peer_id,
                            layout_digest=self.layout_digest, shard_bytes=self.net.shard_bytes,
                            compression=self.compression)

    def left(self, caller: str, step: int, reason: str) -> None:
        if self.membership is not None:
            self.membership.mark_absent(caller, f"left at step {step} ({reason or 'no reason given'})", announced=True)

    # -- the client side ---------------------------------------------------------------------------------
    def fetch_state(self, pid: str, expected: StateLayout, timeout: float | None = None) -> StateSnapshot:
        """The current state of member ``pid``, checked against ``expected`` (our own state's layout).

        Raises :class:`PeerUnavailableError` when ``pid`` does not answer and :class:`ProtocolError`
        when its reply is malformed or its layout differs from ours.
        """
        self._require_joined()
        if timeout is None:
            timeout = STATE_FETCH_BASE_S + 4 * sum(expected.parts.values()) / STATE_FETCH_MIN_RATE
        call = self._link(pid).fetch_state(pb.StateRequest(federation=self.net.federation, sender=self.net.peer_id),
                                           timeout=timeout)
        try:
            return decode_state(call, federation=self.net.federation, sender=pid,
                                layout_digest=self.layout_digest, expected=expected, compression=self.compression)
        except grpc.RpcError as exc:  # one line: the status code and the peer's details, nothing else
            detail = (f"{exc.code().name}: {printable(exc.details(), STATUS_DETAIL_CHARS)}"
                      if isinstance(exc, grpc.Call) else printable(exc, STATUS_DETAIL_CHARS))
            raise PeerUnavailableError(f"state transfer from {pid}: {detail}") from None
        finally:
            call.cancel()

    def leave(self, reason: str) -> None:
        """Tell the live members that this peer leaves, so that none of them waits a deadline for it."""
        m = self.membership
        if m is None or m.leaving:
            return
        m.leaving = True
        notice = pb.LeaveNotice(federation=self.net.federation, sender=self.net.peer_id, step=m.step, reason=reason)
        calls = [self._link(pid).leave.future(notice, timeout=LEAVE_TIMEOUT_S) for pid in m.live_members()
                 if pid != self.net.peer_id]
        for call in calls:
            try:
                call.result()
            except grpc.RpcError:
                pass  # it is gone too, or will notice our absence by itself
