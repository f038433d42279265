"""UDP checkers: send/expect (ICMP port unreachable = down) and DNS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sluice.checks.base import CheckFailed, ProbeChecker, marked_socket
from sluice.config import Endpoint, HealthCheck

MAX_QUEUED_REPLIES = 16
"""Datagrams kept while a udp check looks for its expected reply; more are dropped."""


_Next = Callable[[], Awaitable[bytes]]


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

    async def probe(self, target: Endpoint, mark: int) -> str:
        async with _exchange(target, mark, self.send) as replies:
            while True:
                if self.matches(await replies()):
                    return "matched"


@contextlib.asynccontextmanager
async def _exchange(target: Endpoint, mark: int, payload: bytes) -> AsyncIterator[_Next]:
    """Send `payload` from a connected UDP socket (SO_MARK `mark`); yields a getter of the replies
    that raises CheckFailed on an ICMP port unreachable."""
    loop = asyncio.get_running_loop()
    sock = marked_socket(target, socket.SOCK_DGRAM, mark)
    try:
        await loop.sock_connect(sock, (target.host, target.port))
        transport, protocol = await loop.create_datagram_endpoint(_Replies, sock=sock)
    except BaseException:
        sock.close()
        raise

    async def next_reply() -> bytes:
        item = await protocol.queue.get()
        if isinstance(item, ConnectionRefusedError):
            raise CheckFailed("port unreachable", "refused")
        if isinstance(item, Exception):
            raise item
        return item

    try:
        transport.sendto(payload)
        yield next_reply
    finally:
        transport.close()


class DnsChecker(ProbeChecker):
    """``type: dns``: query `query_name` / `query_type` over UDP; the rcode must be NOERROR. Replies
    that do not answer the query (another id or question) are skipped.

    Uses dnspython (messages only), imported only when a VIP configures a dns check.
    """

    def __init__(self, spec: HealthCheck) -> None:
        super().__init__(spec)
        import dns.rdatatype

        assert spec.query_name is not None  # required by the config model
        self.query_name = spec.query_name
        self.rdtype: Any = dns.rdatatype.from_text(spec.query_type)

    async def probe(self, target: Endpoint, mark: int) -> str:
        import dns.exception
        import dns.message
        import dns.rcode

        query = dns.message.make_query(self.query_name, self.rdtype)
        async with _exchange(target, mark, query.to_wire()) as replies:
            while True:
                wire = await replies()
                try:
                    answer = dns.message.from_wire(wire)
                except dns.exception.DNSException as exc:
                    raise CheckFailed(f"bad answer: {exc}", "bad_reply") from None
                if query.is_response(answer):
                    break
        rcode = answer.rcode()
        if rcode != dns.rcode.NOERROR:
            raise CheckFailed(f"rcode {dns.rcode.to_text(rcode)}", "bad_status")
        return "NOERROR"
