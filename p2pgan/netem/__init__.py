"""User-space link emulation: a TCP relay that paces every chunk to a rate and holds it for a one-way delay.

This kernel has no netem qdisc, so experiments that need "a 100 Mbit/s link with 20 ms of delay" put a
:class:`LatencyRelay` in front of each peer's server and give the other peers the relay's port. Each
direction of each connection is a reader thread that timestamps the chunks it receives and a writer
thread that sends each chunk when the emulated link has carried it, in arrival order. Without a rate
that is ``delay_s`` after it arrived; with a rate (a :class:`Pacer`, a token bucket of one chunk's
burst shared by every connection of that direction of the link) a chunk first waits for the link to be
free, takes ``bytes * 8 / rate`` seconds to serialize, then ``delay_s`` to propagate, as on a real link
whose bottleneck queue is bounded (:data:`~p2pgan.netem.relay.QUEUE_S`). A request/response therefore pays
``2 * delay_s`` more round-trip time, plus the relay's own overhead, which :func:`measure_added_rtt`
measures (ping-pong through the relay versus direct) so that results report what was really added;
:func:`measure_rate` does the same for the rate (a bulk transfer through the relay, bytes over time).

:func:`parse_link` reads the ``RATE:DELAY`` form (``100mbit:20ms``, ``1gbit:5ms``, ``10mbit:20ms``)
that ``p2pgan harness --link`` and the benchmarks take; :class:`EmulatedLinks` gives every pair of
peers its own link (a relay per direction of dialling, the two directions of the pair each one pacer).

Command line (one process hosting several relays; prints the bound ports as one JSON line, then serves
until stdin closes or SIGTERM)::

    python -m p2pgan.netem relay --delay-ms 1 --target 127.0.0.1:7001 --target 127.0.0.1:7002
    python -m p2pgan.netem relay --link 100mbit:20ms --target 127.0.0.1:7001
    python -m p2pgan.netem pair --link 100mbit:20ms --target 127.0.0.1:7001 --target 127.0.0.1:7002
    python -m p2pgan.netem measure --delay-ms 1 --samples 200
    python -m p2pgan.netem measure --link 10mbit:5ms --bytes 2000000

The rooms: :mod:`~p2pgan.netem.spec` (a link's rate and delay, ``RATE:DELAY``), :mod:`~p2pgan.netem.pacer`
(a direction's rate), :mod:`~p2pgan.netem.relay` (the relay), :mod:`~p2pgan.netem.links` (a link per pair
of peers), :mod:`~p2pgan.netem.measure` (what a relay adds) and :mod:`~p2pgan.netem.cli` (the command line).
"""

from p2pgan.netem.cli import main, parse_target
from p2pgan.netem.links import EmulatedLinks
from p2pgan.netem.measure import echo_server, measure_added_rtt, measure_rate, ping_pong_ms, sink_server
from p2pgan.netem.pacer import Pacer
from p2pgan.netem.relay import LatencyRelay
from p2pgan.netem.spec import LinkSpec, parse_link

__all__ = [
    "EmulatedLinks", "LatencyRelay", "LinkSpec", "Pacer", "echo_server", "main", "measure_added_rtt", "measure_rate",
    "parse_link", "parse_target", "ping_pong_ms", "sink_server",
]
