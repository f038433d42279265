"""Run inside a network namespace of test_udp_send_buffer.py (198.18.0.2 behind a tbf queue that never
drains, see there): one UDP VIP on `engine`, SENT datagrams of SIZE bytes towards the held address in
`direction` ``upstream`` (the backend is 198.18.0.2) or ``reply`` (the client is 198.18.0.2, spoofed
from a raw socket; the backend echoes on 127.0.0.1); the VIP's counters as JSON on stdout.
Usage: python -m tests.dataplane.proxy.udp_send_buffer_scenario ENGINE DIRECTION"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from ipaddress import ip_address

from sluice.config import Endpoint
from tests.dataplane.proxy.udp_helpers import echo_backends, engine_under_test, make_vip, serving, wait_for

HELD = "198.18.0.2"
"""Routed through the device whose queue never drains (the namespace's setup)."""
LOCAL = "198.18.0.1"
SENT = 600
SIZE = 1400  # one packet on the 1500-byte MTU: every datagram is one skb in the queue
CHUNK = 50  # datagrams sent before waiting for the LB to handle them: the listen socket never overflows
CLIENT_PORT = 4000


def spoofed(payload: bytes, dst: tuple[str, int]) -> bytes:
    """An IPv4 UDP packet HELD:CLIENT_PORT -> `dst` (UDP checksum 0: none, valid over IPv4)."""
    udp = struct.pack("!HHHH", CLIENT_PORT, dst[1], 8 + len(payload), 0) + payload
    src, to = socket.inet_aton(HELD), socket.inet_aton(dst[0])
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, to) + udp


async def upstream() -> dict[str, object]:
    backend = Endpoint(ip_address(HELD), 9)
    async with serving(make_vip([backend])) as lb:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for start in range(0, SENT, CHUNK):
                for _ in range(CHUNK):
                    client.sendto(b"u" * SIZE, lb.address)

                def handled(n: int = start + CHUNK) -> bool:
                    s = lb.stats
                    return s.backends[str(backend)].datagrams_to_backend + sum(s.dropped.values()) == n

                await wait_for(handled)
        finally:
            client.close()
        s = lb.stats
        return {"accepted": s.backends[str(backend)].datagrams_to_backend, "dropped": dict(s.dropped)}


async def reply() -> dict[str, object]:
    async with (
        echo_backends(1, tag=False) as (backend,),
        serving(make_vip([backend.endpoint], listen=LOCAL)) as lb,
    ):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            for start in range(0, SENT, CHUNK):
                for _ in range(CHUNK):
                    raw.sendto(spoofed(b"r" * SIZE, lb.address), (LOCAL, 0))

                def handled(n: int = start + CHUNK) -> bool:
                    return lb.stats.backends[str(backend.endpoint)].datagrams_from_backend == n

                await wait_for(handled)
        finally:
            raw.close()
        s = lb.stats
        to_backend = s.backends[str(backend.endpoint)].datagrams_to_backend
        return {"to_backend": to_backend, "dropped": dict(s.dropped), "sessions": s.sessions}


if __name__ == "__main__":
    engine_under_test["name"] = sys.argv[1]
    result = asyncio.run(upstream() if sys.argv[2] == "upstream" else reply())
    sys.stdout.write(json.dumps(result))
