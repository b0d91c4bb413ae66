"""User-space link emulation: a TCP relay that paces every chunk to a rate and holds it for a one-way delay.

The command line of :mod:`p2pgan.netem` (``relay``, ``pair``, ``measure``); its usage is in the package's
docstring.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading

from p2pgan.errors import ConfigError
from p2pgan.netem.measure import measure_added_rtt, measure_rate
from p2pgan.netem.pacer import Pacer
from p2pgan.netem.relay import LatencyRelay
from p2pgan.netem.spec import LinkSpec, parse_link


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with a clear error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--target {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2pgan.netem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    relay = sub.add_parser("relay", help="relay to each --target with a delay; prints the bound ports as JSON")
    relay.add_argument("--delay-ms", type=float, default=None, help="one-way delay added in each direction")
    relay.add_argument("--link", default=None, help="RATE:DELAY, e.g. 100mbit:20ms (instead of --delay-ms)")
    relay.add_argument("--target", action="append", required=True, help="HOST:PORT to relay to (repeatable)")
    pair = sub.add_parser("pair", help="one emulated link between two servers: ports [A dials to reach B, B dials to "
                                       "reach A], both relays sharing the link's two pacers")
    pair.add_argument("--link", required=True, help="RATE:DELAY, e.g. 1gbit:5ms")
    pair.add_argument("--target", action="append", required=True, help="HOST:PORT of A, then of B")
    measure = sub.add_parser("measure", help="measure the round-trip time (and with --link the rate) a relay adds")
    measure.add_argument("--delay-ms", type=float, default=1.0)
    measure.add_argument("--samples", type=int, default=200)
    measure.add_argument("--link", default=None, help="RATE:DELAY: also measure the rate of a bulk transfer")
    measure.add_argument("--bytes", type=int, default=2_000_000, help="bytes of the bulk transfer (with --link)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "pair" and len(args.target) != 2:
            raise ConfigError(f"pair: give exactly two --target HOST:PORT (A, then B), got {len(args.target)}")
        if args.link is not None:
            spec = parse_link(args.link)
        elif args.delay_ms is not None:
            spec = LinkSpec(None, args.delay_ms / 1e3)
        else:
            raise ConfigError("relay: give --delay-ms MS or --link RATE:DELAY")
        if spec.delay_s < 0:
            raise ConfigError(f"--delay-ms: must be >= 0, got {args.delay_ms}")
        if args.cmd == "measure":
            if args.bytes < 1:
                raise ConfigError(f"--bytes: must be >= 1, got {args.bytes}")
            out = measure_added_rtt(spec.delay_s, args.samples)
            if spec.rate_bps is not None:
                out.update(measure_rate(spec, args.bytes))
            print(json.dumps(out))
            return 0
        targets = [parse_target(t) for t in args.target]
        with contextlib.ExitStack() as stack:
            if args.cmd == "pair":
                ab, ba = (Pacer(spec.rate_bps), Pacer(spec.rate_bps)) if spec.rate_bps else (None, None)
                relays = [stack.enter_context(LatencyRelay(targets[1], spec.delay_s, pacers=(ab, ba) if ab else None)),
                          stack.enter_context(LatencyRelay(targets[0], spec.delay_s, pacers=(ba, ab) if ba else None))]
            else:
                relays = [stack.enter_context(LatencyRelay(t, spec.delay_s, rate_bps=spec.rate_bps)) for t in targets]
            print(json.dumps({"ports": [r.port for r in relays], "delay_ms": spec.delay_s * 1e3,
                              "rate_mbit_s": None if spec.rate_bps is None else spec.rate_bps / 1e6}), flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
            stop.wait()
    except ConfigError as exc:
        print(f"netem: error: {exc}", file=sys.stderr)
        return 2
    return 0
