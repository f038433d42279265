"""Passive ejection end to end with real sockets: UDP replies count as successes, and the last usable
backend of a VIP is never ejected (issue 15, items 1 and 2).

A backend "refuses" by closing its socket for a moment: the proxy's connected upstream socket then
gets ICMP port unreachable (ECONNREFUSED), which the UDP plane counts as ``connect_errors["refused"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from sluice.config import Config, Endpoint, parse_config
from sluice.config.values import Mode
from sluice.control.controller import Controller, PlaneFactory
from sluice.control.monitor import Monitor
from sluice.core.health import State
from sluice.dataplane import engine
from sluice.dataplane.listener import ListenerFactory
from sluice.dataplane.proxy.plane import ProxyPlane
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from tests.dataplane.proxy.udp_helpers import TEST_QUEUE_DELAY_S
from tests.support.fakes import FakeClock, FakePlane, ScriptedChecks, ep, make_config
from tests.support.loopback import IO_TIMEOUT_S, Backends, free_port, probe, wait_for

WAIT_S = 5.0
"""Bound of every wait for a counter or a state (the monitor reads the counters every 0.25 s)."""


class UdpBackend(asyncio.DatagramProtocol):
    """Answers every datagram with its name, a colon and the datagram; `close()` makes it refuse
    (the port is closed: the kernel answers ICMP port unreachable) until `start()` again."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", self.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.name.encode() + b":" + data, addr)

    async def close(self) -> None:
        """Close the port; returns once the socket is closed (an asyncio transport closes it one
        loop iteration later: a datagram forwarded in between would be answered, not refused)."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
            for _ in range(2):  # a yield, not a wait: connection_lost closes the socket
                await asyncio.sleep(0)


class UdpClient:
    """One client address (one session in the VIP's table)."""

    def __init__(self, vip_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(("127.0.0.1", vip_port))

    async def ask(self, payload: bytes = b"q") -> str:
        """One request, one reply; returns the name of the backend that answered."""
        loop = asyncio.get_running_loop()
        self.sock.send(payload)
        reply = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), IO_TIMEOUT_S)
        name, _, echoed = reply.partition(b":")
        assert echoed == payload
        return name.decode()

    def send(self, payload: bytes = b"q") -> None:
        self.sock.send(payload)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def udp_backends() -> AsyncIterator[list[UdpBackend]]:
    started: list[UdpBackend] = []
    yield started
    for b in started:
        await b.close()


async def add_udp_backend(pool: list[UdpBackend]) -> UdpBackend:
    backend = UdpBackend(f"u{len(pool)}", free_port(socket.SOCK_DGRAM))
    await backend.start()
    pool.append(backend)
    return backend


def config(protocol: str, addresses: list[str], vip_port: int, engine_name: str | None = None) -> Config:
    spec: dict[str, Any] = {
        "vips": [
            {
                "name": "web",
                "protocol": protocol,
                "listen": f"127.0.0.1:{vip_port}",
                "backends": [{"address": a} for a in addresses],
                "passive": {"consecutive_failures": 3, "base_ejection_time": "30s"},
            }
        ]
    }
    if protocol == "udp":  # a loaded CI machine can hold a datagram past the 50 ms default
        spec["vips"][0]["udp"] = {"max_queue_delay": f"{TEST_QUEUE_DELAY_S:g}s"}
    if engine_name is not None:
        spec["engine"] = engine_name
    return parse_config(spec)


UDP_LISTENERS: dict[str, ListenerFactory] = {"python": UdpListener, "native": engine.NativeUdpListener}
"""The UDP engines (injected while the plane's engine choice does not cover UDP yet)."""
NATIVE = pytest.mark.skipif(not engine.AVAILABLE, reason="native engine not built")
ENGINES = ["python", pytest.param("native", marks=NATIVE)]
UDP_ENGINES = ENGINES


@contextlib.asynccontextmanager
async def running(cfg: Config, udp_engine: str | None = None) -> AsyncIterator[Controller]:
    planes: dict[Mode, PlaneFactory] | None = None
    if udp_engine is not None:
        factories = {"tcp": TcpListener, "udp": UDP_LISTENERS[udp_engine]}
        planes = {"proxy": lambda: ProxyPlane(factories)}
    controller = Controller(cfg, planes)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.close()


def refusals(controller: Controller, address: str) -> int:
    return sum(controller.stats()["web"].backends[address].connect_errors.values())


def to_backend(controller: Controller, address: str) -> int:
    return controller.stats()["web"].backends[address].datagrams_to_backend


def seen_by_monitor(controller: Controller, address: str) -> bool:
    """The monitor has read every success and failure the data plane counted for `address`."""
    record = controller.monitor.record("web", Endpoint.parse(address))
    stats = controller.stats()["web"].backends[address]
    return (record.seen_failed, record.seen_ok, record.seen_replies) == (
        refusals(controller, address),
        stats.connect_ok,
        stats.datagrams_from_backend,
    )


@pytest.mark.parametrize("udp_engine", UDP_ENGINES)
async def test_udp_backend_that_answers_most_and_refuses_a_few_stays_up(
    udp_backends: list[UdpBackend], udp_engine: str
) -> None:
    """The issue's nsd: isolated refusals, each followed by good replies, over more rounds than
    `consecutive_failures`. Two backends, so the last-usable-backend rule does not hide the bug."""
    u0, u1 = await add_udp_backend(udp_backends), await add_udp_backend(udp_backends)
    port = free_port(socket.SOCK_DGRAM)
    async with running(config("udp", [u0.address, u1.address], port), udp_engine) as controller:
        rounds = 6  # > consecutive_failures (3): without replies as successes, an ejection
        for i in range(rounds):
            clients: list[UdpClient] = []
            try:
                # u0 answers: a fresh client whose session lands on u0 (Maglev spreads them), 20 replies
                for _ in range(64):
                    client = UdpClient(port)
                    clients.append(client)
                    if await client.ask() == "u0":
                        break
                else:
                    raise AssertionError("no session landed on u0 in 64 tries")
                for _ in range(20):
                    assert await client.ask() == "u0"
                # u0 refuses one datagram: its port is closed, and a new session lands on it
                before = refusals(controller, u0.address)
                await u0.close()
                for _ in range(64):
                    sent = to_backend(controller, u0.address), to_backend(controller, u1.address)
                    client = UdpClient(port)
                    clients.append(client)
                    client.send()
                    await wait_for(
                        lambda s=sent: (
                            (to_backend(controller, u0.address), to_backend(controller, u1.address)) != s
                        ),
                        WAIT_S,
                    )
                    if to_backend(controller, u0.address) != sent[0]:
                        break
                else:
                    raise AssertionError("no session landed on u0 in 64 tries")
                await wait_for(lambda n=before + 1: refusals(controller, u0.address) == n, WAIT_S)
                await wait_for(lambda: seen_by_monitor(controller, u0.address), WAIT_S)
                await u0.start()
            finally:
                for c in clients:
                    c.close()
            record = controller.monitor.record("web", Endpoint.parse(u0.address))
            assert record.health.state is State.UP, f"round {i}: {record.health.last_detail}"
        assert refusals(controller, u0.address) == rounds
        assert controller.monitor.transitions[("web", u0.address, State.EJECTED)] == 0
        assert controller.effective_weights()[("web", u0.address)] == 1


@pytest.mark.parametrize("udp_engine", UDP_ENGINES)
async def test_single_backend_udp_vip_is_never_emptied_by_passive_ejection(
    udp_backends: list[UdpBackend], udp_engine: str
) -> None:
    u0 = await add_udp_backend(udp_backends)
    port = free_port(socket.SOCK_DGRAM)
    async with running(config("udp", [u0.address], port), udp_engine) as controller:
        client = UdpClient(port)
        try:
            assert await client.ask() == "u0"
            await wait_for(lambda: seen_by_monitor(controller, u0.address), WAIT_S)
            await u0.close()
            for _ in range(10):  # each new session's first datagram: a refusal
                before = refusals(controller, u0.address)
                fresh = UdpClient(port)
                try:
                    fresh.send()
                    await wait_for(lambda n=before: refusals(controller, u0.address) > n, WAIT_S)
                finally:
                    fresh.close()
            await wait_for(lambda: seen_by_monitor(controller, u0.address), WAIT_S)
            health = controller.monitor.record("web", Endpoint.parse(u0.address)).health
            assert health.state is State.UP and health.suspect
            assert controller.effective_weights()[("web", u0.address)] == 1
            await u0.start()
            assert await client.ask() == "u0"  # the VIP was never dark
            assert controller.stats()["web"].refused["no_backend"] == 0
        finally:
            client.close()
        assert controller.monitor.transitions[("web", u0.address, State.EJECTED)] == 0


@pytest.mark.parametrize("engine_name", ENGINES)
async def test_single_backend_tcp_vip_is_never_emptied_by_passive_ejection(
    backends: Backends, engine_name: str
) -> None:
    b0 = await backends.add()
    port = free_port()
    async with running(config("tcp", [b0.address], port, engine_name)) as controller:
        assert await probe(port) == "b0"
        await wait_for(lambda: seen_by_monitor(controller, b0.address), WAIT_S)
        await b0.kill()
        for _ in range(10):  # each client connection: a refused backend connect (retries included)
            with contextlib.suppress(OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
                await probe(port)
        await wait_for(lambda: refusals(controller, b0.address) >= 10, WAIT_S)
        await wait_for(lambda: seen_by_monitor(controller, b0.address), WAIT_S)
        health = controller.monitor.record("web", Endpoint.parse(b0.address)).health
        assert health.state is State.UP and health.suspect
        assert controller.effective_weights()[("web", b0.address)] == 1
        await b0.start()
        assert await probe(port) == "b0"  # the VIP was never dark
        assert controller.monitor.transitions[("web", b0.address, State.EJECTED)] == 0


async def test_controller_tells_the_monitor_its_runtime_weights() -> None:
    """A backend the operator set to weight 0 takes no new flows: the other one is the last usable
    one and is not ejected (the controller's runtime weights reach the monitor's budget)."""
    plane, clock, checks = FakePlane(), FakeClock(), ScriptedChecks()
    holder: list[Controller] = []
    monitor = Monitor(lambda: holder[0].stats(), clock=clock, checkers=checks.registry())
    cfg = make_config(backends=2, passive={"consecutive_failures": 2, "max_ejected_percent": 100})
    controller = Controller(cfg, {"proxy": lambda: plane}, monitor=monitor, clock=clock)
    holder.append(controller)
    await controller.apply(cfg)
    await controller.set_weight("web", ep(9002), 0)
    await controller.on_health(await monitor.step())
    plane.vip_stats["web"].backend("127.0.0.1:9001").connect_errors["refused"] += 5
    clock.t = 0.25
    await controller.on_health(await monitor.step())
    assert monitor.record("web", ep(9001)).health.state is State.UP
    assert plane.weights() == {"127.0.0.1:9001": 1, "127.0.0.1:9002": 0}
    await controller.set_weight("web", ep(9002), 1)
    clock.t = 0.5
    await controller.on_health(await monitor.step())
    assert monitor.record("web", ep(9001)).health.state is State.EJECTED
    assert plane.weights() == {"127.0.0.1:9001": 0, "127.0.0.1:9002": 1}
