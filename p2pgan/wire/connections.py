"""Several gRPC connections to one neighbour (``mixing.connections`` > 1), a message striped over them.

One TCP + TLS session is encrypted by one core and carried by one congestion window; on a many-core node
or a long fat link (high bandwidth x delay) one session can leave cores or bandwidth idle. A
:class:`StripedLink` keeps N :class:`~p2pgan.wire.transport.Link`\\ s to the same neighbour, each on its
own channel (a distinct channel argument, so its own TCP + TLS session), and sends part ``c`` of every
message on link ``c`` (:mod:`p2pgan.wire.striping`: header plus shards ``c, c + N, ...``). Unary calls
(Hello, FetchState, Leave) use the first connection. With N = 1 :func:`open_link` returns today's
single :class:`~p2pgan.wire.transport.Link`, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from p2pgan.wire.config import PeerEntry, TLSFiles
from p2pgan.wire.transport import Link

if TYPE_CHECKING:
    from p2pgan.wire.codec import OutgoingMessage


def open_link(peer: PeerEntry, federation: str, tls: TLSFiles | None, *,
              on_gone: Callable[[str, str], None] | None = None, connections: int = 1) -> Link | StripedLink:
    """The link to ``peer``: one connection (today's :class:`Link`), or ``connections`` striped ones."""
    if connections <= 1:
        return Link(peer, federation, tls, on_gone=on_gone)
    return StripedLink(peer, federation, tls, on_gone=on_gone, connections=connections)


class StripedLink:
    """``connections`` links to one neighbour; a message's shards striped over them (module docstring)."""

    def __init__(self, peer: PeerEntry, federation: str, tls: TLSFiles | None, *,
                 on_gone: Callable[[str, str], None] | None, connections: int) -> None:
        self.peer = peer
        self.links = [Link(peer, federation, tls, on_gone=on_gone, connection=c) for c in range(connections)]
        first = self.links[0]
        self.channel, self.hello = first.channel, first.hello
        self.fetch_state, self.leave = first.fetch_state, first.leave

    def send_message(self, message: OutgoingMessage) -> int:
        """Queue part c of ``message`` on connection c; the bytes queued, 0 if it was skipped.

        Skipped whole when any connection cannot take its part now (down, backing off or congested): a
        message with a part missing could never be assembled. A message with fewer shards than connections
        goes on as many connections as it has shards.
        """
        parts = min(len(self.links), message.header.shard_count)
        links = self.links[:parts]
        if not all(link.ready for link in links):
            return 0
        if parts == 1:
            return links[0].send_message(message)
        sent = 0
        for c, link in enumerate(links):
            frames = message.subscribe(c, parts)
            if not link.send(frames, frames.nbytes):  # lost a race with a breaking stream: the part is missing,
                frames.close()  # the receiver drops the message with its round; the link reconnects (a key)
                continue
            sent += frames.nbytes
        return sent

    @property
    def generation(self) -> int:
        """Changes whenever any connection opens a new stream (the other end may have lost a part)."""
        return sum(link.generation for link in self.links)

    @property
    def bytes_sent(self) -> int:
        return sum(link.bytes_sent for link in self.links)

    @property
    def fresh(self) -> bool:
        return any(link.fresh for link in self.links)

    @property
    def broken(self) -> bool:
        return any(link.broken for link in self.links)

    def close(self) -> None:
        for link in self.links:
            link.close()
