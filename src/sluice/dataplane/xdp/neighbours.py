"""Interface and neighbour (ARP / NDP) look-ups for the XDP plane, through netlink (pyroute2).

A backend's MAC comes from the kernel's neighbour table. When there is no usable entry, resolution is
triggered by sending one UDP datagram to the backend's discard port (9) out of the LB interface, then
the table is polled until an entry appears or the timeout passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any, Protocol

_SIOCGIFHWADDR = 0x8927

# NUD_* states with a usable link-layer address.
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT


class NeighbourError(RuntimeError):
    """A backend's MAC could not be resolved, or an interface does not exist."""


@dataclass(frozen=True)
class InterfaceInfo:
    name: str
    index: int
    mac: str


class Neighbours(Protocol):
    """What the plane needs from the network: interfaces and backend MACs (tests pass a fake)."""

    def interface(self, name: str) -> InterfaceInfo: ...

    async def resolve(self, ip: str, interface: str) -> str:
        """The MAC of `ip` on the segment of `interface` (``aa:bb:...``)."""
        ...


class NetlinkNeighbours:
    """Interfaces and neighbours of the current network namespace (neighbour table via pyroute2,
    whose synchronous API runs in a worker thread: it cannot run inside an event loop)."""

    def __init__(self, *, timeout_s: float = 3.0, poll_s: float = 0.05) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def interface(self, name: str) -> InterfaceInfo:
        """Index and MAC of an interface of this namespace (if_nametoindex + SIOCGIFHWADDR)."""
        try:
            index = socket.if_nametoindex(name)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifreq = fcntl.ioctl(s.fileno(), _SIOCGIFHWADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise NeighbourError(f"interface {name!r}: {exc.strerror or exc}") from None
        return InterfaceInfo(name, index, ifreq[18:24].hex(":"))

    def lookup(self, ip: str, ifindex: int) -> str | None:
        """The neighbour table's MAC for `ip`, if usable."""
        from pyroute2 import IPRoute

        family = socket.AF_INET6 if isinstance(ip_address(ip), IPv6Address) else socket.AF_INET
        with IPRoute() as ipr:
            entries: list[Any] = ipr.get_neighbours(family=family, ifindex=ifindex, dst=ip)
        for entry in entries:
            lladdr = entry.get_attr("NDA_LLADDR")
            if lladdr and entry["state"] & _NUD_USABLE:
                return str(lladdr)
        return None

    def _probe(self, ip: str, interface: str) -> None:
        family = socket.AF_INET6 if isinstance(ip_address(ip), IPv6Address) else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            # unreachable right now: the poll in `resolve` reports the timeout
            with contextlib.suppress(OSError):
                s.sendto(b"sluice neighbour probe", (ip, 9))

    async def resolve(self, ip: str, interface: str) -> str:
        info = self.interface(interface)
        mac = await asyncio.to_thread(self.lookup, ip, info.index)
        if mac:
            return mac
        deadline = time.monotonic() + self.timeout_s
        next_probe = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                await asyncio.to_thread(self._probe, ip, interface)
                next_probe = time.monotonic() + 1.0
            await asyncio.sleep(self.poll_s)
            mac = await asyncio.to_thread(self.lookup, ip, info.index)
            if mac:
                return mac
        raise NeighbourError(f"no MAC for {ip} on {interface} after {self.timeout_s:g}s")
