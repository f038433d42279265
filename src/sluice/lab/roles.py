"""Entry point of every process a lab runs inside its namespaces: ``python -m sluice.lab.roles <role>``.

Servers (the backends): ``http-server`` (answers with its name), ``dns-server`` (a TXT record with its
name), ``udp-echo`` (echoes, appending its name). ``lb``: the DSR lab's LB, an XdpPlane driven over
stdin (``apply PATH``, ``stats``, ``quit``). ``tx-csum-off``: TCP/UDP checksums in software on an
interface. The client roles (test and bench only) live in clients.py: ``http-client``, ``http-burst``,
``dns-burst``, ``pool``, ``burst``, ``probe``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import json
import logging
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from sluice.lab import clients
from sluice.lab.hosts import ROLES_MODULE


async def _http_server(name: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in head.lower()
                body = f"{name}\n".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                    b"Connection: %s\r\n\r\n%s" % (len(body), b"close" if close else b"keep-alive", body)
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, reuse_address=True)
    async with server:
        await server.serve_forever()


def _tx_checksum_off(ifname: str) -> None:
    """ethtool -K IFNAME tx off (ETHTOOL_STXCSUM through SIOCETHTOOL; Debian's ethtool may be absent).

    veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL); a native XDP program on the way
    turns the packet into a plain frame and the checksum is never filled in. Real NICs deliver full
    checksums, so the lab's client computes them in software."""
    siocethtool, ethtool_stxcsum = 0x8946, 0x17
    value = struct.pack("II", ethtool_stxcsum, 0)
    buf = ctypes.create_string_buffer(value)
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), siocethtool, ifreq)


def _dns_server(name: str, addr: str, port: int) -> None:
    import dns.message
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))  # bound to the VIP: replies leave with the VIP as source
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            query = dns.message.from_wire(data)
        except Exception:  # not DNS: ignore
            continue
        response = dns.message.make_response(query)
        qname = query.question[0].name
        response.answer.append(dns.rrset.from_text(qname, 0, "IN", "TXT", f'"{name}"'))
        sock.sendto(response.to_wire(), peer)


def _udp_echo(name: str, addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))  # bound to the VIP: replies leave with the VIP as source
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data[:64] + b" " + name.encode(), peer)


async def _lb(instance: str, config_path: Path, mode: str, checks: bool = False) -> None:
    from sluice.config import load_config
    from sluice.dataplane.xdp.plane import XdpPlane
    from sluice.lab.dsr import CheckedLb

    plane = XdpPlane(instance, attach_mode="generic" if mode == "generic" else "native", refresh_interval_s=5)
    checked = CheckedLb(plane, load_config(config_path)) if checks else None
    try:
        await (checked.start() if checked else plane.apply(load_config(config_path)))
    except Exception as exc:
        await (checked.close() if checked else plane.close(detach=True))
        print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))
    try:
        while not stop.is_set():
            get = asyncio.ensure_future(lines.get())
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            stopped.cancel()
            cmd, _, arg = get.result().strip().partition(" ")
            try:
                if cmd in ("quit", ""):
                    break
                if cmd == "apply":
                    await (checked.apply(load_config(arg)) if checked else plane.apply(load_config(arg)))
                    print("ok", flush=True)
                elif cmd == "health" and checked:
                    print(json.dumps(checked.health()), flush=True)
                elif cmd == "stats":
                    print(json.dumps(plane.xdp_counters()), flush=True)
                else:
                    print(f"error unknown command {cmd!r}", flush=True)
            except Exception as exc:
                print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
    finally:
        await (checked.close() if checked else plane.close(detach=True))
        print("bye", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {ROLES_MODULE}")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("lb")
    p.add_argument("--instance", required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--mode", choices=("native", "generic"), default="native")
    p.add_argument("--checks", action="store_true", help="run the health monitor (lab/dsr.py CheckedLb)")
    p = sub.add_parser("tx-csum-off")
    p.add_argument("ifname")
    p = sub.add_parser("http-server")
    p.add_argument("name")
    p.add_argument("port", type=int)
    for server in ("dns-server", "udp-echo"):
        p = sub.add_parser(server)
        p.add_argument("name")
        p.add_argument("addr")
        p.add_argument("port", type=int)
    p = sub.add_parser("http-client")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("sport", type=int)
    for role in ("http-burst", "dns-burst", "pool", "burst", "probe"):
        p = sub.add_parser(role)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("first_sport", type=int)
        p.add_argument("count", type=int)
        if role == "burst":
            p.add_argument("pace_s", type=float, nargs="?", default=0.0)
        if role == "probe":
            p.add_argument("duration_s", type=float)
            p.add_argument("interval_s", type=float)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    out: IO[str] = sys.stdout
    if args.role == "lb":
        asyncio.run(_lb(args.instance, args.config, args.mode, args.checks))
    elif args.role == "tx-csum-off":
        _tx_checksum_off(args.ifname)
    elif args.role == "http-server":
        asyncio.run(_http_server(args.name, args.port))
    elif args.role == "dns-server":
        _dns_server(args.name, args.addr, args.port)
    elif args.role == "udp-echo":
        _udp_echo(args.name, args.addr, args.port)
    elif args.role == "http-client":
        clients.http_client(args.host, args.port, args.sport)
    elif args.role == "http-burst":
        json.dump(clients.http_burst(args.host, args.port, args.first_sport, args.count), out)
    elif args.role == "dns-burst":
        json.dump(clients.dns_burst(args.host, args.port, args.first_sport, args.count), out)
    elif args.role == "pool":
        asyncio.run(clients.pool(args.host, args.port, args.first_sport, args.count))
    elif args.role == "burst":
        json.dump(
            asyncio.run(clients.burst(args.host, args.port, args.first_sport, args.count, args.pace_s)), out
        )
    elif args.role == "probe":
        probes = clients.probe(
            args.host, args.port, args.first_sport, args.count, args.duration_s, args.interval_s
        )
        json.dump(probes, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
