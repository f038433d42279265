"""Metrics after real traffic, both engines: the controller runs the proxy plane on 127.0.0.1, clients
go through it, and /metrics' text (parsed by prometheus_client's parser) shows what happened."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import parse_config
from sluice.control.controller import Controller
from sluice.control.metrics import build_registry
from sluice.server import metrics_sources
from tests.support.loopback import Backends, free_port, probe, wait_for

ENGINES = ("python", "native")
FLOWS = 20
Labels = tuple[tuple[str, str], ...]


def scrape(controller: Controller) -> dict[tuple[str, Labels], float]:
    text = generate_latest(build_registry(metrics_sources(controller))).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def closed_port() -> int:
    """A TCP port nothing listens on (bound, then released): connects to it are refused."""
    return free_port()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    async with Backends() as b:
        yield b


async def running(engine: str, vips: list[dict[str, Any]]) -> Controller:
    controller = Controller(parse_config({"engine": engine, "vips": vips}))
    await controller.start()
    return controller


@pytest.mark.parametrize("engine", ENGINES)
async def test_refused_backend_raises_retries_and_each_connect_and_flow_is_observed(
    engine: str, backends: Backends
) -> None:
    good = await backends.add()
    refused = f"127.0.0.1:{closed_port()}"
    port = free_port()
    vip = {
        "name": "web",
        "listen": f"127.0.0.1:{port}",
        "passive": "off",  # the refused backend stays in: every flow Maglev gives it is retried
        "timeouts": {"connect": "2s"},
        "backends": [{"address": refused}, {"address": good.address}],
    }
    controller = await running(engine, [vip])
    try:
        started = time.monotonic()
        for sport in range(FLOWS):
            assert await probe(port) == "b0", f"flow {sport}"
        elapsed = time.monotonic() - started
        stats = controller.stats()["web"]
        await wait_for(lambda: sum(controller.stats()["web"].closed.values()) == FLOWS, timeout_s=5.0)
        got = scrape(controller)
    finally:
        await controller.close()
    web = ("vip", "web")
    bgood, bref = ("backend", good.address), ("backend", refused)
    refusals = got[("sluice_backend_connect_errors_total", (bref, ("reason", "refused"), web))]
    assert refusals >= 1, "Maglev gave none of 20 flows to the refused backend first"
    assert got[("sluice_vip_connect_retries_total", (web,))] == refusals  # each refusal: one more try
    assert got[("sluice_backend_connects_established_total", (bgood, web))] == FLOWS
    latency = "sluice_backend_connect_latency_seconds"
    assert got[(f"{latency}_count", (bgood, web))] == FLOWS
    assert got[(f"{latency}_bucket", (bgood, ("le", "+Inf"), web))] == FLOWS
    assert 0 <= got[(f"{latency}_sum", (bgood, web))] <= elapsed  # connects are made one after another
    assert got[(f"{latency}_count", (bref, web))] == 0  # failed connects are errors, not latencies
    duration = "sluice_vip_flow_duration_seconds"
    assert got[(f"{duration}_count", (web,))] == FLOWS == stats.flows_total
    assert 0 < got[(f"{duration}_sum", (web,))] <= FLOWS * (time.monotonic() - started)  # flows may overlap
    assert got[("sluice_vip_max_connections", (web,))] == 10000


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_failed_check_shows_its_reason_and_when_the_state_changed(engine: str) -> None:
    refused = f"127.0.0.1:{closed_port()}"
    vip = {
        "name": "chk",
        "listen": f"127.0.0.1:{free_port()}",
        "health": {"type": "tcp", "interval": "100ms", "timeout": "100ms", "rise": 1, "fall": 1, "jitter": 0},
        "backends": [{"address": refused}],
    }
    before = time.time()
    controller = await running(engine, [vip])
    key = (("backend", refused), ("vip", "chk"))
    try:
        await wait_for(lambda: scrape(controller)[("sluice_backend_up", key)] == 0, timeout_s=5.0)
        got = scrape(controller)
    finally:
        await controller.close()
    assert got[("sluice_health_check_failures_total", (key[0], ("reason", "refused"), key[1]))] >= 1
    assert got[("sluice_backend_state", (key[0], ("state", "down"), key[1]))] == 1
    assert before <= got[("sluice_backend_last_state_change_timestamp_seconds", key)] <= time.time()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _Client(asyncio.DatagramProtocol):
    def __init__(self, replies: asyncio.Queue[bytes]) -> None:
        self.replies = replies

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


@pytest.mark.parametrize("engine", ENGINES)
async def test_udp_sessions_observed_in_flow_duration(engine: str) -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    backend = echo.get_extra_info("sockname")[1]
    port = free_port(socket.SOCK_DGRAM)
    vip = {
        "name": "dns",
        "protocol": "udp",
        "listen": f"127.0.0.1:{port}",
        "udp": {
            "responses": 1,
            "max_sessions": 64,
            "max_queue_delay": "10s",
        },  # a session ends with its reply
        "backends": [{"address": f"127.0.0.1:{backend}"}],
    }
    controller = await running(engine, [vip])
    try:
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        for i in range(5):
            client, _ = await loop.create_datagram_endpoint(
                lambda: _Client(replies), remote_addr=("127.0.0.1", port)
            )
            try:
                client.sendto(b"q%d" % i)
                assert await asyncio.wait_for(replies.get(), 5.0) == b"q%d" % i
            finally:
                client.close()
        await wait_for(lambda: controller.stats()["dns"].closed["responses"] == 5, timeout_s=5.0)
        got = scrape(controller)
    finally:
        await controller.close()
        echo.close()
    dns = ("vip", "dns")
    assert got[("sluice_vip_flow_duration_seconds_count", (dns,))] == 5
    assert got[("sluice_vip_flow_duration_seconds_bucket", (("le", "+Inf"), dns))] == 5
    assert got[("sluice_vip_max_sessions", (dns,))] == 64
    assert ("sluice_vip_connect_retries_total", (dns,)) not in got
