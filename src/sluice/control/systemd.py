"""sd_notify without a dependency: one datagram to the Unix socket named by $NOTIFY_SOCKET.

``READY=1`` once serving, ``RELOADING=1`` / ``READY=1`` around a reload, ``STOPPING=1`` at
shutdown (Type=notify units, see contrib/sluice.service). Without NOTIFY_SOCKET it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. ``READY=1``); returns whether a message was sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", state, exc)
        return False
    return True


def reloading_message() -> str:
    """``RELOADING=1`` with the MONOTONIC_USEC systemd >= 253 wants for Type=notify-reload."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
