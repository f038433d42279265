"""`Endpoint`: an IP address and a port, the address of a VIP or a backend (pure standard library)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

_ENDPOINT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})")


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An IP address and a port: ``127.0.0.1:9001`` or ``[::1]:9001``."""

    ip: IPv4Address | IPv6Address
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        m = _ENDPOINT.fullmatch(text.strip())
        if not m:
            raise ValueError(f"expected IPv4:port or [IPv6]:port, got {text!r}")
        host, port_s = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        try:
            ip = ip_address(host)
        except ValueError:
            raise ValueError(f"not an IP address: {host!r}") from None
        port = int(port_s)
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        return cls(ip, port)

    @property
    def host(self) -> str:
        return str(self.ip)

    @property
    def family_v6(self) -> bool:
        return isinstance(self.ip, IPv6Address)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.family_v6 else f"{self.ip}:{self.port}"
