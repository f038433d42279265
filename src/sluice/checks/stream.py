"""TCP checkers: connect, send/expect, HTTP GET."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket

from sluice.checks.base import CheckFailed, ProbeChecker, marked_socket
from sluice.config import Endpoint

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r\n]")


async def _connect(target: Endpoint, mark: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if not mark:
        return await asyncio.open_connection(target.host, target.port)
    sock = marked_socket(target, socket.SOCK_STREAM, mark)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (target.host, target.port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class TcpChecker(ProbeChecker):
    """``type: tcp``: the three-way handshake completes."""

    async def probe(self, target: Endpoint, mark: int) -> str:
        _, writer = await _connect(target, mark)
        await _close(writer)
        return "connected"


class TcpExpectChecker(ProbeChecker):
    """``type: tcp_expect``: connect, send `send` (if any), read until `expect` / `expect_regex` matches."""

    async def probe(self, target: Endpoint, mark: int) -> str:
        reader, writer = await _connect(target, mark)
        try:
            if self.send:
                writer.write(self.send)
                await writer.drain()
            reply = b""
            while not self.matches(reply):
                if len(reply) >= self.max_reply_bytes:
                    raise CheckFailed(f"no match in the first {self.max_reply_bytes} bytes", "bad_reply")
                chunk = await reader.read(self.max_reply_bytes - len(reply))
                if not chunk:
                    detail = "closed before the expected reply" if reply else "closed without reply"
                    raise CheckFailed(detail, "closed")
                reply += chunk
            return "matched"
        finally:
            await _close(writer)


class HttpChecker(ProbeChecker):
    """``type: http``: ``GET path`` over HTTP/1.0; the status must be one of `expect_status`."""

    async def probe(self, target: Endpoint, mark: int) -> str:
        host = self.spec.host or str(target)
        request = (
            f"GET {self.spec.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: sluice-health\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode()
        reader, writer = await _connect(target, mark)
        try:
            writer.write(request)
            await writer.drain()
            head = b""
            while b"\n" not in head:
                chunk = await reader.read(1024)
                if not chunk:
                    raise CheckFailed("closed without a status line", "closed")
                head += chunk
                if len(head) > 8192:
                    raise CheckFailed("status line too long", "bad_reply")
        finally:
            await _close(writer)
        m = _STATUS_LINE.match(head)
        if m is None:
            raise CheckFailed("not an HTTP response", "bad_reply")
        status = int(m.group(1))
        if status not in self.spec.expect_status:
            raise CheckFailed(f"status {status}", "bad_status")
        return f"status {status}"
