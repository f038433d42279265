"""End-to-end helpers: named echo backends, probe clients and held connections on 127.0.0.1.

Every backend greets a new connection with its name and a newline, then echoes; a client learns
which backend it reached from the greeting. Everything is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sluice.config import Config, parse_config

IO_TIMEOUT_S = 2.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Backend:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.add(writer)
        try:
            writer.write(self.name.encode() + b"\n")
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def kill(self) -> None:
        """Stop listening and reset every open connection (a crashed server).

        On Python 3.11, ``asyncio.Server.close()`` leaks a connection accepted but not yet attached
        (``Server._attach`` asserts, a ResourceWarning follows): so stop accepting first and let the
        pending accepts attach, then close."""
        if self.server is not None:
            loop = asyncio.get_running_loop()
            for sock in self.server.sockets:
                loop.remove_reader(sock.fileno())
            for _ in range(3):  # a yield, not a wait: each pending accept task takes its first step
                await asyncio.sleep(0)
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self.writers.clear()
        await asyncio.sleep(0)


class Backends:
    def __init__(self) -> None:
        self.all: list[Backend] = []

    async def add(self, name: str | None = None) -> Backend:
        backend = Backend(name or f"b{len(self.all)}", free_port())
        await backend.start()
        self.all.append(backend)
        return backend

    def by_address(self) -> dict[str, Backend]:
        return {b.address: b for b in self.all}

    async def close(self) -> None:
        for b in self.all:
            await b.kill()

    async def __aenter__(self) -> Backends:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def vip_config(backends: list[Backend], vip_port: int, **vip: Any) -> Config:
    spec: dict[str, Any] = {
        "name": "web",
        "listen": f"127.0.0.1:{vip_port}",
        "backends": [{"address": b.address} for b in backends],
    }
    spec.update(vip)
    return parse_config({"vips": [spec]})


async def probe(vip_port: int, source: tuple[str, int] | None = None, reset: bool = False) -> str:
    """One short flow: connect, read the greeting, one echo round trip, close. Returns the backend name."""
    sock = None
    if source is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", vip_port)), IO_TIMEOUT_S
        )
        reader, writer = await asyncio.open_connection(sock=sock)
    else:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", vip_port), IO_TIMEOUT_S)
    try:
        name = (await asyncio.wait_for(reader.readline(), IO_TIMEOUT_S)).decode().strip()
        if not name:
            raise ConnectionError("closed before the greeting")
        writer.write(b"ping")
        if await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT_S) != b"ping":
            raise ConnectionError("bad echo")
        return name
    finally:
        if reset:
            with contextlib.suppress(OSError):
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        writer.close()


class Held:
    """A long-lived flow that answers pings."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: str) -> None:
        self.reader, self.writer, self.backend = reader, writer, backend
        self.errors = 0
        self.pings = 0

    @classmethod
    async def open(cls, vip_port: int) -> Held:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", vip_port), IO_TIMEOUT_S)
        name = (await asyncio.wait_for(reader.readline(), IO_TIMEOUT_S)).decode().strip()
        return cls(reader, writer, name)

    async def ping(self) -> bool:
        try:
            self.writer.write(b"p")
            ok = await asyncio.wait_for(self.reader.readexactly(1), IO_TIMEOUT_S) == b"p"
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
            ok = False
        self.pings += 1
        if not ok:
            self.errors += 1
        return ok

    def close(self) -> None:
        self.writer.close()


@dataclass
class Load:
    """Continuous short flows from `workers` clients until stopped (bounded by `max_flows`)."""

    vip_port: int
    workers: int = 4
    max_flows: int = 20000
    pause_s: float = 0.005
    results: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, backend name or 'error:...')."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def _worker(self) -> None:
        while not self._stop.is_set() and len(self.results) < self.max_flows:
            try:
                name = await probe(self.vip_port)
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError) as exc:
                name = f"error:{type(exc).__name__}"
            self.results.append((time.monotonic(), name))
            await asyncio.sleep(self.pause_s)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def errors(self) -> int:
        return sum(1 for _, n in self.results if n.startswith("error:"))

    def counts(self, since: float = 0.0) -> Counter[str]:
        return Counter(n for t, n in self.results if t >= since)


async def wait_for(predicate: Any, timeout_s: float, step_s: float = 0.01) -> float:
    """Poll `predicate()` until true; returns the monotonic time it became true. Fails after timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s}s")
