"""Where received parameter messages land: buffers keyed by (step, round, sender), plain logic, no gRPC.

The servicer hands every incoming stream to :meth:`Inbox.receive`, which validates each message against
this peer's context (federation, sender identity and membership, topology neighbours, layout digest,
vector length) and keeps its checked shards where they arrived. The mixer calls :meth:`Inbox.advance`
when it enters a round and :meth:`Inbox.take` to wait (with a deadline) for the neighbours' vectors of
that round.

Every message that passed every check (complete, sizes, checksums, finite values; also one that is
then dropped as late or too far ahead) is reported to the :class:`~p2pgan.membership.Membership` (who
was heard at which step), which is how an absent member comes back and how a peer notices that it fell
behind. A header alone counts for nothing: a step is reported only once its whole message was accepted,
and the membership lets the report expire (it decides steps by agreement, not by the furthest claim). A message for a
round we have passed is dropped (its sender is behind: not an error); so is one more than
:data:`MAX_STEP_SKEW` steps ahead (we are behind, and the daemon catches up; holding it would only cost
memory). Look-ahead is bounded: a sender may have at most :data:`LOOKAHEAD_MESSAGES` messages held
here (the one for our current round and one ahead); a further message blocks its stream, which is
backpressure through gRPC flow control, until the mixer catches up or :data:`LOOKAHEAD_WAIT_S` passes.
:meth:`Inbox.take` waits only for senders the membership says are *awaited* (live, and not already
heard at a later round), and wakes whenever the membership changes.

A message striped over several connections (``mixing.connections``; :mod:`p2pgan.wire.striping`) arrives
as parts on several streams of one sender: the first part's header reserves the slot as above, the
others join it, and the stream that completes the last part delivers the message. Only part 0 tells the
membership what is heard, and a sender whose message is still filling is awaited even when it was heard
at a later round (a faster connection's part of the next message may come first).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from p2pgan.errors import PeerUnavailableError, ProtocolError, SecurityError, StepWindowError
from p2pgan.membership import Membership
from p2pgan.logsafe import printable
from p2pgan.wire.codec import MessageHeader, ReceivedVector, ShardAssembler, decode_frame
from p2pgan.wire.striping import PartWriter, StripedMessage

log = logging.getLogger(__name__)

#: messages one sender may have buffered here (current round + one round ahead)
LOOKAHEAD_MESSAGES = 2
#: how long a stream that is too far ahead is held back before it is refused
LOOKAHEAD_WAIT_S = 30.0
#: a message more than this many steps ahead of ours is dropped (counted as heard, not held)
MAX_STEP_SKEW = 4

Key = tuple[int, int, str]


@dataclasses.dataclass
class _Slot:
    key: Key
    vec: Any = None  # set when complete: a ReceivedVector, or what InboxContext.accept made of it
    dead: bool = False  # purged while still filling: the writer does not commit it
    striped: StripedMessage | None = None  # the parts of a message striped over several connections


@dataclasses.dataclass(frozen=True)
class InboxContext:
    """What a message must agree with; fixed once the membership is known."""

    federation: str
    self_id: str
    members: frozenset[str]
    layout_digest: str
    element_count: int
    #: senders allowed at (step, round): this peer's in-neighbours in the topology
    in_neighbours: Callable[[int, int], Collection[str]]
    #: liveness and steps of the members (told what is heard; asked whom to wait for)
    membership: Membership | None = None
    #: compressed gossip (p2pgan.wire.compressed): checks a complete message of an encoding other than raw
    #: and returns what the mixer takes instead of the vector; None: only raw messages are accepted
    accept: Callable[[MessageHeader, ReceivedVector], Any] | None = None
    #: called with (sender, what accept returned) for a complete message the mixer will never take
    on_stale: Callable[[str, Any], None] | None = None
    #: called with (header, the shards so far) after each checked shard of an unstriped message, and with
    #: (header) when such a message ends before it is delivered (compressed gossip applies deltas as they come)
    on_shard: Callable[[MessageHeader, Sequence[memoryview]], None] | None = None
    on_broken: Callable[[MessageHeader], None] | None = None


class Inbox:
    """Thread-safe buffers of received vectors (see module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ctx: InboxContext | None = None
        self._slots: dict[Key, _Slot] = {}
        self._held: dict[str, int] = defaultdict(int)
        self._position: tuple[int, int] | None = None
        #: striped messages that arrive (or still fill) after their round: kept whole for on_stale, a few per sender
        self._late: dict[Key, StripedMessage] = {}
        self._closed = False
        self.bytes_received = 0
        #: called with (member id, reason) when a member's message is refused (robust mixing counts them)
        self.on_refused: Callable[[str, str], None] | None = None

    # -- set-up ----------------------------------------------------------------------------------------
    def configure(self, ctx: InboxContext) -> None:
        with self._cond:
            self._ctx = ctx
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter: streams held back by look-ahead (a cancelled one notices, see :meth:`receive`)
        and :meth:`take` (the membership changed: re-check whom it waits for)."""
        with self._cond:
            self._cond.notify_all()

    # -- the receiving side (server threads) -------------------------------------------------------------
    def receive(self, identity: str | None, messages: Iterable[bytes], cancelled: Callable[[], bool] = bool) -> int:
        """Consume one Push stream from the peer whose TLS identity is ``identity`` (None: insecure).

        Returns the number of complete messages accepted. Raises a :class:`P2PGANError` subclass that
        the servicer turns into a gRPC status; a message in progress is then discarded. A stream held
        back by look-ahead gives up as soon as ``cancelled()`` is true (see :meth:`wake`), so a cancelled
        stream never keeps its server thread.
        """
        ctx = self._context()
        if identity is not None:
            self._check_member(ctx, identity, "TLS certificate")
        try:
            return self._receive(ctx, identity, messages, cancelled)
        except (ProtocolError, SecurityError) as exc:
            if identity is not None and self.on_refused is not None:
                self.on_refused(identity, type(exc).__name__)
            raise

    def _receive(self, ctx: InboxContext, identity: str | None, messages: Iterable[bytes],
                 cancelled: Callable[[], bool]) -> int:
        accepted = 0
        writer: ShardAssembler | PartWriter | None = None
        slot: _Slot | None = None
        try:
            for msg in messages:
                frame = decode_frame(msg)
                self.bytes_received += len(msg)
                if isinstance(frame, MessageHeader):
                    if isinstance(writer, PartWriter):
                        raise ProtocolError(f"{frame._who}: new header inside part {writer.part} of the last message")
                    if writer is not None:
                        raise ProtocolError(
                            f"{frame._who}: new header after {writer._next} of {writer.header.shard_count} shards"
                        )
                    self._check_header(ctx, frame, identity)
                    # a late message (slot None) is still checked, then dropped; over mutual TLS (an identity)
                    # the records are authenticated, so shard checksums are not verified again
                    slot = self._reserve(frame, cancelled, verify_checksums=identity is None)
                    if frame.parts > 1:  # one part of a message striped over several connections
                        message = slot.striped if slot is not None else self._late_message(frame, identity is None)
                        assert message is not None
                        writer = message.join(frame)
                    else:
                        writer = ShardAssembler(frame, verify_checksums=identity is None)
                    continue
                if writer is None:
                    raise ProtocolError(f"shard {frame.index} arrived before any header")
                if isinstance(writer, PartWriter):
                    if writer.add(frame):  # the last part of the message: check it whole, then deliver it
                        self._forget_late(writer.message)
                        accepted += self._deliver(ctx, slot, writer.header, writer.message.vector())
                        self._heard(ctx, writer.header)  # its step counts only now: the message passed every check
                    if writer.done:
                        slot = writer = None
                    continue
                writer.add(frame)
                if ctx.on_shard is not None:
                    ctx.on_shard(writer.header, writer.shards)
                if writer.complete:
                    accepted += self._deliver(ctx, slot, writer.header, writer.vector())
                    self._heard(ctx, writer.header)  # its step counts only now: the message passed every check
                    slot = writer = None
            if isinstance(writer, PartWriter):
                writer.check_ended()  # raises: the stream ended inside its part
            elif writer is not None:
                writer.vector()  # raises: the stream ended inside a message
        except BaseException:
            if isinstance(writer, ShardAssembler) and ctx.on_broken is not None:
                ctx.on_broken(writer.header)
            raise
        finally:
            if slot is not None:
                self._abandon(slot)
        return accepted

    def _deliver(self, ctx: InboxContext, slot: _Slot | None, header: MessageHeader, vec: ReceivedVector) -> int:
        """Hand a complete message to its slot (1) or, late, to ``on_stale`` (0)."""
        item = vec if ctx.accept is None else ctx.accept(header, vec)
        if slot is not None:
            self._commit(slot, item, ctx)
            return 1
        if ctx.on_stale is not None:
            ctx.on_stale(header.sender, item)
        return 0

    def _late_message(self, h: MessageHeader, verify_checksums: bool) -> StripedMessage:
        """The striped message that late part ``h`` belongs to (its other parts may have arrived in time)."""
        key = (h.step, h.round, h.sender)
        with self._cond:
            message = self._late.get(key)
            if message is None:
                message = self._late[key] = StripedMessage(h, verify_checksums=verify_checksums)
                self._trim_late(h.sender)
            return message

    def _trim_late(self, sender: str) -> None:
        """At most LOOKAHEAD_MESSAGES late striped messages of ``sender`` are kept (the oldest go; caller locks)."""
        keys = sorted(k for k in self._late if k[2] == sender)
        for k in keys[:-LOOKAHEAD_MESSAGES]:
            del self._late[k]

    def _forget_late(self, message: StripedMessage) -> None:
        h = message.header
        key = (h.step, h.round, h.sender)
        with self._cond:
            if self._late.get(key) is message:
                del self._late[key]

    def check_caller(self, identity: str | None) -> None:
        """Hello's check: the membership is known (else :class:`PeerUnavailableError`) and holds the caller."""
        ctx = self._context()
        if identity is not None:
            self._check_member(ctx, identity, "TLS certificate")

    def _context(self) -> InboxContext:
        with self._cond:
            if self._closed:
                raise PeerUnavailableError("this peer is shutting down")
            if self._ctx is None:
                raise PeerUnavailableError("this peer has not resolved its membership yet; retry shortly")
            return self._ctx

    @staticmethod
    def _check_member(ctx: InboxContext, peer: str, source: str) -> None:
        if peer not in ctx.members:
            raise SecurityError(
                f"peer {printable(peer)} ({source}) is not a member of federation {ctx.federation!r}; "
                f"members: {', '.join(sorted(ctx.members))}"
            )

    def _check_header(self, ctx: InboxContext, h: MessageHeader, identity: str | None) -> None:
        if h.federation != ctx.federation:
            raise SecurityError(f"{h._who}: federation {printable(h.federation)}, ours is {ctx.federation!r}")
        self._check_member(ctx, h.sender, "header sender")
        if identity is not None and h.sender != identity:
            raise SecurityError(f"{h._who}: the sender field does not match the TLS identity {identity!r}")
        if h.sender == ctx.self_id:
            raise SecurityError(f"{h._who}: a message claiming to come from ourselves")
        if h.encoding != "raw" and ctx.accept is None:
            raise ProtocolError(f"{h._who}: a {h.encoding} message, but this peer does not compress its gossip "
                                "(mixing.compression: none)")
        if h.encoding == "raw" and ctx.accept is not None:
            raise ProtocolError(f"{h._who}: a raw message, but this peer's gossip is compressed (mixing.compression)")
        if ctx.layout_digest and h.layout_digest and h.layout_digest != ctx.layout_digest:
            raise ProtocolError(
                f"{h._who}: model layout digest {printable(h.layout_digest)} differs from ours {ctx.layout_digest!r} "
                "(the peers run different models)"
            )
        h.check_sizes()
        if h.element_count != ctx.element_count:
            raise ProtocolError(f"{h._who}: {h.element_count} elements, our vector has {ctx.element_count}")
        if h.step < 0 or h.round < 0:
            raise StepWindowError(f"{h._who}: negative step or round")
        if h.sender not in ctx.in_neighbours(h.step, h.round):
            raise ProtocolError(f"{h._who}: {printable(h.sender)} is not our in-neighbour at step {h.step} round {h.round}")

    def _heard(self, ctx: InboxContext, h: MessageHeader) -> None:
        """Tell the membership (outside our lock: its listeners call :meth:`wake`) and wake the mixer."""
        if ctx.membership is None:
            return
        with self._cond:
            pos = self._position
        # useful: the sender mixes at about our pace (at most MAX_STEP_SKEW steps behind us): waiting for it
        # again costs at most a few steps, once. Older messages come from a peer that fell behind (a long
        # pause); it catches up by itself (state transfer) before it is waited for again.
        useful = pos is None or h.step >= pos[0] - MAX_STEP_SKEW
        ctx.membership.heard(h.sender, h.step, h.round, useful=useful)
        self.wake()

    def _reserve(self, h: MessageHeader, cancelled: Callable[[], bool] = bool, *,
                 verify_checksums: bool = True) -> _Slot | None:
        key = (h.step, h.round, h.sender)
        deadline = time.monotonic() + LOOKAHEAD_WAIT_S
        with self._cond:
            while True:
                if self._closed:
                    raise PeerUnavailableError("this peer is shutting down")
                if cancelled():
                    raise PeerUnavailableError(f"{h._who}: the stream was closed while held back")
                pos = self._position
                if pos is not None:
                    if h.step - pos[0] > MAX_STEP_SKEW:
                        log.debug("dropping message %s: more than %d steps ahead of us (%s)", key, MAX_STEP_SKEW, pos)
                        return None
                    if (h.step, h.round) < pos:
                        log.debug("dropping late message %s (we are at %s)", key, pos)
                        return None
                existing = self._slots.get(key)
                if existing is not None:
                    if h.parts > 1 and existing.striped is not None and not existing.dead and existing.vec is None:
                        return existing  # another part of a striped message (StripedMessage.join checks it)
                    raise ProtocolError(f"{h._who}: duplicate message")
                if self._held[h.sender] < LOOKAHEAD_MESSAGES:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StepWindowError(
                        f"{h._who}: more than {LOOKAHEAD_MESSAGES} messages ahead of us (we are at {pos}) "
                        f"for {LOOKAHEAD_WAIT_S:g} s"
                    )
                self._cond.wait(remaining)
            slot = _Slot(key)
            if h.parts > 1:
                slot.striped = StripedMessage(h, verify_checksums=verify_checksums)
            self._slots[key] = slot
            self._held[h.sender] += 1
            return slot

    def _commit(self, slot: _Slot, vec: Any, ctx: InboxContext) -> None:
        with self._cond:
            if not slot.dead:
                slot.vec = vec
                self._cond.notify_all()
                return
        if ctx.on_stale is not None:  # purged while it was arriving: never mixed
            ctx.on_stale(slot.key[2], vec)

    def _abandon(self, slot: _Slot) -> None:
        with self._cond:
            if not slot.dead:
                self._drop(slot)
                slot.dead = True  # a striped message's other parts may still hold it: they see it dropped

    def _drop(self, slot: _Slot) -> None:
        del self._slots[slot.key]
        self._held[slot.key[2]] -= 1
        self._cond.notify_all()

    # -- the mixing side -------------------------------------------------------------------------------
    def advance(self, step: int, round: int) -> None:
        """We are now at ``(step, round)``: messages of earlier rounds are stale and dropped."""
        on_stale = self._ctx.on_stale if self._ctx is not None else None
        with self._cond:
            self._position = (step, round)
            stale = []
            for key, slot in list(self._slots.items()):
                if key[:2] < (step, round):
                    self._drop(slot)
                    slot.dead = True  # if still being written, the writer will not commit it
                    if slot.vec is not None:
                        stale.append((key, slot.vec))
                    elif slot.striped is not None:  # parts still to come: they join it as a late message
                        self._late[key] = slot.striped
                        self._trim_late(key[2])
            # under the lock: a later message of the same sender found stale after this point is handed over
            # only after these (a sender's messages reach on_stale in the order it sent them)
            for key, vec in sorted(stale, key=lambda kv: kv[0]) if on_stale is not None else ():
                on_stale(key[2], vec)

    def take(self, step: int, round: int, senders: Collection[str], deadline: float) -> dict[str, Any]:
        """Wait until ``monotonic() >= deadline`` at most for the senders' vectors of ``(step, round)``.

        Waits only for the senders the membership awaits (all of them without a membership); returns
        every vector of ``senders`` that is here. Missing senders are the caller's to handle.
        """
        membership = self._ctx.membership if self._ctx is not None else None
        with self._cond:
            while not self._closed:
                if all(self._ready((step, round, s)) or (membership is not None and not self._filling((step, round, s))
                                                         and not membership.awaited(s, step, round))
                       for s in senders):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            out: dict[str, Any] = {}
            for s in senders:
                slot = self._slots.get((step, round, s))
                if slot is not None and slot.vec is not None:
                    out[s] = slot.vec
                    self._drop(slot)
            return out

    def _filling(self, key: Key) -> bool:
        """Parts of a striped message are here and more are coming: its sender may already be heard at a later
        round (on a faster connection), yet this message is on its way."""
        slot = self._slots.get(key)
        return slot is not None and slot.striped is not None and slot.vec is None and not slot.dead

    def _ready(self, key: Key) -> bool:
        slot = self._slots.get(key)
        return slot is not None and slot.vec is not None
