"""Every pair of a harness's peers on its own emulated link (a relay per direction of dialling)."""

from __future__ import annotations

from types import TracebackType

from p2pgan.netem.pacer import Pacer
from p2pgan.netem.relay import LatencyRelay
from p2pgan.netem.spec import LinkSpec


class EmulatedLinks:
    """Every pair of ``ports``' peers on its own emulated link of ``spec``: peer ``a`` reaches ``b`` at
    :meth:`port` ``(a, b)``, a relay to ``b``'s server. The relay ``a`` dials and the one ``b`` dials share
    the pair's two pacers (``a -> b`` and ``b -> a``), so each direction of the pair carries at most the
    rate whoever opened the connection. A context manager: closing it closes every relay.
    """

    def __init__(self, ports: dict[str, int], spec: LinkSpec, host: str = "127.0.0.1",
                 listen_ports: dict[tuple[str, str], int] | None = None) -> None:
        self.spec = spec
        self._relays: dict[tuple[str, str], LatencyRelay] = {}
        self._pacers: dict[tuple[str, str], Pacer] = {}
        try:
            for a in ports:
                for b in ports:
                    if a == b:
                        continue
                    pacers = None
                    if spec.rate_bps is not None:
                        pacers = (self._pacer(a, b, spec.rate_bps), self._pacer(b, a, spec.rate_bps))
                    self._relays[a, b] = LatencyRelay((host, ports[b]), spec.delay_s, listen_host=host, pacers=pacers,
                                                      listen_port=(listen_ports or {}).get((a, b), 0))
        except BaseException:
            self.close()
            raise

    def _pacer(self, src: str, dst: str, rate_bps: float) -> Pacer:
        return self._pacers.setdefault((src, dst), Pacer(rate_bps))

    def port(self, a: str, b: str) -> int:
        """The port peer ``a`` dials to reach peer ``b``."""
        return self._relays[a, b].port

    def carried(self) -> dict[str, int]:
        """Bytes each direction of each pair carried so far (``"a->b"``: paced links only)."""
        return {f"{a}->{b}": p.bytes for (a, b), p in sorted(self._pacers.items())}

    def close(self) -> None:
        for relay in self._relays.values():
            relay.close()

    def __enter__(self) -> EmulatedLinks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
