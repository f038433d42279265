"""Flow log lines from real TCP connections and UDP sessions on 127.0.0.1, on both engines: one
line per ended flow with the client, VIP, backend, bytes (and datagrams) the test really moved."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sluice.config import Endpoint, UdpOptions, Vip
from sluice.dataplane.engine import NativeTcpListener, NativeUdpListener
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from sluice.dataplane.stats import VipStats
from tests.dataplane.proxy import udp_helpers
from tests.dataplane.proxy.helpers import (
    IDENT_LEN,
    echo,
    make_vip,
    needs_native_engine,
    refusing_endpoints,
    run,
    start_backends,
)

ENGINES = ("python", "native")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "native":
        needs_native_engine()
    return name


def tcp_listener(engine: str, vip: Vip) -> TcpListener | NativeTcpListener:
    return NativeTcpListener(vip, workers=1) if engine == "native" else TcpListener(vip)


def udp_listener(engine: str, vip: Vip) -> UdpListener | NativeUdpListener:
    return NativeUdpListener(vip, workers=1) if engine == "native" else UdpListener(vip)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def closed(stats: VipStats) -> int:
    return sum(stats.closed.values())


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tcp_connections_are_logged_with_their_bytes(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    payloads = [b"x" * 1000, b"y" * 70000]

    async def main() -> list[tuple[bytes, bytes, int]]:
        [backend] = await start_backends(1)
        vip = make_vip([backend.endpoint], access_log={"format": "json", "path": str(path)})
        listener = tcp_listener(engine, vip)
        await listener.start()
        try:
            results = [await echo(listener.address, p) for p in payloads]
            await until(lambda: closed(listener.stats) == len(payloads))
            return results
        finally:
            await listener.close()
            await backend.close()

    before = time.time()
    results = run("asyncio", main())
    lines = sorted(json_lines(path), key=lambda line: line["bytes_to_backend"])
    assert len(lines) == 2
    for line, payload, (_, echoed, port) in zip(lines, payloads, results, strict=True):
        assert echoed == payload
        assert line["vip"] == "test" and line["proto"] == "tcp"
        assert line["client"] == f"127.0.0.1:{port}"
        assert Endpoint.parse(line["listen"]).host == "127.0.0.1"
        assert line["bytes_to_backend"] == len(payload)
        assert line["bytes_from_backend"] == IDENT_LEN + len(payload)
        assert line["reason"] == "done" and line["retries"] == 0
        assert "datagrams_to_backend" not in line
        start = datetime.fromisoformat(line["start"]).timestamp()
        assert before - 1 <= start <= time.time()
        assert 0 <= line["duration_s"] <= time.time() - before + 1


def test_tcp_retries_count_the_backends_that_refused(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.log"

    async def main(refusing: list[Endpoint]) -> tuple[VipStats, str]:
        [backend] = await start_backends(1)
        vip = make_vip([*refusing, backend.endpoint], scheduler="round_robin", access_log={"path": str(path)})
        listener = tcp_listener(engine, vip)
        await listener.start()
        try:
            for _ in range(3):
                await echo(listener.address, b"ping")
            await until(lambda: closed(listener.stats) == 3)
            return listener.stats, str(backend.endpoint)
        finally:
            await listener.close()
            await backend.close()

    with refusing_endpoints(2) as refusing:
        stats, good = run("asyncio", main(refusing))
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    retries = [int(line.split(" retries=")[1]) for line in lines]
    failed = sum(sum(b.connect_errors.values()) for b in stats.backends.values())
    assert sum(retries) == failed > 0  # every refused attempt is a retry of the flow it belonged to
    assert all(f"backend={good} " in line and " reason=done " in line for line in lines)


def test_the_rate_limit_drops_and_counts(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    flows = 20

    async def main() -> VipStats:
        [backend] = await start_backends(1)
        vip = make_vip([backend.endpoint], access_log={"path": str(path), "rate": 1})
        listener = tcp_listener(engine, vip)
        await listener.start()
        try:
            for _ in range(flows):
                await echo(listener.address, b"ping")
            await until(lambda: closed(listener.stats) == flows)
            await until(
                lambda: len(path.read_text().splitlines()) + listener.stats.access_log_dropped == flows
            )
            return listener.stats
        finally:
            await listener.close()
            await backend.close()

    stats = run("asyncio", main())
    lines = path.read_text().splitlines()
    assert stats.access_log_dropped >= 1  # 20 flows within less than 19 seconds at 1 line/s
    assert len(lines) + stats.access_log_dropped == flows


def test_a_reload_switches_the_flow_log_on_moves_it_and_off(engine: str, tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"

    async def main() -> None:
        [backend] = await start_backends(1)
        vip = make_vip([backend.endpoint])
        listener = tcp_listener(engine, vip)
        await listener.start()
        try:
            steps = [None, {"path": str(first)}, {"path": str(second), "format": "json"}, None]
            for n, access_log in enumerate(steps, start=1):
                listener.update(make_vip([backend.endpoint], access_log=access_log))
                await echo(listener.address, b"x" * n)
                await until(lambda flows=n: closed(listener.stats) == flows)
        finally:
            await listener.close()
            await backend.close()

    run("asyncio", main())
    [plain] = first.read_text().splitlines()
    assert " bytes_to_backend=2 " in plain
    [line] = json_lines(second)
    assert line["bytes_to_backend"] == 3


def test_udp_sessions_are_logged_with_datagrams_and_bytes(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.log"

    async def main() -> tuple[tuple[str, int], tuple[str, int], str]:
        async with udp_helpers.echo_backends(1) as [backend]:
            vip = udp_helpers.make_vip([backend.endpoint], access_log={"format": "json", "path": str(path)})
            listener = udp_listener(engine, vip)
            await listener.start()
            try:
                client = await udp_helpers.Client.open(listener.address)
                try:
                    replies = [await client.request(b"a" * 100), await client.request(b"b" * 300)]
                    assert [len(data) for data, _ in replies] == [103, 303]
                    return client.address, listener.address, str(backend.endpoint)
                finally:
                    client.close()
            finally:
                await listener.close()  # ends the session: shutdown

    client, listen, backend = run("asyncio", main())
    [line] = json_lines(path)
    assert line["proto"] == "udp" and line["vip"] == "udp-test"
    assert line["client"] == f"{client[0]}:{client[1]}"
    assert line["listen"] == f"{listen[0]}:{listen[1]}"
    assert line["backend"] == backend
    assert (line["datagrams_to_backend"], line["datagrams_from_backend"]) == (2, 2)
    assert (line["bytes_to_backend"], line["bytes_from_backend"]) == (400, 406)
    assert line["reason"] == "shutdown" and line["retries"] == 0


def test_udp_session_ended_by_its_response_is_logged_plain(engine: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.log"

    async def main() -> None:
        async with udp_helpers.echo_backends(1) as [backend]:
            vip = udp_helpers.make_vip(
                [backend.endpoint], udp=UdpOptions(responses=1), access_log={"path": str(path)}
            )
            listener = udp_listener(engine, vip)
            await listener.start()
            client = await udp_helpers.Client.open(listener.address)
            try:
                await client.request(b"hello")
                await until(lambda: closed(listener.stats) == 1)
            finally:
                client.close()
                await listener.close()

    run("asyncio", main())
    [line] = path.read_text().splitlines()
    assert " proto=udp " in line and " reason=responses " in line
    assert " bytes_to_backend=5 bytes_from_backend=8 datagrams_to_backend=1 datagrams_from_backend=1 " in line


def test_native_ring_overflow_is_dropped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers never wait for Python: records beyond a full ring are dropped and counted."""
    needs_native_engine()
    from sluice.dataplane.engine import _engine
    from sluice.dataplane.engine import flowlog as native_flowlog

    monkeypatch.setattr(native_flowlog, "DRAIN_INTERVAL_S", 3600.0)  # no drain until the VIP closes
    path = tmp_path / "flows.log"
    flows = _engine.FLOWLOG_RING + 40

    async def one(address: tuple[str, int]) -> None:
        _, writer = await asyncio.open_connection(*address)
        writer.close()
        await writer.wait_closed()

    async def main() -> VipStats:
        [backend] = await start_backends(1)
        vip = make_vip([backend.endpoint], access_log={"path": str(path), "rate": 1_000_000})
        listener = tcp_listener("native", vip)
        await listener.start()
        try:
            for start in range(0, flows, 64):
                await asyncio.gather(*(one(listener.address) for _ in range(min(64, flows - start))))
            await until(lambda: closed(listener.stats) == flows, timeout=60)
        finally:
            await listener.close()  # the one drain: a full ring's worth
            await backend.close()
        return listener.stats

    stats = run("asyncio", main(), timeout=120)
    lines = path.read_text().splitlines()
    assert len(lines) == _engine.FLOWLOG_RING
    assert stats.access_log_dropped == flows - _engine.FLOWLOG_RING
