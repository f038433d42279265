"""Helpers for the UDP proxy tests: echo backends that say who they are, clients (loops: `helpers.run`),
and the listener of the engine under test (python `UdpListener` or native `NativeUdpListener`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from ipaddress import ip_address
from typing import Any

import pytest

from sluice.config import Backend, Endpoint, UdpOptions, Vip
from sluice.dataplane.engine import NativeUdpListener
from sluice.dataplane.proxy.udp import UdpListener
from tests.dataplane.proxy.helpers import needs_native_engine

Address = tuple[Any, ...]

LOOPS = ("uvloop", "asyncio")  # the loop kinds of `helpers.run`
ENGINES = ("python", "native")
Listener = UdpListener | NativeUdpListener
engine_under_test = {"name": "python"}
"""The engine `make_listener` and `serving` use (the tests' autouse fixture sets it)."""
REPLY_TIMEOUT = 5.0  # seconds a test waits for one datagram it expects (generous: CI shares 2 cores)


def each_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test once per engine: a module makes it its autouse fixture with
    ``engine = pytest.fixture(autouse=True, params=ENGINES)(udp_helpers.each_engine)``."""
    if request.param == "native":
        needs_native_engine()
    engine_under_test["name"] = request.param
    try:
        yield request.param
    finally:
        engine_under_test["name"] = "python"


TEST_QUEUE_DELAY_S = 10.0
"""``udp.max_queue_delay`` of the test VIPs that do not set one: clients, backends and (python engine)
the LB share one event loop on a shared machine, where a burst can wait longer than the 50 ms
default; only the queue-delay tests set the bound they test."""


def make_vip(backends: Sequence[Endpoint], *, listen: str = "127.0.0.1", **fields: Any) -> Vip:
    """A UDP VIP on `listen` port 0 (the kernel picks; `UdpListener.address` tells) before `backends`."""
    udp = fields.pop("udp", UdpOptions())
    if "max_queue_delay" not in udp.model_fields_set:
        udp = UdpOptions(**udp.model_dump(exclude_unset=True), max_queue_delay=TEST_QUEUE_DELAY_S)
    return Vip(
        name="udp-test",
        protocol="udp",
        listen=Endpoint(ip_address(listen), 0),
        backends=tuple(Backend(address=b) for b in backends),
        udp=udp,
        **fields,
    )


def make_listener(vip: Vip, **kwargs: Any) -> Listener:
    """A listener of the engine under test (native: one worker unless `workers` says otherwise)."""
    if engine_under_test["name"] == "native":
        kwargs.setdefault("workers", 1)
        return NativeUdpListener(vip, **kwargs)
    return UdpListener(vip, **kwargs)


def held_fds(listener: Listener) -> frozenset[int]:
    """Upstream sockets of closed sessions the listener still holds (quarantine, native: reuse pool)."""
    if isinstance(listener, NativeUdpListener):
        return listener.held_fds
    return listener.quarantined_fds


@contextlib.asynccontextmanager
async def serving(vip: Vip, **kwargs: Any) -> AsyncIterator[Listener]:
    listener = make_listener(vip, **kwargs)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = REPLY_TIMEOUT) -> None:
    """Poll `predicate` every millisecond until it holds; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


class _RawSocket:
    """A non-blocking UDP socket read with ``add_reader``. (asyncio's datagram transports silently
    drop empty datagrams on send, and uvloop closes them a loop iteration late: tests need both
    zero-length datagrams and a port that is gone the moment `close` returns.)"""

    def __init__(self, local: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(local)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._on_readable)
        self.closed = False

    def _on_readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue
            self.datagram_received(data, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock)
            self.sock.close()


class EchoBackend:
    """A UDP server answering each datagram with ``<name>|<datagram>`` (or the bare datagram when
    `tag` is False). It records what it received and from where."""

    def __init__(self, name: str, *, tag: bool = True, host: str = "127.0.0.1") -> None:
        self.name = name
        self.prefix = f"{name}|".encode() if tag else b""
        self.host = host
        self.received: list[tuple[bytes, Address]] = []
        self.endpoint = Endpoint(ip_address(host), 0)
        self._raw: _RawSocket | None = None

    async def start(self) -> EchoBackend:
        self._raw = _RawSocket((self.host, 0))
        self._raw.datagram_received = self._on_datagram  # type: ignore[method-assign]
        self.endpoint = Endpoint(ip_address(self.host), self._raw.sock.getsockname()[1])
        return self

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        self.received.append((data, addr))
        assert self._raw is not None
        self._raw.sock.sendto(self.prefix + data, addr)

    def close(self) -> None:
        """Close the socket: from now on the kernel answers ICMP port unreachable."""
        if self._raw is not None:
            self._raw.close()


@contextlib.asynccontextmanager
async def echo_backends(count: int, *, tag: bool = True) -> AsyncIterator[list[EchoBackend]]:
    backends = [await EchoBackend(f"b{i}", tag=tag).start() for i in range(count)]
    try:
        yield backends
    finally:
        for backend in backends:
            backend.close()


class Client(_RawSocket):
    """A UDP client socket (optionally bound to a chosen 127.x.y.z) talking to one VIP."""

    def __init__(self, vip: tuple[str, int], local: tuple[str, int]) -> None:
        super().__init__(local)
        self.vip = vip
        self.inbox: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    @classmethod
    async def open(cls, vip: tuple[str, int], local: tuple[str, int] = ("127.0.0.1", 0)) -> Client:
        return cls(vip, local)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return (host, port)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.inbox.put_nowait((data, addr))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.vip)

    async def receive(self, timeout: float = REPLY_TIMEOUT) -> tuple[bytes, Address]:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def request(self, data: bytes, timeout: float = REPLY_TIMEOUT) -> tuple[bytes, Address]:
        self.send(data)
        return await self.receive(timeout)


def upstream_sockets(backends: Sequence[Endpoint], held: Collection[int] = frozenset()) -> int:
    """UDP sockets of this process connected to one of `backends`: the listener's NAT entries.
    `held` are descriptors to leave out (a listener's `quarantined_fds`: closed sessions' sockets
    kept open for the port quarantine).

    Read from this process's file descriptors (``/proc/self/fd`` + getpeername on a duplicate),
    not from ``/proc/net/udp``, which other processes in the namespace may be changing mid-read.
    """
    wanted = {(b.host, b.port) for b in backends}
    count = 0
    for name in os.listdir("/proc/self/fd"):
        if int(name) in held:
            continue
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        with dup:
            if dup.type != socket.SOCK_DGRAM:
                continue
            try:
                peer = dup.getpeername()
            except OSError:  # not connected
                continue
        count += (peer[0], peer[1]) in wanted
    return count


def udp_socket(local: tuple[str, int] = ("127.0.0.1", 0)) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(local)
    return sock
