"""The lab's client processes (test and bench only): what tests/netns and bench/ run in a lab's client
namespace through ``python -m sluice.lab.roles <role>`` (see roles.py), never the data plane.

DSR lab: ``http-client`` (one keep-alive connection driven over stdin), ``http-burst``, ``dns-burst``
(one request per source port). Anycast lab: ``pool`` (kept-alive connections driven over stdin),
``burst`` (new connections at a pace), ``probe`` (UDP probes over many source ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import select
import socket
import sys
import time
from typing import Any


def http_client(host: str, port: int, sport: int) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=5, source_address=("0.0.0.0", sport))
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            print("bye", flush=True)
            break
        try:
            conn.request("GET", "/")
            body = conn.getresponse().read().decode().strip()
            assert conn.sock is not None
            print(f"{body} {conn.sock.getsockname()[1]}", flush=True)
        except Exception as exc:
            print(f"error {type(exc).__name__}: {exc}", flush=True)
    conn.close()


def http_burst(host: str, port: int, first: int, count: int) -> dict[int, str]:
    out = {}
    for sport in range(first, first + count):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.settimeout(5)
                s.bind(("0.0.0.0", sport))
                s.connect((host, port))
                s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            out[sport] = data.split(b"\r\n\r\n", 1)[1].decode().strip()
        except OSError as exc:
            out[sport] = f"error {type(exc).__name__}"
    return out


def dns_burst(host: str, port: int, first: int, count: int) -> dict[int, str]:
    import dns.message
    import dns.query

    out = {}
    for sport in range(first, first + count):
        query = dns.message.make_query(f"q{sport}.lab.", "TXT")
        try:
            response = dns.query.udp(query, host, port=port, timeout=3, source_port=sport)
            out[sport] = response.answer[0][0].strings[0].decode()
        except Exception as exc:
            out[sport] = f"error {type(exc).__name__}"
    return out


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> str:
    writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return (await reader.readexactly(length)).decode().strip()


async def _connect(host: str, port: int, sport: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", sport))
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def _error(exc: BaseException) -> str:
    return f"error {type(exc).__name__}"


async def pool(host: str, port: int, first: int, count: int) -> None:
    conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    limit = asyncio.Semaphore(64)

    async def open_one(sport: int) -> None:
        async with limit:
            r, w = await asyncio.wait_for(_connect(host, port, sport), 10)
            await asyncio.wait_for(_get(r, w, False), 10)
            conns[sport] = (r, w)

    results = await asyncio.gather(*(open_one(first + i) for i in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"error {len(failed)} connections failed to open: {failed[0]!r}", flush=True)
    else:
        print("ready", flush=True)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))

    async def one(sport: int, timeout_s: float) -> tuple[int, str, float]:
        r, w = conns[sport]
        t0 = time.monotonic()
        try:
            body = await asyncio.wait_for(_get(r, w, False), timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            body = _error(exc)
        return sport, body, time.monotonic() - t0

    while True:
        cmd, _, arg = (await lines.get()).strip().partition(" ")
        if cmd in ("quit", ""):
            break
        if cmd == "round":
            done = await asyncio.gather(*(one(s, float(arg)) for s in sorted(conns)))
            print(json.dumps({s: [b, round(t, 4)] for s, b, t in done}), flush=True)
        else:
            print(f"error unknown command {cmd!r}", flush=True)
    for _, w in conns.values():
        w.close()
    print("bye", flush=True)


async def burst(host: str, port: int, first: int, count: int, pace_s: float) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}

    async def one(sport: int) -> None:
        t0 = time.monotonic()
        try:
            r, w = await asyncio.wait_for(_connect(host, port, sport), 10)
            try:
                body = await asyncio.wait_for(_get(r, w, True), 10)
            finally:
                w.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            body = _error(exc)
        out[sport] = [body, round(time.monotonic() - t0, 4)]

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(one(first + i)))
        if pace_s > 0:
            await asyncio.sleep(pace_s)
        elif len(tasks) % 32 == 0:
            await asyncio.gather(*tasks[-32:])
    await asyncio.gather(*tasks)
    return out


def probe(
    host: str, port: int, first: int, ports: int, duration_s: float, interval_s: float
) -> list[list[Any]]:
    """UDP probes round robin over `ports` source ports; each waits for its echo up to 5 intervals."""
    socks = []
    for i in range(ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", first + i))
        s.connect((host, port))
        s.setblocking(False)
        socks.append(s)
    poller = select.poll()  # not select(): a caller may hold descriptors above 1023
    for s in socks:
        poller.register(s, select.POLLIN)
    index_of_fd = {s.fileno(): i for i, s in enumerate(socks)}
    pending: dict[tuple[int, int], float] = {}  # (sock index, seq) -> sent at
    results: list[list[Any]] = []
    end = time.monotonic() + duration_s
    seq = 0
    wait_s = max(0.05, 5 * interval_s)
    while True:
        now = time.monotonic()
        if now < end:
            i = seq % ports
            socks[i].send(f"{seq}".encode())
            pending[(i, seq)] = now
            seq += 1
        elif not pending:
            break
        for fd, _ in poller.poll(interval_s * 1000):
            i = index_of_fd[fd]
            s = socks[i]
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while True:
                    data = s.recv(256)
                    n = int(data.split(b" ", 1)[0])
                    sent = pending.pop((i, n), None)
                    if sent is not None:
                        results.append([round(sent, 4), first + i, 1])
        now = time.monotonic()
        for key, sent in list(pending.items()):
            if now - sent > wait_s:
                del pending[key]
                results.append([round(sent, 4), first + key[0], 0])
        if now > end + 2 * wait_s:
            break
    for s in socks:
        s.close()
    return sorted(results)
