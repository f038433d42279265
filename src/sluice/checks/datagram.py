"""UDP checkers: send/expect (ICMP port unreachable = down) and DNS."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from sluice.checks.base import CheckFailed, ProbeChecker
from sluice.config import Endpoint, HealthCheck

MAX_QUEUED_REPLIES = 16
"""Datagrams kept while a udp check looks for its expected reply; more are dropped."""


class _Replies(asyncio.DatagramProtocol):
    """Connected UDP socket: datagrams and ICMP errors, in arrival order, bounded."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue(MAX_QUEUED_REPLIES)

    def _put(self, item: bytes | Exception) -> None:
        if not self.queue.full():
            self.queue.put_nowait(item)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._put(data)

    def error_received(self, exc: Exception) -> None:
        self._put(exc)


class UdpChecker(ProbeChecker):
    """``type: udp``: send `send`; a reply matching `expect` / `expect_regex` (any reply when neither
    is set) passes; an ICMP port unreachable (ECONNREFUSED on the connected socket) or silence fails."""

    async def probe(self, target: Endpoint) -> str:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if target.family_v6 else socket.AF_INET
        transport, protocol = await loop.create_datagram_endpoint(
            _Replies, remote_addr=(target.host, target.port), family=family
        )
        try:
            transport.sendto(self.send)
            while True:
                item = await protocol.queue.get()
                if isinstance(item, ConnectionRefusedError):
                    raise CheckFailed("port unreachable", "refused")
                if isinstance(item, Exception):
                    raise item
                if self.matches(item):
                    return "matched"
        finally:
            transport.close()


class DnsChecker(ProbeChecker):
    """``type: dns``: query `query_name` / `query_type` over UDP; the rcode must be NOERROR.

    Uses dnspython, imported only when a VIP configures a dns check.
    """

    def __init__(self, spec: HealthCheck) -> None:
        super().__init__(spec)
        import dns.rdatatype

        assert spec.query_name is not None  # required by the config model
        self.query_name = spec.query_name
        self.rdtype: Any = dns.rdatatype.from_text(spec.query_type)

    async def probe(self, target: Endpoint) -> str:
        import dns.asyncquery
        import dns.exception
        import dns.message
        import dns.rcode

        query = dns.message.make_query(self.query_name, self.rdtype)
        try:
            answer = await dns.asyncquery.udp(query, target.host, timeout=self.timeout_s, port=target.port)
        except dns.exception.Timeout:
            raise TimeoutError from None
        except dns.exception.DNSException as exc:
            raise CheckFailed(f"bad answer: {exc}", "bad_reply") from None
        rcode = answer.rcode()
        if rcode != dns.rcode.NOERROR:
            raise CheckFailed(f"rcode {dns.rcode.to_text(rcode)}", "bad_status")
        return "NOERROR"
