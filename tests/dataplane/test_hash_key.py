"""``hash_key:`` on both proxy engines, end to end on 127.0.0.1: two "nodes" of one VIP (the native
engine, then the python engine, on the same VIP address and port, as two anycast nodes) with the
same key send the same flows to the same backends, the ones `sluice flow`'s scheduler names with the
key, and not the ones the unkeyed hash would pick."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from ipaddress import ip_address

from sluice.config import Endpoint, Vip
from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, HashKey
from sluice.core.scheduler import build_scheduler
from sluice.dataplane.engine import NativeTcpListener, NativeUdpListener
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from tests.dataplane.proxy import helpers
from tests.dataplane.proxy import udp_helpers as uh
from tests.support.loopback import free_port

KEY = HashKey.from_hex("4b1d9e27c6a05f38e1d2c3b4a5968778")
FLOWS = 40
BACKENDS = 4
IO_TIMEOUT_S = 5.0


def _on_port(vip: Vip, port: int) -> Vip:
    return vip.model_copy(update={"listen": Endpoint(vip.listen.ip, port)})


def _client_ports(n: int) -> list[int]:
    """`n` source ports below the ephemeral range that bind now (seeded, so a run is repeatable)."""
    rng = random.Random(1612)
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(10000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _picks(vip: Vip, proto: int, ports: list[int], key: HashKey | None) -> list[Endpoint | None]:
    scheduler = build_scheduler("maglev", vip.weighted_backends, vip.maglev_table_size, hash_key=key)
    ip = ip_address("127.0.0.1")
    return [scheduler.pick(FiveTuple(ip, vip.listen.ip, p, vip.listen.port, proto)) for p in ports]


async def _tcp_ident(address: tuple[str, int], local_port: int) -> bytes:
    """Connect from `local_port`, read the backend's identity, reset (no TIME_WAIT: the same port
    connects again to the next node)."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", local_port))
        await asyncio.wait_for(loop.sock_connect(sock, address), IO_TIMEOUT_S)
        ident = b""
        while len(ident) < helpers.IDENT_LEN:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, helpers.IDENT_LEN - len(ident)), IO_TIMEOUT_S)
            if not chunk:
                raise ConnectionError("closed before the identity")
            ident += chunk
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return ident


def test_tcp_nodes_with_one_key_agree_and_differ_from_unkeyed() -> None:
    helpers.needs_native_engine()

    async def scenario() -> None:
        backends = await helpers.start_backends(BACKENDS)
        try:
            by_ident = helpers.by_ident(backends)
            vip = _on_port(
                helpers.make_vip([b.endpoint for b in backends], hash_key=KEY), free_port(socket.SOCK_STREAM)
            )
            ports = _client_ports(FLOWS)
            nodes: dict[str, Callable[[Vip], NativeTcpListener | TcpListener]] = {
                "native": lambda v: NativeTcpListener(v, workers=1),
                "python": TcpListener,
            }
            seen = {}
            for name, make in nodes.items():
                lb = make(vip)
                await lb.start()
                try:
                    seen[name] = [by_ident[await _tcp_ident(lb.address, p)] for p in ports]
                finally:
                    await lb.close()
            expected = _picks(vip, IPPROTO_TCP, ports, KEY)
            assert seen["native"] == seen["python"] == expected
            unkeyed = _picks(vip, IPPROTO_TCP, ports, None)
            assert sum(a != b for a, b in zip(expected, unkeyed, strict=True)) > FLOWS // 2
        finally:
            for backend in backends:
                await backend.close()

    helpers.run("asyncio", scenario())


def test_udp_nodes_with_one_key_agree_and_differ_from_unkeyed() -> None:
    helpers.needs_native_engine()

    async def scenario() -> None:
        async with uh.echo_backends(BACKENDS) as backends:
            names = {b.name: b.endpoint for b in backends}
            vip = _on_port(
                uh.make_vip([b.endpoint for b in backends], hash_key=KEY), free_port(socket.SOCK_DGRAM)
            )
            address = (str(vip.listen.ip), vip.listen.port)
            clients = [await uh.Client.open(address) for _ in range(FLOWS)]
            nodes: dict[str, Callable[[Vip], NativeUdpListener | UdpListener]] = {
                "native": lambda v: NativeUdpListener(v, workers=1),
                "python": UdpListener,
            }
            seen = {}
            try:
                for name, make in nodes.items():
                    lb = make(vip)
                    await lb.start()
                    try:
                        replies: list[Awaitable[tuple[bytes, object]]] = [c.request(b"q") for c in clients]
                        got = await asyncio.gather(*replies)
                        seen[name] = [names[reply.split(b"|", 1)[0].decode()] for reply, _ in got]
                    finally:
                        await lb.close()
                ports = [c.address[1] for c in clients]
            finally:
                for c in clients:
                    c.close()
            expected = _picks(vip, IPPROTO_UDP, ports, KEY)
            assert seen["native"] == seen["python"] == expected
            unkeyed = _picks(vip, IPPROTO_UDP, ports, None)
            assert sum(a != b for a, b in zip(expected, unkeyed, strict=True)) > FLOWS // 2

    helpers.run("asyncio", scenario())


def test_a_reload_that_changes_the_key_moves_new_flows_and_counts_every_slot() -> None:
    helpers.needs_native_engine()
    other = HashKey.from_hex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")

    async def scenario() -> None:
        backends = await helpers.start_backends(BACKENDS)
        try:
            by_ident = helpers.by_ident(backends)
            for make in (lambda v: NativeTcpListener(v, workers=1), TcpListener):
                vip = _on_port(
                    helpers.make_vip([b.endpoint for b in backends], hash_key=KEY),
                    free_port(socket.SOCK_STREAM),
                )
                ports = _client_ports(FLOWS)
                lb = make(vip)
                await lb.start()
                try:
                    before = [by_ident[await _tcp_ident(lb.address, p)] for p in ports]
                    assert before == _picks(vip, IPPROTO_TCP, ports, KEY)
                    rotated = vip.model_copy(update={"hash_key": other})
                    lb.update(rotated)
                    after = [by_ident[await _tcp_ident(lb.address, p)] for p in ports]
                    assert after == _picks(rotated, IPPROTO_TCP, ports, other) != before
                    assert lb.stats.table_slots_changed == vip.maglev_table_size
                finally:
                    await lb.close()
        finally:
            for backend in backends:
                await backend.close()

    helpers.run("asyncio", scenario())
