"""A scripted malicious member for the trust tests (issue 16): real certificate, real server, real protocol.

:class:`ScriptedMember` holds the member certificate the federation CA issued to one roster id, serves
at that id's roster port with the project's own servicer (:class:`p2pgan.wire.service.GossipService`)
behind hooks that lie as a test scripts them (Hello step and readiness, the state FetchState hands
out, a FetchState that never answers), and speaks to honest peers as a client over the same mutual
TLS (Push messages with lying headers, FetchState floods, timed Hello calls). Attack code lives here,
in the tests, never in the product daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch

from p2pgan.daemon.config import load_config, network_config
from p2pgan.discovery import load_roster
from p2pgan.errors import PeerUnavailableError
from p2pgan.harness import Federation
from p2pgan.wire import codec, transport
from p2pgan.wire.inbox import Inbox, InboxContext
from p2pgan.wire.service import GossipService
from p2pgan.wire.state import StateSnapshot, encode_state
from p2pgan.wire.v1 import gossip_pb2 as pb

#: a hung FetchState holds its call at most this long (the test's own bound; the joiner gives up first)
HANG_BOUND_S = 120.0


class ScriptedMember:
    """See the module docstring. ``hello``: () -> (step, training) for Hello replies; ``state``:
    (caller) -> the StateSnapshot to hand out (None: refuse); ``hang``: FetchState never answers."""

    def __init__(self, fed: Federation, pid: str, *, hello: Callable[[], tuple[int, bool]] = lambda: (0, False),
                 state: Callable[[str], StateSnapshot | None] | None = None, hang: bool = False) -> None:
        cfg = load_config(fed.configs[pid])
        roster = load_roster(cfg.discovery.roster).peers  # type: ignore[arg-type]
        self.net = network_config(cfg, roster)
        self.pid = pid
        self.members = {p.id: p for p in roster}
        self.hello_script = hello
        self.state_script = state
        self.hang = hang
        self._released = threading.Event()
        self.dim, self.digest, self.algorithm = self._game_layout(cfg)
        inbox = Inbox()
        ids = frozenset(self.members)
        inbox.configure(InboxContext(federation=self.net.federation, self_id=pid, members=ids,
                                     layout_digest=self.digest, element_count=self.dim,
                                     in_neighbours=lambda s, r: ids - {pid}))
        self.served = 0
        service = GossipService(inbox, self._authenticate, self, federation=self.net.federation, peer_id=pid,
                                layout_digest=self.digest, element_count=self.dim)
        self.server, self.port = transport.open_server("127.0.0.1", self.net.listen_port, [service.handler()],
                                                       self.net.tls, max_workers=32)
        self._links: dict[str, transport.Link] = {}

    @staticmethod
    def _game_layout(cfg: Any) -> tuple[int, str, str]:
        from p2pgan.daemon.peer import load_private_data
        from p2pgan.trainer.game import build_game

        seed = cfg.train.seed if cfg.train.seed is not None else 0  # the liar's own data: any seed will do
        game = build_game(cfg.train.model, cfg.train.loss, load_private_data(cfg, seed), batch_size=cfg.train.batch_size,
                          init_seed=cfg.train.init_seed, seed=seed, latent_dim=cfg.train.latent_dim,
                          width=cfg.train.width)
        schedule = cfg.mixing.schedule
        return game.dim, game.layout_digest(), f"DPOSG/{schedule}/{cfg.train.optimizer}"

    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        return transport.tls_identity(context, self.net.federation, {})

    # -- the servicer's hooks, scripted -----------------------------------------------------------------
    def status(self) -> tuple[int, bool]:
        return self.hello_script()

    def contact(self, caller: str) -> None:
        pass

    def left(self, caller: str, step: int, reason: str) -> None:
        pass

    def state_frames(self, caller: str) -> Iterator[bytes]:
        if self.hang:
            self._released.wait(HANG_BOUND_S)
            raise PeerUnavailableError("released")
        snap = self.state_script(caller) if self.state_script is not None else None
        if snap is None:
            raise PeerUnavailableError("no state here")
        self.served += 1
        return encode_state(snap, federation=self.net.federation, sender=self.pid, layout_digest=self.digest,
                            shard_bytes=self.net.shard_bytes)

    # -- the client side ----------------------------------------------------------------------------------
    def link(self, pid: str) -> transport.Link:
        if pid not in self._links:
            self._links[pid] = transport.Link(self.members[pid], self.net.federation, self.net.tls)
        return self._links[pid]

    def hello(self, pid: str, timeout: float = 5.0) -> pb.HelloReply:
        return self.link(pid).hello(pb.HelloRequest(federation=self.net.federation, sender=self.pid), timeout=timeout)

    def fetch(self, pid: str, timeout: float = 30.0) -> tuple[int, torch.Tensor]:
        """An honest member's state (its step and mixed vector), fetched over the real protocol. Also reads
        the full layout older versions hand out (x, z, previous direction, moments: tests/attack_table.py)."""
        from p2pgan.errors import ProtocolError
        from p2pgan.wire.state import StateLayout, decode_state

        part = "x" if self.algorithm.split("/")[1] == "exact" else "z"
        d = self.dim
        layouts = [StateLayout(self.algorithm, {part: d}, frozenset({part}), frozenset({"step"})),
                   StateLayout(self.algorithm, {"x": d, "z": d, "d_prev": d, "direction.exp_avg": d,
                                                "direction.exp_avg_sq": d}, frozenset({"x", "z", "d_prev"}),
                               frozenset({"step", "direction.step"}))]
        for layout in layouts:
            call = self.link(pid).fetch_state(pb.StateRequest(federation=self.net.federation, sender=self.pid),
                                              timeout=timeout)
            try:
                snap = decode_state(call, federation=self.net.federation, sender=pid, layout_digest=self.digest,
                                    expected=layout)
            except ProtocolError:
                if layout is layouts[-1]:
                    raise
                continue
            finally:
                call.cancel()
            return snap.step, dict(snap.parts)[part].clone()
        raise AssertionError("unreachable")

    def push(self, pid: str, step: int, vector: torch.Tensor) -> bool:
        """One Push message to ``pid`` whose header claims ``step`` (round 0), carrying ``vector``."""
        vec = vector.reshape(-1).to(torch.float32).contiguous()
        header = codec.MessageHeader(
            federation=self.net.federation, sender=self.pid, step=step, round=0, layout_digest=self.digest,
            dtype="float32", element_count=vec.numel(),
            shard_count=codec.shard_count(vec.numel() * 4, self.net.shard_bytes))
        message = codec.OutgoingMessage(header, codec.le_bytes(vec), self.net.shard_bytes)
        return self.link(pid).send(message.subscribe(), message.nbytes)

    def close(self) -> None:
        self._released.set()
        for link in self._links.values():
            link.close()
        self.server.stop(0).wait(10)

    def __enter__(self) -> ScriptedMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def snapshot(member: ScriptedMember, step: int, vector: torch.Tensor, **extra: torch.Tensor) -> StateSnapshot:
    """A state as the real format carries it: the mixed vector (plus ``extra`` parts) and one step counter."""
    part = "x" if member.algorithm.split("/")[1] == "exact" else "z"
    parts = ((part, vector.reshape(-1).to(torch.float32)), *((n, t.reshape(-1)) for n, t in extra.items()))
    return StateSnapshot(step, member.algorithm, parts, {"step": step})


def timed_hello(member: ScriptedMember, pid: str) -> float:
    """Seconds one Hello call to ``pid`` takes (it must be answered, also during a flood)."""
    t0 = time.monotonic()
    member.hello(pid, timeout=10.0)
    return time.monotonic() - t0
