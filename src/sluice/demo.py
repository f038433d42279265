"""`sluice demo`: three embedded backends, a TCP and a UDP VIP on 127.0.0.1, traffic, a live table.

Everything runs in this process on kernel-chosen ports; no config file is needed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sluice.config import Config, Endpoint, parse_config
from sluice.control.controller import Controller
from sluice.dataplane.proxy.plane import describe_engine
from sluice.server import new_event_loop

BACKENDS = 3
UDP_CLIENTS = 300
UDP_DATAGRAMS = 5
CONCURRENCY = 64
UDP_CONCURRENCY = 32
PAYLOAD = 2048


@dataclass
class Load:
    """What the demo's clients saw."""

    tcp_ok: int = 0
    tcp_failed: int = 0
    udp_ok: int = 0
    udp_lost: int = 0
    started: float = field(default_factory=time.monotonic)
    errors: Counter[str] = field(default_factory=Counter)


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport, so no isinstance check
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def demo_config(tcp_vip: int, udp_vip: int, tcp_backends: list[int], udp_backends: list[int]) -> Config:
    def backends(ports: list[int]) -> list[dict[str, object]]:
        return [{"address": f"127.0.0.1:{p}"} for p in ports]

    return parse_config(
        {
            "vips": [
                {
                    "name": "demo-tcp",
                    "protocol": "tcp",
                    "listen": f"127.0.0.1:{tcp_vip}",
                    "backends": backends(tcp_backends),
                },
                {
                    "name": "demo-udp",
                    "protocol": "udp",
                    "listen": f"127.0.0.1:{udp_vip}",
                    "backends": backends(udp_backends),
                    "timeouts": {"idle": "5s"},
                },
            ]
        }
    )


async def _tcp_client(vip: Endpoint, load: Load, sem: asyncio.Semaphore) -> None:
    payload = os.urandom(PAYLOAD)
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip.host, vip.port), 5)
            try:
                writer.write(payload)
                await writer.drain()
                echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
            finally:
                writer.close()
                await writer.wait_closed()
            if echoed == payload:
                load.tcp_ok += 1
            else:
                load.tcp_failed += 1
                load.errors["tcp corrupted"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            load.tcp_failed += 1
            load.errors[f"tcp {type(exc).__name__}"] += 1


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def _udp_client(vip: Endpoint, load: Load, sem: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    async with sem:
        transport, proto = await loop.create_datagram_endpoint(_UdpClient, remote_addr=(vip.host, vip.port))
        try:
            for i in range(UDP_DATAGRAMS):
                message = f"datagram {i}".encode()
                transport.sendto(message)
                try:
                    reply = await asyncio.wait_for(proto.replies.get(), 1.0)
                except TimeoutError:
                    load.udp_lost += 1
                    continue
                if reply == message:
                    load.udp_ok += 1
                else:
                    load.udp_lost += 1
        finally:
            transport.close()


def _render(controller: Controller, load: Load, connections: int) -> Group:
    stats = controller.stats()
    table = Table(
        title="sluice demo: flows per backend", caption="bytes in: client -> backend; out: backend -> client"
    )
    table.add_column("VIP", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    for column in ("active", "flows", "share", "bytes in", "bytes out"):
        table.add_column(column, justify="right")
    for vip in controller.config.vips:
        vs = stats.get(vip.name)
        if vs is None:
            continue
        total = sum(b.flows_total for b in vs.backends.values()) or 1
        for backend in vip.backends:
            bs = vs.backends.get(str(backend.address))
            if bs is None:
                table.add_row(vip.name, str(backend.address), "0", "0", "0.0%", "0", "0")
                continue
            table.add_row(
                vip.name,
                str(backend.address),
                str(bs.active),
                str(bs.flows_total),
                f"{100 * bs.flows_total / total:.1f}%",
                f"{bs.bytes_to_backend:,}",
                f"{bs.bytes_from_backend:,}",
            )
    elapsed = time.monotonic() - load.started
    line = (
        f"TCP {load.tcp_ok + load.tcp_failed}/{connections} connections "
        f"({load.tcp_ok} echoed intact, {load.tcp_failed} failed) | "
        f"UDP {load.udp_ok}/{UDP_CLIENTS * UDP_DATAGRAMS} replies ({load.udp_lost} lost) | {elapsed:.1f}s"
    )
    return Group(table, line)


async def _demo(connections: int, live: bool, console: Console) -> bool:
    loop = asyncio.get_running_loop()
    tcp_servers = [await asyncio.start_server(_tcp_echo, "127.0.0.1", 0) for _ in range(BACKENDS)]
    udp_servers = [
        await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0)) for _ in range(BACKENDS)
    ]
    config = demo_config(
        _free_port(socket.SOCK_STREAM),
        _free_port(socket.SOCK_DGRAM),
        [s.sockets[0].getsockname()[1] for s in tcp_servers],
        [t.get_extra_info("sockname")[1] for t, _ in udp_servers],
    )
    controller = Controller(config)
    await controller.start()
    console.print(f"sluice demo: {describe_engine(config)}")
    load = Load()
    try:
        tcp_vip, udp_vip = config.vips[0].listen, config.vips[1].listen
        sem = asyncio.Semaphore(CONCURRENCY)
        udp_sem = asyncio.Semaphore(UDP_CONCURRENCY)
        work = asyncio.gather(
            *(_tcp_client(tcp_vip, load, sem) for _ in range(connections)),
            *(_udp_client(udp_vip, load, udp_sem) for _ in range(UDP_CLIENTS)),
        )
        if live:
            with Live(_render(controller, load, connections), console=console, refresh_per_second=8) as view:
                while not work.done():
                    await asyncio.wait([work], timeout=0.125)
                    view.update(_render(controller, load, connections))
        await work
        for _ in range(40):  # let the LB see the last clients' FINs (bounded: 2 s)
            if controller.stats()["demo-tcp"].active == 0:
                break
            await asyncio.sleep(0.05)
        console.print(_render(controller, load, connections))
    finally:
        await controller.close()
        for server in tcp_servers:
            server.close()
            await server.wait_closed()
        for transport, _ in udp_servers:
            transport.close()
    ok = load.tcp_failed == 0 and load.udp_lost == 0
    summary = (
        f"summary: {load.tcp_ok} TCP connections and {load.udp_ok} UDP round trips through sluice "
        f"({describe_engine(config)}) in {time.monotonic() - load.started:.1f}s; "
    )
    summary += "no errors." if ok else f"errors: {dict(load.errors)}, UDP lost: {load.udp_lost}"
    console.print(summary)
    return ok


def run_demo(connections: int = 3000, live: bool = True) -> bool:
    """Run the demo; True when every connection and datagram came back intact."""
    console = Console()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_demo(connections, live and console.is_terminal, console))
