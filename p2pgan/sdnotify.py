"""systemd's readiness protocol (sd_notify), by hand: one datagram to the socket in ``NOTIFY_SOCKET``.

With ``Type=notify`` (peers/p2pgan-peer@.service) systemd counts a unit as started when its main process
sends ``READY=1``; p2pgan sends it when the daemon's health service turns SERVING (the federation formed,
:class:`p2pgan.wire.health.HealthReporter`), and ``STOPPING=1`` when it leaves. Without ``NOTIFY_SOCKET``
(not started by systemd, or ``Type=simple``) nothing is sent. The protocol is newline-separated
``KEY=VALUE`` lines in one datagram on an ``AF_UNIX`` socket; a leading ``@`` names Linux's abstract
namespace (sd_notify(3)). libsystemd is not needed for it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

#: the environment variable systemd sets for a Type=notify service
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) to systemd; False when there is nobody to tell.

    Never raises: a socket that cannot be reached is logged once per call and the daemon goes on.
    """
    address = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        log.warning("%s=%r: only unix socket paths (or @abstract names) are supported; systemd is not told %s",
                    NOTIFY_SOCKET_ENV, address, ", ".join(fields))
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("could not tell systemd %s through %s: %s", ", ".join(fields), NOTIFY_SOCKET_ENV, exc)
        return False
    return True
