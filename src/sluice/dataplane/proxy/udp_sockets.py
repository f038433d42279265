"""The socket side of the UDP proxy: the NAT entry (`Upstream`) and its socket, UDP_GRO, drop
reasons by errno, and the port quarantine of closed sessions' sockets.

UDP_GRO: the listen socket asks for it (``setsockopt(SOL_UDP, 104)``). When the kernel hands over
several same-flow datagrams coalesced into one buffer, a ``UDP_GRO`` control message gives the
segment size (`read_ancillary`) and the listener splits the buffer back into the original
datagrams. A kernel without UDP_GRO refuses the option and the listener reads datagram by datagram.

Queue delay: the listen socket asks for kernel receive timestamps (SO_TIMESTAMPNS); each read's
control messages carry the time the datagram entered the host (CLOCK_REALTIME, nanoseconds), so
the listener knows how long it waited in the socket's queue without another syscall
(`read_ancillary`). A datagram queued before the option was set carries the time of the read.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from sluice.core.endpoint import Endpoint
from sluice.core.udp_session import SessionRoute
from sluice.dataplane.stats import BackendStats

SOL_UDP: Final = 17
UDP_GRO: Final = 104  # linux/udp.h; the control message carries the segment size as an int
SO_TIMESTAMPNS: Final = 35  # asm-generic/socket.h SO_TIMESTAMPNS_OLD: a native struct timespec
_TIMESPEC: Final = struct.Struct("@ll")  # tv_sec, tv_nsec (time_t and long are native longs on Linux)
LISTEN_CMSG_SPACE: Final = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(_TIMESPEC.size)
_INT: Final = struct.Struct("=i")

Address: TypeAlias = tuple[Any, ...]
"""A socket address as the socket module reports it: (host, port) or (host, port, flow, scope)."""


@dataclass(slots=True)
class BackendRef:
    """A current backend: its socket address (computed once) and its counters."""

    endpoint: Endpoint
    addr: tuple[str, int]
    stats: BackendStats


@dataclass(slots=True, eq=False)
class Upstream:
    """The value of one session: the NAT entry."""

    client: Address
    sock: socket.socket
    header: bytes
    """PROXY v2 header sent before each datagram, or b""."""
    backend: BackendRef | None
    """None for a per_packet session (unconnected socket, one pick per datagram)."""
    route: SessionRoute
    """The flow, backend and exclusions of the session policy."""
    closed: bool = False


def upstream_socket(addr: tuple[str, int] | None, family_v6: bool) -> socket.socket:
    """A non-blocking socket of the address family `family_v6` connected to the backend at `addr`,
    or unconnected (per_packet, `addr` None)."""
    family = socket.AF_INET6 if family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)  # no separate ioctl
    try:
        if addr is not None:
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_socket(host: str, port: int, family_v6: bool, receive_buffer: int) -> tuple[socket.socket, bool]:
    """The VIP's non-blocking listen socket, bound, with SO_RCVBUF `receive_buffer` and receive
    timestamps; and whether it reads GRO-coalesced datagrams."""
    sock = socket.socket(socket.AF_INET6 if family_v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((host, port))
        return sock, try_enable_gro(sock)
    except BaseException:
        sock.close()
        raise


def try_enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def read_ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(GRO segment size or 0, kernel receive time in ns since the epoch or 0) of one read."""
    segment = received_ns = 0
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            segment = int(_INT.unpack_from(data)[0])
        elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            received_ns = sec * 1_000_000_000 + nsec
    return segment, received_ns


_ERRNO_REASONS: Final = {
    errno.EAGAIN: "send_buffer_full",
    errno.ENOBUFS: "send_buffer_full",
    errno.EMSGSIZE: "too_large",
    errno.ECONNREFUSED: "backend_refused",
}


def drop_reason(exc: OSError) -> str:
    """A drop reason for the counters: a few named ones (`sluice.core.reasons.DROPPED`), else the
    errno name in lower case."""
    if exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    return errno.errorcode.get(exc.errno or 0, "os_error").lower()


class PortQuarantine:
    """Closed sessions' upstream sockets, kept open, unread and with a minimal receive buffer for
    `hold_s` seconds (at most `max_sockets` of them, the oldest closed first), so the kernel cannot
    hand their ports at once to a new session towards the same backend."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold_s: float, max_sockets: int) -> None:
        self._loop = loop
        self._hold_s = hold_s
        self._max = max_sockets
        self._held: deque[tuple[float, socket.socket]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def fds(self) -> frozenset[int]:
        return frozenset(sock.fileno() for _, sock in self._held)

    def retire(self, sock: socket.socket) -> None:
        """Hold `sock` for the quarantine, then close it."""
        if self._hold_s <= 0:
            sock.close()
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
        except OSError:
            sock.close()
            return
        self._held.append((self._loop.time() + self._hold_s, sock))
        while len(self._held) > self._max:
            self._held.popleft()[1].close()
        if self._timer is None:
            self._timer = self._loop.call_at(self._held[0][0], self._on_timer)

    def close(self) -> None:
        """Close every held socket now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._held:
            self._held.popleft()[1].close()

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._held and self._held[0][0] <= now:
            self._held.popleft()[1].close()
        if self._held:
            self._timer = self._loop.call_at(self._held[0][0], self._on_timer)
