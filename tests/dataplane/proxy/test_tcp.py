"""The TCP proxy end to end, on both engines: real sockets on 127.0.0.1 / ::1 (and a netns for the
SYN black hole).

Every test runs on a fresh event loop of the kind its mode names (asyncio or uvloop) with the
splice mover or the recv/send fallback, on the python engine (`TcpListener`) and on the native one
(`NativeTcpListener`, one worker; the asyncio loop only drives the test's clients and backends); the
heavy ones run in fewer combinations, plus the native engine with two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from sluice.config import Endpoint, Timeouts, Vip
from sluice.core.scheduler import build_scheduler
from sluice.dataplane.engine import NativeTcpListener
from sluice.dataplane.proxy.splice import COPY_BUFFER_SIZE, PIPE_POOL_SIZE, PIPE_SIZE
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.lab.netns import Namespace, addr, sh, sweep_stale, veth
from tests.dataplane.proxy.helpers import (
    FROM_LOOPBACK,
    IDENT_LEN,
    EchoBackend,
    by_ident,
    close_writer,
    connect_landing_on,
    echo,
    echo_landing_on,
    expect_reset,
    flow_of,
    make_vip,
    needs_native_engine,
    open_client,
    refusing_endpoints,
    run,
    start_backends,
)
from tests.support.privileged import needs

T = TypeVar("T")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


Listener = TcpListener | NativeTcpListener


@dataclass(frozen=True)
class Mode:
    loop: str
    splice: bool
    engine: str = "python"
    workers: int = 1
    """Native engine worker threads."""

    def __str__(self) -> str:
        mover = "splice" if self.splice else "copy"
        if self.engine == "python":
            return f"{mover}-{self.loop}"
        return f"native-{mover}" + (f"-w{self.workers}" if self.workers != 1 else "")

    def listener(self, vip: Vip, **kwargs: Any) -> Listener:
        if self.engine == "native":
            return NativeTcpListener(vip, use_splice=self.splice, workers=self.workers, **kwargs)
        return TcpListener(vip, use_splice=self.splice, **kwargs)


NATIVE_MODES = [Mode("asyncio", True, "native"), Mode("asyncio", False, "native")]
ALL_MODES = [
    Mode("uvloop", True),
    Mode("asyncio", False),
    Mode("asyncio", True),
    Mode("uvloop", False),
    *NATIVE_MODES,
]
HEAVY_MODES = [*ALL_MODES[:2], *NATIVE_MODES, Mode("asyncio", True, "native", workers=2)]


def _mode_param(request: pytest.FixtureRequest) -> Mode:
    mode: Mode = request.param
    if mode.engine == "native":
        needs_native_engine()
    return mode


@pytest.fixture(params=ALL_MODES, ids=str)
def mode(request: pytest.FixtureRequest) -> Mode:
    return _mode_param(request)


@pytest.fixture(params=HEAVY_MODES, ids=str)
def heavy_mode(request: pytest.FixtureRequest) -> Mode:
    return _mode_param(request)


@contextlib.asynccontextmanager
async def serving(vip: Vip, mode: Mode, **kwargs: Any) -> AsyncIterator[Listener]:
    lb = mode.listener(vip, **kwargs)
    await lb.start()
    try:
        yield lb
    finally:
        await lb.close()


@contextlib.asynccontextmanager
async def backends(n: int, host: str = "127.0.0.1", **kwargs: Any) -> AsyncIterator[list[EchoBackend]]:
    started = await start_backends(n, host, **kwargs)
    try:
        yield started
    finally:
        for backend in started:
            await backend.close()


def by_reason(lb: Listener, backend: Endpoint) -> dict[str, int]:
    return dict(lb.stats.backend(str(backend)).connect_errors)


# ---------------------------------------------------------------------------- bulk + placement


def test_thousand_flows_echo_intact_on_their_maglev_backend(heavy_mode: Mode) -> None:
    rng = random.Random(1234)
    sizes = [rng.randrange(256 * 1024, 4 << 20) for _ in range(24)]
    sizes += [rng.randrange(0, 32 * 1024) for _ in range(1000 - len(sizes))]
    rng.shuffle(sizes)
    payloads = [rng.randbytes(n) for n in sizes]

    async def scenario() -> None:
        async with backends(3) as bs:
            vip = make_vip([b.endpoint for b in bs], scheduler="maglev")
            expected_scheduler = build_scheduler("maglev", vip.backends, table_size=vip.maglev_table_size)
            idents = by_ident(bs)
            async with serving(vip, heavy_mode) as lb:
                gate = asyncio.Semaphore(48)

                async def one(payload: bytes) -> tuple[bytes, bytes, int]:
                    async with gate:
                        return await echo(lb.address, payload)

                results = await asyncio.gather(*(one(p) for p in payloads))
                ports = [port for _, _, port in results]
                assert len(set(ports)) == len(payloads), "source ports must be distinct"
                for payload, (ident, data, port) in zip(payloads, results, strict=True):
                    assert data == payload
                    want = expected_scheduler.pick(flow_of(("127.0.0.1", port), lb.address))
                    assert idents[ident] == want, f"client port {port}"
                landed = {ident for ident, _, _ in results}
                assert landed == set(idents), "every backend got flows"
                stats = lb.stats
                assert (stats.flows_total, stats.active, dict(stats.closed)) == (1000, 0, {"done": 1000})
                per = [stats.backend(str(b.endpoint)) for b in bs]
                assert sum(p.bytes_to_backend for p in per) == sum(sizes)
                assert sum(p.bytes_from_backend for p in per) == sum(sizes) + IDENT_LEN * 1000
                assert sum(p.flows_total for p in per) == 1000
                assert all(p.active == 0 and p.connect_ok == p.connect_attempts for p in per)

    run(heavy_mode.loop, scenario())


def test_ipv6_listener_and_backends(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(2, "::1") as bs:
            vip = make_vip([b.endpoint for b in bs], listen="::1")
            async with serving(vip, mode) as lb:
                assert lb.address[0] == "::1"
                ident, data, port = await echo(lb.address, b"over v6" * 1000)
                assert data == b"over v6" * 1000
                scheduler = build_scheduler("maglev", vip.backends)
                assert by_ident(bs)[ident] == scheduler.pick(flow_of(("::1", port), lb.address))

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- stream semantics


def test_half_close_client_still_receives_the_answer(mode: Mode) -> None:
    payload = random.Random(7).randbytes(3 << 20)

    async def scenario() -> None:
        async with backends(1, answer_after_eof=True) as bs, serving(make_vip([bs[0].endpoint]), mode) as lb:
            # echo() sends, shuts down its write side, then reads: this backend answers only
            # once it has read end of stream, so the answer arrives after the client's FIN.
            ident, data, _ = await echo(lb.address, payload)
            assert (ident, data == payload) == (bs[0].ident, True)
            assert dict(lb.stats.closed) == {"done": 1}

    run(mode.loop, scenario())


def test_backend_killed_mid_transfer_resets_only_its_flows(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(2) as bs:
            vip = make_vip([b.endpoint for b in bs])
            scheduler = build_scheduler(vip.scheduler, vip.backends)
            async with serving(vip, mode) as lb:
                clients = []
                for target in [bs[0], bs[1]] * 3:
                    reader, writer = await connect_landing_on(scheduler, lb.address, target.endpoint)
                    writer.write(b"x" * 100_000)
                    assert await reader.readexactly(IDENT_LEN + 100_000) == target.ident + b"x" * 100_000
                    clients.append((target, reader, writer))
                await bs[0].kill()
                for target, reader, writer in clients:
                    if target is bs[0]:
                        with pytest.raises(ConnectionResetError):
                            await reader.read()
                    else:
                        writer.write(b"y" * 200_000)
                        writer.write_eof()
                        assert await reader.read() == b"y" * 200_000
                    await close_writer(writer)
                assert dict(lb.stats.closed) == {"backend_reset": 3, "done": 3}
                assert lb.stats.active == 0
                # A new flow meant for the dead backend is retried on the live one.
                ident, data = await echo_landing_on(scheduler, lb.address, bs[0].endpoint, b"again")
                assert (ident, data) == (bs[1].ident, b"again")
                assert by_reason(lb, bs[0].endpoint) == {"refused": 1}

    run(mode.loop, scenario())


def test_client_reset_resets_the_backend_connection(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs, serving(make_vip([bs[0].endpoint]), mode) as lb:
            reader, writer = await open_client(lb.address)
            writer.write(b"hello")
            assert await reader.readexactly(IDENT_LEN + 5) == bs[0].ident + b"hello"
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            await close_writer(writer)
            await bs[0].wait_idle()  # the backend's handler ends on the reset the LB passes on
            assert dict(lb.stats.closed) == {"client_reset": 1}

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- connecting


def test_connect_refused_is_retried_on_another_backend_and_counted(mode: Mode) -> None:
    async def scenario() -> None:
        with refusing_endpoints(1) as (dead,):
            async with backends(1) as bs:
                vip = make_vip([dead, bs[0].endpoint])
                scheduler = build_scheduler(vip.scheduler, vip.backends)
                async with serving(vip, mode) as lb:
                    ident, data = await echo_landing_on(scheduler, lb.address, dead, b"ping")
                    assert (ident, data) == (bs[0].ident, b"ping")
                    dead_stats = lb.stats.backend(str(dead))
                    live = lb.stats.backend(str(bs[0].endpoint))
                    assert (dead_stats.connect_attempts, dead_stats.connect_ok) == (1, 0)
                    assert dict(dead_stats.connect_errors) == {"refused": 1}
                    assert (live.connect_attempts, live.connect_ok, live.flows_total) == (1, 1, 1)

    run(mode.loop, scenario())


def test_all_backends_refusing_resets_the_client(mode: Mode) -> None:
    async def scenario() -> None:
        with refusing_endpoints(2) as dead:
            async with serving(make_vip(dead), mode) as lb:
                await expect_reset(lb.address)
                assert dict(lb.stats.refused) == {"connect_failed": 1}
                assert sum(lb.stats.backend(str(d)).connect_errors["refused"] for d in dead) == 2
                assert lb.stats.flows_total == 0

    run(mode.loop, scenario())


@dataclass(frozen=True)
class Lab:
    blackhole: Endpoint
    """SYNs to it are dropped: connects time out."""
    unreachable: Endpoint
    """SYNs to it are answered with ICMP host unreachable."""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A veth into a fresh namespace whose nftables drops TCP SYNs to port 9 and rejects those to
    port 10 with ICMP host unreachable (nothing listens there)."""
    needs(root=True, commands=("ip", "nft"))
    sweep_stale()
    pid = os.getpid()
    net = f"198.19.{pid % 250}"
    host_if, ns_if = f"slc{pid}h", f"slc{pid}n"
    with Namespace.create("tcplab") as ns:
        try:
            veth(None, host_if, ns, ns_if)
            sh(["ip", "addr", "add", f"{net}.1/30", "dev", host_if])
            sh(["ip", "link", "set", host_if, "up"])
            addr(ns, ns_if, f"{net}.2/30")
            ns.run("nft", "add", "table", "inet", "sluice_test")
            chain = ["{", "type", "filter", "hook", "input", "priority", "0", ";", "}"]
            ns.run("nft", "add", "chain", "inet", "sluice_test", "input", *chain)
            syn = ["tcp", "flags", "&", "(syn|ack)", "==", "syn"]
            rule = ["nft", "add", "rule", "inet", "sluice_test", "input", "tcp", "dport"]
            ns.run(*rule, "9", *syn, "drop")
            ns.run(*rule, "10", *syn, "reject", "with", "icmp", "type", "host-unreachable")
            yield Lab(Endpoint(ip_address(f"{net}.2"), 9), Endpoint(ip_address(f"{net}.2"), 10))
        finally:
            sh(["ip", "link", "del", host_if], check=False)


def test_connect_timeout_on_a_syn_black_hole_moves_the_flow(mode: Mode, lab: Lab) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([lab.blackhole, bs[0].endpoint], timeouts=Timeouts(connect=0.3))
            scheduler = build_scheduler(vip.scheduler, vip.backends)
            async with serving(vip, mode) as lb:
                started = time.monotonic()
                ident, data = await echo_landing_on(scheduler, lb.address, lab.blackhole, b"ping")
                assert time.monotonic() - started >= 0.3
                assert (ident, data) == (bs[0].ident, b"ping")
                assert by_reason(lb, lab.blackhole) == {"timeout": 1}
                assert lb.stats.backend(str(bs[0].endpoint)).connect_ok == 1

    run(mode.loop, scenario())


def test_host_unreachable_is_counted_and_the_flow_moves(mode: Mode, lab: Lab) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([lab.unreachable, bs[0].endpoint])
            scheduler = build_scheduler(vip.scheduler, vip.backends)
            async with serving(vip, mode) as lb:
                ident, data = await echo_landing_on(scheduler, lb.address, lab.unreachable, b"ping")
                assert (ident, data) == (bs[0].ident, b"ping")
                assert by_reason(lb, lab.unreachable) == {"unreachable": 1}

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- limits and timeouts


def test_idle_timeout_closes_both_sides(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([bs[0].endpoint], timeouts=Timeouts(idle=0.4))
            async with serving(vip, mode) as lb:
                reader, writer = await open_client(lb.address)
                # Traffic every 0.1 s keeps the flow open past its idle timeout...
                writer.write(b"a")
                assert await reader.readexactly(IDENT_LEN + 1) == bs[0].ident + b"a"
                for _ in range(6):
                    await asyncio.sleep(0.1)
                    writer.write(b"b")
                    assert await reader.readexactly(1) == b"b"
                assert lb.stats.active == 1
                # ...silence closes it: the client reads end of stream, the backend too.
                quiet_since = time.monotonic()
                assert await reader.read() == b""
                assert time.monotonic() - quiet_since >= 0.35
                await bs[0].wait_idle()
                await close_writer(writer)
                assert dict(lb.stats.closed) == {"idle_timeout": 1}

    run(mode.loop, scenario())


def test_max_connections_refuses_beyond_the_limit(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs, serving(make_vip([bs[0].endpoint], max_connections=2), mode) as lb:
            held = [await open_client(lb.address) for _ in range(2)]
            try:
                for reader, _ in held:
                    assert await reader.readexactly(IDENT_LEN) == bs[0].ident
                await expect_reset(lb.address)
                assert dict(lb.stats.refused) == {"max_connections": 1}
                # Once a flow ends there is room again.
                reader, writer = held[0]
                writer.write_eof()
                assert await reader.read() == b""
                assert (await echo(lb.address, b"room"))[1] == b"room"
                assert dict(lb.stats.refused) == {"max_connections": 1}
            finally:
                for _, writer in held:
                    await close_writer(writer)

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- PROXY protocol


def expected_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def expected_v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    v6 = ":" in src[0]
    block = ip_address(src[0]).packed + ip_address(dst[0]).packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11]) + struct.pack("!H", len(block)) + block


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_proxy_header_sent_to_backend_byte_exact(mode: Mode, version: str, host: str) -> None:
    async def scenario() -> None:
        async with backends(1, proxy_header=version) as bs:
            vip = make_vip([bs[0].endpoint], listen=host, proxy_protocol=version)
            async with serving(vip, mode) as lb:
                _, data, port = await echo(lb.address, b"payload")
                assert data == b"payload"
                build = expected_v1 if version == "v1" else expected_v2
                assert bs[0].headers == [build((host, port), lb.address)]
                assert lb.stats.backend(str(bs[0].endpoint)).bytes_to_backend == len(b"payload")

    run(mode.loop, scenario())


CLIENT_HEADERS = {
    "v1": b"PROXY TCP4 198.18.5.6 198.18.7.8 40000 443\r\n",
    "v2": expected_v2(("198.18.5.6", 40000), ("198.18.7.8", 443)),
}


@pytest.mark.parametrize("incoming", ["v1", "v2"])
@pytest.mark.parametrize("split", [False, True], ids=["with-payload", "header-alone"])
def test_accepted_proxy_header_is_forwarded_and_drives_the_pick(
    mode: Mode, incoming: str, split: bool
) -> None:
    async def scenario() -> None:
        header_seen = asyncio.Event()
        async with backends(3, proxy_header="v1", header_seen=header_seen) as bs:
            vip = make_vip([b.endpoint for b in bs], accept_proxy_protocol=FROM_LOOPBACK, proxy_protocol="v1")
            async with serving(vip, mode) as lb:
                reader, writer = await open_client(lb.address)
                writer.write(CLIENT_HEADERS[incoming])
                if split:  # the payload comes only once the backend has the forwarded header
                    await header_seen.wait()
                writer.write(b"payload")
                writer.write_eof()
                ident = await reader.readexactly(IDENT_LEN)
                assert await reader.read() == b"payload"
                await close_writer(writer)
                served = next(b for b in bs if b.ident == ident)
                assert served.headers == [b"PROXY TCP4 198.18.5.6 198.18.7.8 40000 443\r\n"]
                want = build_scheduler("maglev", vip.backends).pick(
                    flow_of(("198.18.5.6", 40000), lb.address)
                )
                assert served.endpoint == want
                assert lb.stats.backend(str(served.endpoint)).bytes_to_backend == len(b"payload")

    run(mode.loop, scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 not-an-address 1 2\r\n",
        b"PROXY TCP4 198.18.5.6 198.18.7.8 40000 443\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
        b"PROXY TCP4 198.18.5.6 " + b"9" * 600,
        b"PROXY TCP4 198.18.5.6",  # then end of stream
    ],
    ids=["http", "bad-address", "bare-lf", "v2-bad-version", "too-long", "truncated"],
)
def test_bad_proxy_header_is_refused_and_the_lb_keeps_serving(mode: Mode, garbage: bytes) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([bs[0].endpoint], accept_proxy_protocol=FROM_LOOPBACK)
            async with serving(vip, mode) as lb:
                await expect_reset(lb.address, garbage, eof=True)
                assert dict(lb.stats.refused) == {"bad_proxy_header": 1}
                assert bs[0].accepted == 0
                ident, data, _ = await echo(lb.address, CLIENT_HEADERS["v2"] + b"next")
                assert (ident, data) == (bs[0].ident, b"next")

    run(mode.loop, scenario())


def test_proxy_header_from_a_peer_not_listed_is_refused(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([bs[0].endpoint], accept_proxy_protocol={"from": ["198.18.0.0/15", "::1/128"]})
            async with serving(vip, mode) as lb:
                # a well-formed header, from 127.0.0.1: not one of the proxies allowed to send one
                await expect_reset(lb.address, CLIENT_HEADERS["v1"] + b"payload")
                assert dict(lb.stats.refused) == {"proxy_not_allowed": 1}
                assert bs[0].accepted == 0
                assert lb.stats.flows_total == 0

    run(mode.loop, scenario())


@pytest.mark.parametrize("value", [True, "yes", {"from": []}, {"from": ["10.0.0.1/8"]}])
def test_accept_proxy_protocol_from_anyone_is_refused_by_the_config(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        make_vip([Endpoint(ip_address("127.0.0.1"), 1)], accept_proxy_protocol=value)
    if value is True:
        assert "any client reaching the VIP could pose as any source" in str(caught.value)
        assert "accept_proxy_protocol: {from: [CIDR, ...]}" in str(caught.value)


def test_accept_proxy_protocol_false_and_from() -> None:
    backend = [Endpoint(ip_address("127.0.0.1"), 1)]
    assert make_vip(backend, accept_proxy_protocol=False).accept_proxy_protocol is None
    accept = make_vip(
        backend, accept_proxy_protocol={"from": ["10.0.0.0/8", "2001:db8::/32"]}
    ).accept_proxy_protocol
    assert accept is not None
    assert [accept.allows(h) for h in ("10.1.2.3", "11.0.0.1", "2001:db8::1", "::1")] == [
        True,
        False,
        True,
        False,
    ]


def test_missing_proxy_header_times_out(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip(
                [bs[0].endpoint], accept_proxy_protocol=FROM_LOOPBACK, timeouts=Timeouts(connect=0.2)
            )
            async with serving(vip, mode) as lb:
                await expect_reset(lb.address)
                assert dict(lb.stats.refused) == {"proxy_header_timeout": 1}
                assert bs[0].accepted == 0

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- back pressure


class Source:
    """A backend that sends `total` bytes as fast as the connection takes them.

    When a send has found no room for `stall_s` seconds it records how much it had sent
    (`sent_at_stall`) and sets `stalled`, then goes on once there is room again.
    """

    def __init__(self, total: int, stall_s: float = 0.3) -> None:
        self.block = random.Random(3).randbytes(1 << 20)
        self.total = total
        self.stall_s = stall_s
        self.stalled = asyncio.Event()
        self.sent_at_stall = -1
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.listen.setblocking(False)
        self.endpoint = Endpoint(ip_address("127.0.0.1"), self.listen.getsockname()[1])

    async def serve_one(self, on_stall: Any) -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.listen)
        self.listen.close()
        with conn:
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            sent = 0
            while sent < self.total:
                try:
                    sent += conn.send(memoryview(self.block)[sent % len(self.block) :])
                    continue
                except BlockingIOError:
                    pass
                writable = loop.create_future()
                loop.add_writer(conn.fileno(), writable.set_result, None)
                try:
                    if not self.stalled.is_set():
                        try:
                            await asyncio.wait_for(asyncio.shield(writable), self.stall_s)
                        except TimeoutError:
                            self.sent_at_stall = sent
                            on_stall()
                            self.stalled.set()
                    await writable
                finally:
                    loop.remove_writer(conn.fileno())
            conn.shutdown(socket.SHUT_WR)


def test_slow_reader_pauses_the_backend_instead_of_buffering(heavy_mode: Mode) -> None:
    total = 64 << 20
    bound = PIPE_SIZE if heavy_mode.splice else COPY_BUFFER_SIZE

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source = Source(total)
        seen: dict[str, int] = {}
        async with serving(make_vip([source.endpoint]), heavy_mode) as lb:

            def on_stall() -> None:
                seen["buffered"] = lb.buffered
                seen["peak"] = lb.peak_buffered
                seen["read_from_backend"] = lb.stats.backend(str(source.endpoint)).bytes_from_backend

            server = asyncio.create_task(source.serve_one(on_stall))
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, lb.address)
                await source.stalled.wait()  # nobody reads: the whole path fills up and stops
                digest, received = hashlib.sha256(), 0
                buf = bytearray(1 << 20)
                while n := await loop.sock_recv_into(client, buf):
                    digest.update(memoryview(buf)[:n])
                    received += n
            await server
            assert 0 < source.sent_at_stall < total // 2, "the LB must stop reading from the backend"
            assert 0 < seen["buffered"] <= bound
            assert seen["peak"] <= bound
            assert seen["read_from_backend"] <= source.sent_at_stall
            expected = hashlib.sha256()
            for offset in range(0, total, len(source.block)):
                expected.update(source.block[: total - offset])
            assert (received, digest.hexdigest()) == (total, expected.hexdigest())

    run(heavy_mode.loop, scenario())


def test_buffer_size_bounds_what_one_direction_holds(heavy_mode: Mode) -> None:
    total, bound = 64 << 20, 128 * 1024  # more than the kernel buffers on the way: the source stalls

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        source = Source(total)
        seen: dict[str, int] = {}
        async with serving(make_vip([source.endpoint]), heavy_mode, buffer_size=bound) as lb:

            def on_stall() -> None:
                seen["buffered"] = lb.buffered
                seen["peak"] = lb.peak_buffered

            server = asyncio.create_task(source.serve_one(on_stall))
            with socket.socket() as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                client.setblocking(False)
                await loop.sock_connect(client, lb.address)
                await source.stalled.wait()
                received = 0
                while n := len(await loop.sock_recv(client, 1 << 20)):
                    received += n
            await server
            assert 0 < seen["buffered"] <= bound
            assert 0 < seen["peak"] <= bound
            assert received == total

    run(heavy_mode.loop, scenario())


# ---------------------------------------------------------------------------- reload and close


def test_update_moves_new_flows_and_keeps_established_ones(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(2) as bs:
            vip = make_vip([bs[0].endpoint])
            async with serving(vip, mode) as lb:
                reader, writer = await open_client(lb.address)
                writer.write(b"before")
                assert await reader.readexactly(IDENT_LEN + 6) == bs[0].ident + b"before"
                lb.update(vip.model_copy(update={"backends": make_vip([bs[1].endpoint]).backends}))
                ident, data, _ = await echo(lb.address, b"new flow")
                assert (ident, data) == (bs[1].ident, b"new flow")
                writer.write(b"after")  # the established flow still reaches its backend
                writer.write_eof()
                assert await reader.read() == b"after"
                await close_writer(writer)
                flows = [lb.stats.backend(str(b.endpoint)).flows_total for b in bs]
                assert flows == [1, 1]

    run(mode.loop, scenario())


def test_close_stops_accepting_and_closes_every_flow(mode: Mode) -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            lb = mode.listener(make_vip([bs[0].endpoint]))
            await lb.start()
            address = lb.address
            reader, writer = await open_client(address)
            assert await reader.readexactly(IDENT_LEN) == bs[0].ident
            await lb.close()
            assert await reader.read() == b""
            await close_writer(writer)
            assert dict(lb.stats.closed) == {"shutdown": 1}
            with pytest.raises(ConnectionRefusedError):
                await open_client(address)

    run(mode.loop, scenario())


# ---------------------------------------------------------------------------- descriptors (issue 12.11)

SPLICE_MODES = [m for m in ALL_MODES if m.splice]


@pytest.fixture(params=SPLICE_MODES, ids=str)
def splice_mode(request: pytest.FixtureRequest) -> Mode:
    return _mode_param(request)


def test_idle_flows_hold_only_their_two_sockets(splice_mode: Mode) -> None:
    n = 150

    async def scenario() -> None:
        async with (
            backends(1) as bs,
            serving(make_vip([bs[0].endpoint], timeouts=LONG_IDLE), splice_mode) as lb,
        ):
            before = len(os.listdir("/proc/self/fd"))
            held = []
            for _ in range(n):
                reader, writer = await open_client(lb.address)
                assert await reader.readexactly(IDENT_LEN) == bs[0].ident
                held.append((reader, writer))
            for reader, writer in held:  # bytes both ways went through a pipe, then went idle
                writer.write(b"x" * 1000)
                assert await reader.readexactly(1000) == b"x" * 1000
            grown = len(os.listdir("/proc/self/fd")) - before
            pool = PIPE_POOL_SIZE
            if splice_mode.engine == "native":
                from sluice.dataplane.engine._engine import POOL_FREE_MAX as pool
            # per flow: the test's client, the backend's socket, the LB's two; plus the pipe pool
            assert grown <= 4 * n + 2 * pool + 16, grown
            assert lb.buffered == 0
            for _, writer in held:
                await close_writer(writer)

    run(splice_mode.loop, scenario())


# ---------------------------------------------------------------------------- resets (issue 12.8-12.10)

LONG_IDLE = Timeouts(idle=120.0)
"""An idle timeout no test waits for: a flow that ends, ends because of what its peers did."""


async def settled(lb: Listener, *, active: int = 0, within: float = 10.0) -> None:
    """Until `lb` has `active` established flows (polled: the counters raise no event), at most
    `within` seconds, far less than the VIP's idle timeout."""
    deadline = time.monotonic() + within
    while lb.stats.active != active:
        if time.monotonic() > deadline:
            raise AssertionError(f"{lb.stats.active} flows still open, {dict(lb.stats.closed)} closed")
        await asyncio.sleep(0.02)


def abort_socket(writer: asyncio.StreamWriter) -> None:
    """Close like a crashed client: SO_LINGER 0, the peer gets a reset."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def peer_loop() -> AsyncIterator[Callable[[Coroutine[Any, Any, T]], Awaitable[T]]]:
    """A second event loop, in a thread, for the test's clients and backends: the mode's loop then
    serves only the LB, as in production.
    Yields `on_peers(coro)`: run `coro` there and wait for its result."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="peers", daemon=True)
    thread.start()

    async def on_peers(coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    try:
        yield on_peers
    finally:
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10)
        loop.close()


async def reset_after_sending(address: tuple[str, int], ident: bytes, n: int, size: int, wait: bool) -> None:
    """`n` clients send `size` bytes each, then reset (after their flow reached the backend if `wait`)."""
    held = []
    for _ in range(n):
        reader, writer = await open_client(address)
        if wait:
            assert await reader.readexactly(IDENT_LEN) == ident  # through to the backend
        held.append(writer)
    for writer in held:
        writer.write(b"r" * size)
    for writer in held:  # a reset with bytes still in flight
        abort_socket(writer)
        await close_writer(writer)


@pytest.mark.parametrize("size", [1000, 256 * 1024])
@pytest.mark.parametrize("wait", [True, False], ids=["established", "at-once"])
def test_clients_resetting_after_sending_close_their_flows_at_once(
    heavy_mode: Mode, size: int, wait: bool
) -> None:
    n = 100

    async def scenario() -> None:
        async with peer_loop() as on_peers:
            # the backend answers only at end of stream: no byte towards the client shows the reset
            backend = await on_peers(EchoBackend(0, answer_after_eof=True).start())
            try:
                async with serving(make_vip([backend.endpoint], timeouts=LONG_IDLE), heavy_mode) as lb:
                    await on_peers(reset_after_sending(lb.address, backend.ident, n, size, wait))
                    await settled(lb)
                    await on_peers(backend.wait_idle())  # every backend connection was closed too
                    assert dict(lb.stats.closed) == {"client_reset": n}
                    assert lb.buffered == 0
            finally:
                await on_peers(backend.close())

    run(heavy_mode.loop, scenario())


class ResettingBackend:
    """A backend that reads a request (a few bytes: the LB is connected), answers `size` bytes, waits
    until the LB has them all (nothing left unacknowledged: a reset would drop it), then resets the
    connection."""

    def __init__(self, size: int) -> None:
        self.payload = random.Random(5).randbytes(size)
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.listen.setblocking(False)
        self.endpoint = Endpoint(ip_address("127.0.0.1"), self.listen.getsockname()[1])

    async def serve(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        with self.listen:
            for _ in range(n):
                conn, _ = await loop.sock_accept(self.listen)
                conn.setblocking(False)
                assert await loop.sock_recv(conn, 64)
                await loop.sock_sendall(conn, self.payload)
                while struct.unpack("i", fcntl.ioctl(conn, termios.TIOCOUTQ, b"\0" * 4))[0]:
                    await asyncio.sleep(0.002)  # no event says "acknowledged"
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()


async def read_until_reset(address: tuple[str, int]) -> bytes:
    """Connect, send a request, read: the bytes received before the reset (end of stream fails the
    test)."""
    reader, writer = await open_client(address)
    writer.write(b"GET")
    received = b""
    try:
        while chunk := await reader.read(1 << 16):
            received += chunk
    except ConnectionResetError:
        return received
    finally:
        await close_writer(writer)
    raise AssertionError(f"end of stream instead of a reset after {len(received)} bytes")


@pytest.mark.parametrize("size", [1000, 300 * 1024])
def test_backend_reset_after_data_reaches_the_client_as_data_then_reset(mode: Mode, size: int) -> None:
    n = 30

    async def scenario() -> None:
        backend = ResettingBackend(size)

        async def clients(address: tuple[str, int]) -> list[bytes]:
            async with asyncio.timeout(10):  # far below the idle timeout: nobody hangs
                return await asyncio.gather(*(read_until_reset(address) for _ in range(n)))

        async with (
            peer_loop() as on_peers,
            serving(make_vip([backend.endpoint], timeouts=LONG_IDLE), mode) as lb,
        ):
            server = asyncio.ensure_future(on_peers(backend.serve(n)))
            results = await on_peers(clients(lb.address))
            await server
            assert [len(r) for r in results] == [size] * n
            assert all(r == backend.payload for r in results)
            await settled(lb)
            assert dict(lb.stats.closed) == {"backend_reset": n}

    run(mode.loop, scenario())


class StalledBackend:
    """A backend that never reads; `end()` sends its end of stream (FIN), still reading nothing."""

    def __init__(self) -> None:
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.listen.setblocking(False)
        self.endpoint = Endpoint(ip_address("127.0.0.1"), self.listen.getsockname()[1])
        self.conn: socket.socket | None = None

    async def accept(self) -> None:
        self.conn, _ = await asyncio.get_running_loop().sock_accept(self.listen)
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)

    async def end(self) -> None:
        assert self.conn is not None
        self.conn.shutdown(socket.SHUT_WR)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listen.close()


def test_backend_end_of_stream_to_a_client_that_reset_counts_a_client_reset(mode: Mode) -> None:
    async def scenario() -> None:
        backend = StalledBackend()
        async with peer_loop() as on_peers:
            try:
                async with serving(make_vip([backend.endpoint], timeouts=LONG_IDLE), mode) as lb:
                    accepted = asyncio.ensure_future(on_peers(backend.accept()))

                    async def send() -> asyncio.StreamWriter:
                        _, writer = await open_client(lb.address)
                        writer.write(b"q" * (8 << 20))  # more than the way to the backend holds
                        return writer

                    async def reset(writer: asyncio.StreamWriter) -> None:
                        abort_socket(writer)
                        await close_writer(writer)

                    writer = await on_peers(send())
                    while lb.buffered == 0:  # the LB holds bytes it cannot write: it stops reading
                        await asyncio.sleep(0.01)
                    await on_peers(reset(writer))  # the reset arrives while the LB does not read the client
                    await accepted
                    await on_peers(backend.end())  # the LB passes the end of stream to a client gone
                    await settled(lb)
                    assert dict(lb.stats.closed) == {"client_reset": 1}
            finally:
                await on_peers(backend.close())

    run(mode.loop, scenario())
