"""Each checker against real servers on 127.0.0.1 (kernel-chosen ports)."""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import pytest

import sluice.checks
from sluice.checks import CHECKERS, CheckFailed, build_checker
from sluice.config import Endpoint, HealthCheck
from sluice.core.reasons import CHECK_FAILURES

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def spec(**fields: Any) -> HealthCheck:
    fields.setdefault("timeout", 0.5)
    fields.setdefault("interval", 1.0)
    return HealthCheck.model_validate(fields)


def closed_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> Endpoint:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return Endpoint.parse(f"127.0.0.1:{port}")


async def tcp_server(handler: Handler) -> tuple[asyncio.Server, Endpoint]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Endpoint.parse(f"127.0.0.1:{port}")


@pytest.fixture
async def echo() -> AsyncIterator[Endpoint]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(1024)
            writer.write(b"+OK " + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server, ep = await tcp_server(handle)
    yield ep
    server.close()


async def test_tcp_connect(echo: Endpoint) -> None:
    checker = build_checker(spec(type="tcp"))
    ok = await checker(echo)
    assert ok.ok and ok.latency_s < 0.5
    bad = await checker(closed_port())
    assert (bad.ok, bad.detail, bad.reason) == (False, "refused", "refused")


@pytest.mark.parametrize(
    ("fields", "ok", "detail", "reason"),
    [
        ({"send": "PING\r\n", "expect": "+OK PING"}, True, "matched", "other"),
        ({"send": "PING\r\n", "expect_regex": r"^\+OK [A-Z]+\r\n$"}, True, "matched", "other"),
        ({"send": "PING\r\n", "expect": "PONG"}, False, "closed before the expected reply", "closed"),
    ],
)
async def test_tcp_expect(echo: Endpoint, fields: dict[str, Any], ok: bool, detail: str, reason: str) -> None:
    result = await build_checker(spec(type="tcp_expect", **fields))(echo)
    assert (result.ok, result.detail, result.reason) == (ok, detail, reason)


async def test_tcp_expect_times_out_on_a_silent_server() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):  # never answers; ends when the checker gives up and closes
            pass
        writer.close()

    server, ep = await tcp_server(silent)
    try:
        result = await build_checker(spec(type="tcp_expect", send="x", expect="y", timeout=0.2))(ep)
    finally:
        server.close()
    assert (result.ok, result.detail, result.reason) == (False, "timeout", "timeout")
    assert 0.19 < result.latency_s < 0.5


async def test_http_status() -> None:
    seen: list[bytes] = []

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            status = b"200 OK" if head.startswith(b"GET /healthz ") else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server, ep = await tcp_server(http)
    try:
        good = await build_checker(spec(type="http", path="/healthz", host="svc.example"))(ep)
        bad = await build_checker(spec(type="http", path="/other"))(ep)
        allowed = await build_checker(spec(type="http", path="/other", expect_status=[200, 503]))(ep)
    finally:
        server.close()
    assert (good.ok, good.detail) == (True, "status 200")
    assert b"Host: svc.example\r\n" in seen[0]
    assert (bad.ok, bad.detail, bad.reason) == (False, "status 503", "bad_status")
    assert allowed.ok


async def test_http_not_http(echo: Endpoint) -> None:
    result = await build_checker(spec(type="http"))(echo)
    assert (result.ok, result.detail, result.reason) == (False, "not an HTTP response", "bad_reply")


class _Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        if str(query.question[0].name) != "ok.example.":
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data != b"quiet":
            self.transport.sendto(b"pong:" + data, addr)


async def udp_server(
    factory: Callable[[], asyncio.DatagramProtocol],
) -> tuple[asyncio.BaseTransport, Endpoint]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        factory, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    return transport, Endpoint.parse(f"127.0.0.1:{port}")


async def test_dns() -> None:
    transport, ep = await udp_server(_Dns)
    try:
        good = await build_checker(spec(type="dns", query_name="ok.example"))(ep)
        bad = await build_checker(spec(type="dns", query_name="missing.example"))(ep)
        down = await build_checker(spec(type="dns", query_name="ok.example", timeout=0.2))(
            closed_port(socket.SOCK_DGRAM)
        )
    finally:
        transport.close()
    assert (good.ok, good.detail) == (True, "NOERROR")
    assert (bad.ok, bad.detail, bad.reason) == (False, "rcode NXDOMAIN", "bad_status")
    # a connected socket sees the ICMP port unreachable, as the udp check does
    assert (down.ok, down.detail, down.reason) == (False, "port unreachable", "refused")


async def test_udp_send_expect_and_port_unreachable() -> None:
    transport, ep = await udp_server(_UdpEcho)
    try:
        good = await build_checker(spec(type="udp", send="ping", expect="pong:ping"))(ep)
        any_reply = await build_checker(spec(type="udp", send="ping"))(ep)
        wrong = await build_checker(spec(type="udp", send="ping", expect_regex="^nope", timeout=0.2))(ep)
        silent = await build_checker(spec(type="udp", send="quiet", timeout=0.2))(ep)
    finally:
        transport.close()
    unreachable = await build_checker(spec(type="udp", send="ping"))(closed_port(socket.SOCK_DGRAM))
    assert (good.ok, any_reply.ok) == (True, True)
    assert (wrong.ok, wrong.detail) == (False, "timeout")
    assert (silent.ok, silent.detail) == (False, "timeout")
    assert (unreachable.ok, unreachable.detail, unreachable.reason) == (False, "port unreachable", "refused")
    assert unreachable.latency_s < 0.2  # the ICMP error answers at once, no waiting for the timeout


async def test_none_always_passes() -> None:
    result = await build_checker(spec(type="none"))(closed_port())
    assert result.ok


def test_every_check_failure_names_a_reason_of_the_table() -> None:
    """Each ``CheckFailed(detail, reason)`` in the checkers names a `CHECK_FAILURES` reason."""
    found = []
    for path in sorted((Path(sluice.checks.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CheckFailed":
                found.append(ast.literal_eval(node.args[1]))
    assert len(found) >= 9 and set(found) <= set(CHECK_FAILURES)
    with pytest.raises(ValueError, match="unknown check failure reason"):
        CheckFailed("x", "no_such_reason")


def test_every_config_type_has_a_checker() -> None:
    from typing import get_args

    from sluice.config import CheckType

    assert set(CHECKERS) == set(get_args(CheckType))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "tcp_expect"}, "needs expect or expect_regex"),
        ({"type": "udp"}, "needs send"),
        ({"type": "dns"}, "needs query_name"),
        ({"type": "tcp", "timeout": 5, "interval": 1}, "timeout must not be longer"),
        ({"type": "tcp_expect", "expect_regex": "("}, "invalid regular expression"),
        ({"type": "http", "expect_status": [99]}, "status codes"),
    ],
)
def test_invalid_health_blocks(fields: dict[str, Any], message: str) -> None:
    from sluice.config import ConfigError, parse_config

    vip = {"name": "v", "listen": "127.0.0.1:1", "backends": [{"address": "127.0.0.1:2"}], "health": fields}
    with pytest.raises(ConfigError, match=message) as exc:
        parse_config({"vips": [vip]})
    assert exc.value.errors[0].startswith("vips[0].health")
