"""Helpers for the TCP proxy tests: event loops, echo backends that say who they are, clients."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator, Sequence
from ipaddress import ip_address
from typing import Any, Literal, TypeVar

import pytest
import uvloop

from sluice.config import Backend, Endpoint, Vip
from sluice.core.flow import IPPROTO_TCP, FiveTuple
from sluice.core.scheduler import Scheduler
from sluice.dataplane import engine
from tests.support.privileged import REQUIRE_PRIVILEGED

T = TypeVar("T")

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
IDENT_LEN = 4
"""Every echo backend first sends its 4-byte identity (``b00:``), then the echo."""
FROM_LOOPBACK: dict[str, Any] = {"from": ["127.0.0.0/8", "::1/128"]}
"""``accept_proxy_protocol`` believing the headers of the tests' clients (on loopback)."""


def run(loop: str, coro: Coroutine[Any, Any, T], timeout: float = 40.0) -> T:
    """Run `coro` on a fresh loop of the named kind, bounded by `timeout` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop]) as runner:
        return runner.run(bounded())


def needs_native_engine() -> None:
    """Skip unless the native engine extension is built; fail instead under SLUICE_REQUIRE_PRIVILEGED=1
    (CI builds it: a missing extension must not pass by skipping)."""
    if engine.AVAILABLE:
        return
    reason = "needs the native engine extension (sluice.dataplane.engine._engine)"
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"{reason} (SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping)")
    pytest.skip(reason)


def make_vip(backends: Sequence[Endpoint], *, listen: str = "127.0.0.1", **fields: Any) -> Vip:
    """A TCP VIP on `listen` port 0 (the kernel picks) in front of `backends`."""
    return Vip(
        name="test",
        listen=Endpoint(ip_address(listen), 0),
        backends=tuple(Backend(address=b) for b in backends),
        **fields,
    )


class EchoBackend:
    """A TCP server that sends its identity, then echoes until end of stream, then closes.

    `proxy_header`: first read (and record in `headers`) a PROXY header of that version.
    `answer_after_eof`: read everything up to end of stream, then send it back at once.
    """

    def __init__(
        self,
        index: int,
        host: str = "127.0.0.1",
        *,
        proxy_header: Literal["v1", "v2"] | None = None,
        answer_after_eof: bool = False,
        header_seen: asyncio.Event | None = None,
    ) -> None:
        self.ident = f"b{index:02d}:".encode()
        self.host = host
        self.proxy_header = proxy_header
        self.answer_after_eof = answer_after_eof
        self.headers: list[bytes] = []
        self.header_seen = header_seen or asyncio.Event()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._tombstone: socket.socket | None = None
        self.endpoint = Endpoint(ip_address(host), 0)

    async def start(self) -> EchoBackend:
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint(ip_address(self.host), port)
        return self

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.proxy_header == "v1":
                self.headers.append(await reader.readuntil(b"\r\n"))
            elif self.proxy_header == "v2":
                fixed = await reader.readexactly(16)
                self.headers.append(fixed + await reader.readexactly(int.from_bytes(fixed[14:], "big")))
            self.header_seen.set()
            writer.write(self.ident)
            if self.answer_after_eof:
                writer.write(await reader.read())
            else:
                while chunk := await reader.read(256 * 1024):
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def wait_idle(self) -> None:
        """Until every connection handler so far has ended."""
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def kill(self) -> None:
        """Die like a crashed process: stop listening, reset every connection. The port stays
        taken (bound, not listening) so that connects to it keep being refused."""
        await self.close(reset=True)
        self._tombstone = refusing_socket(self.endpoint)

    async def close(self, *, reset: bool = False) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._tombstone is not None:
            self._tombstone.close()
            self._tombstone = None


def refusing_socket(endpoint: Endpoint) -> socket.socket:
    """Hold `endpoint`'s port without listening: connects to it are refused, and nobody else (no
    listener, no ephemeral source port) can take the port while the socket is open."""
    sock = socket.socket(socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((endpoint.host, endpoint.port))
    return sock


@contextlib.contextmanager
def refusing_endpoints(n: int, host: str = "127.0.0.1") -> Iterator[list[Endpoint]]:
    """`n` endpoints whose connects are refused, for as long as the block runs."""
    with contextlib.ExitStack() as stack:
        endpoints = []
        for _ in range(n):
            sock = stack.enter_context(refusing_socket(Endpoint(ip_address(host), 0)))
            endpoints.append(Endpoint(ip_address(host), sock.getsockname()[1]))
        yield endpoints


async def start_backends(n: int, host: str = "127.0.0.1", **kwargs: Any) -> list[EchoBackend]:
    return [await EchoBackend(i, host, **kwargs).start() for i in range(n)]


def by_ident(backends: Sequence[EchoBackend]) -> dict[bytes, Endpoint]:
    return {b.ident: b.endpoint for b in backends}


async def open_client(
    address: tuple[str, int], local_port: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host = address[0]
    return await asyncio.open_connection(host, address[1], local_addr=(host, local_port), limit=1 << 20)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def echo(address: tuple[str, int], payload: bytes, *, local_port: int = 0) -> tuple[bytes, bytes, int]:
    """Send `payload`, half-close, read to end of stream: (identity, echoed bytes, client port)."""
    reader, writer = await open_client(address, local_port)
    try:
        client_port = writer.get_extra_info("sockname")[1]

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        try:
            ident = await reader.readexactly(IDENT_LEN)
            data = await reader.read()
        finally:
            await sender
        return ident, data, client_port
    finally:
        await close_writer(writer)


def flow_of(client: tuple[str, int], vip: tuple[str, int]) -> FiveTuple:
    return FiveTuple.of(client, vip, IPPROTO_TCP)


def port_landing_on(scheduler: Scheduler, vip: tuple[str, int], target: Endpoint, *, start: int) -> int:
    """The first client source port from `start` whose first pick is `target` (client on vip's host)."""
    for port in range(start, 32768):
        if scheduler.pick(flow_of((vip[0], port), vip)) == target:
            return port
    raise AssertionError(f"no port lands on {target}")


async def connect_landing_on(
    scheduler: Scheduler, vip: tuple[str, int], target: Endpoint
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client whose source port makes `target` the first pick (ports below the ephemeral range,
    skipping those in use or in TIME_WAIT from earlier tests)."""
    port = random.randrange(10000, 30000)
    for _ in range(50):
        port = port_landing_on(scheduler, vip, target, start=port + 1)
        try:
            return await open_client(vip, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("no free source port")


async def echo_landing_on(
    scheduler: Scheduler, vip: tuple[str, int], target: Endpoint, payload: bytes
) -> tuple[bytes, bytes]:
    """`echo` from a client whose first pick is `target`: (identity, echoed bytes)."""
    reader, writer = await connect_landing_on(scheduler, vip, target)
    try:
        writer.write(payload)
        writer.write_eof()
        ident = await reader.readexactly(IDENT_LEN)
        return ident, await reader.read()
    finally:
        await close_writer(writer)


async def expect_reset(address: tuple[str, int], data: bytes = b"", *, eof: bool = False) -> None:
    """Connect, send `data` (then end of stream if `eof`): the LB must answer with a reset."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET) as sock:
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            if data:
                await loop.sock_sendall(sock, data)
            if eof:
                with contextlib.suppress(OSError):  # ENOTCONN when the reset came first
                    sock.shutdown(socket.SHUT_WR)
            while await loop.sock_recv(sock, 65536):
                pass
        except ConnectionResetError:
            return
    raise AssertionError("the connection ended without a reset")
