"""The native engine's own behaviour: several workers (counters, reloads, drains and limits reach
every worker), descriptors of idle flows, the schedulers other than Maglev, bind errors, wildcard
listeners. The behaviour it shares with the python engine is tested in tests/dataplane/proxy/."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from sluice.config import Backend, Endpoint, Vip
from sluice.core.proxy_protocol import build_proxy_header
from sluice.core.scheduler import build_scheduler
from sluice.dataplane.engine import NativeTcpListener
from sluice.dataplane.engine.listener import engine_for
from sluice.dataplane.proxy.tcp import TcpListener
from tests.dataplane.proxy.helpers import (
    FROM_LOOPBACK,
    IDENT_LEN,
    EchoBackend,
    by_ident,
    close_writer,
    echo,
    flow_of,
    make_vip,
    needs_native_engine,
    open_client,
    run,
    start_backends,
)

V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0x00, 0x00])


@pytest.fixture(autouse=True)
def _native() -> None:
    needs_native_engine()


@contextlib.asynccontextmanager
async def serving(vip: Vip, **kwargs: Any) -> AsyncIterator[NativeTcpListener]:
    lb = NativeTcpListener(vip, **kwargs)
    await lb.start()
    try:
        yield lb
    finally:
        await lb.close()


@contextlib.asynccontextmanager
async def backends(n: int, **kwargs: Any) -> AsyncIterator[list[EchoBackend]]:
    started = await start_backends(n, **kwargs)
    try:
        yield started
    finally:
        for backend in started:
            await backend.close()


async def hold(
    address: tuple[str, int], n: int
) -> list[tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` clients, each connected through to its backend (its identity read)."""
    held = []
    for _ in range(n):
        reader, writer = await open_client(address)
        held.append((await reader.readexactly(IDENT_LEN), reader, writer))
    return held


def assert_every_worker_served(lb: NativeTcpListener) -> None:
    per_worker = [lb.worker_stats(i).flows_total for i in range(lb.workers)]
    assert all(per_worker), f"flows per worker: {per_worker} (the kernel spreads connections over them)"


# ---------------------------------------------------------------------------- two workers


def test_counters_sum_across_workers() -> None:
    async def scenario() -> None:
        async with backends(3) as bs, serving(make_vip([b.endpoint for b in bs]), workers=2) as lb:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> bytes:
                async with gate:
                    return (await echo(lb.address, b"%d" % i * 100))[1]

            answers = await asyncio.gather(*(one(i) for i in range(200)))
            assert answers == [b"%d" % i * 100 for i in range(200)]
            total = lb.stats
            assert (total.flows_total, total.active, dict(total.closed)) == (200, 0, {"done": 200})
            workers = [lb.worker_stats(i) for i in range(lb.workers)]
            assert all(w.flows_total > 0 for w in workers)
            assert sum(w.flows_total for w in workers) == 200
            assert sum(w.closed["done"] for w in workers) == 200
            for b in bs:
                key = str(b.endpoint)
                assert total.backend(key).bytes_to_backend == sum(
                    w.backend(key).bytes_to_backend for w in workers
                )
                assert total.backend(key).flows_total == sum(w.backend(key).flows_total for w in workers)
            sent = sum(len(a) for a in answers)
            assert sum(total.backend(str(b.endpoint)).bytes_to_backend for b in bs) == sent

    run("asyncio", scenario())


def test_update_reaches_every_worker() -> None:
    async def scenario() -> None:
        async with backends(2) as bs:
            vip = make_vip([bs[0].endpoint])
            async with serving(vip, workers=2) as lb:
                old = await hold(lb.address, 10)
                lb.update(vip.model_copy(update={"backends": make_vip([bs[1].endpoint]).backends}))
                idents = [(await echo(lb.address, b"new"))[0] for _ in range(40)]
                assert set(idents) == {bs[1].ident}
                assert all(w.backend(str(bs[1].endpoint)).flows_total for w in map(lb.worker_stats, range(2)))
                for ident, reader, writer in old:  # established flows keep their backend
                    assert ident == bs[0].ident
                    writer.write(b"still")
                    writer.write_eof()
                    assert await reader.read() == b"still"
                    await close_writer(writer)

    run("asyncio", scenario())


def test_close_backend_flows_reaches_every_worker() -> None:
    async def scenario() -> None:
        async with backends(2) as bs, serving(make_vip([b.endpoint for b in bs]), workers=2) as lb:
            held = await hold(lb.address, 40)
            doomed = [(r, w) for ident, r, w in held if ident == bs[0].ident]
            kept = [(r, w) for ident, r, w in held if ident != bs[0].ident]
            assert doomed and kept
            on_dead = [lb.worker_stats(i).backend(str(bs[0].endpoint)).active for i in range(2)]
            assert all(on_dead), f"flows on the backend per worker: {on_dead}"
            assert lb.close_backend_flows(bs[0].endpoint, "backend_down") == len(doomed)
            for reader, writer in doomed:
                assert await reader.read() == b""
                await close_writer(writer)
            for reader, writer in kept:
                writer.write(b"alive")
                writer.write_eof()
                assert await reader.read() == b"alive"
                await close_writer(writer)
            assert dict(lb.stats.closed) == {"backend_down": len(doomed), "done": len(kept)}
            assert lb.close_backend_flows(bs[0].endpoint, "backend_down") == 0

    run("asyncio", scenario())


def test_max_connections_holds_across_workers() -> None:
    async def scenario() -> None:
        async with backends(1) as bs:
            vip = make_vip([bs[0].endpoint], max_connections=4)
            async with serving(vip, workers=2) as lb:

                async def attempt() -> tuple[asyncio.StreamWriter | None, bool]:
                    try:
                        reader, writer = await open_client(lb.address)
                    except ConnectionResetError:  # the reset beat the connect's completion
                        return None, False
                    try:
                        await reader.readexactly(IDENT_LEN)
                        return writer, True
                    except (ConnectionResetError, asyncio.IncompleteReadError):
                        return writer, False

                results = await asyncio.gather(*(attempt() for _ in range(24)))
                try:
                    assert sum(ok for _, ok in results) == 4
                    stats = lb.stats
                    assert (stats.active, dict(stats.refused)) == (4, {"max_connections": 20})
                    seen = [
                        lb.worker_stats(i).flows_total + lb.worker_stats(i).refused["max_connections"]
                        for i in range(2)
                    ]
                    assert all(seen), f"connections per worker: {seen}"
                finally:
                    for writer, _ in results:
                        if writer is not None:
                            await close_writer(writer)

    run("asyncio", scenario())


def test_stop_accepting_closes_every_workers_socket_and_keeps_flows() -> None:
    async def scenario() -> None:
        async with backends(1) as bs, serving(make_vip([bs[0].endpoint]), workers=2) as lb:
            held = await hold(lb.address, 6)
            await lb.stop_accepting()
            for _ in range(10):  # every worker's socket is gone: no connect goes through
                with pytest.raises(ConnectionRefusedError):
                    await open_client(lb.address)
            for _, reader, writer in held:
                writer.write(b"on")
                writer.write_eof()
                assert await reader.read() == b"on"
                await close_writer(writer)
            assert dict(lb.stats.closed) == {"done": 6}

    run("asyncio", scenario())


# ---------------------------------------------------------------------------- one worker


def test_idle_flows_hold_only_their_two_sockets() -> None:
    n = 150

    async def scenario() -> None:
        async with backends(1) as bs, serving(make_vip([bs[0].endpoint]), workers=1, use_splice=True) as lb:
            before = len(os.listdir("/proc/self/fd"))
            held = await hold(lb.address, n)
            for _, reader, writer in held:  # bytes both ways went through a pipe, then went idle
                writer.write(b"x" * 1000)
                assert await reader.readexactly(1000) == b"x" * 1000
            grown = len(os.listdir("/proc/self/fd")) - before
            from sluice.dataplane.engine._engine import POOL_FREE_MAX

            # per flow: the test's client, the backend's socket, the LB's two; plus the pipe pool
            assert grown <= 4 * n + 2 * POOL_FREE_MAX + 16, grown
            assert lb.buffered == 0
            for _, _, writer in held:
                await close_writer(writer)

    run("asyncio", scenario())


@pytest.mark.parametrize("scheduler", ["round_robin", "least_conn"])
def test_sequential_flows_follow_the_python_scheduler(scheduler: str) -> None:
    async def scenario() -> None:
        async with backends(3) as bs:
            weights = [5, 1, 2]
            vip = make_vip([b.endpoint for b in bs], scheduler=scheduler)
            vip = vip.model_copy(
                update={
                    "backends": tuple(
                        Backend(address=b.endpoint, weight=w) for b, w in zip(bs, weights, strict=True)
                    )
                }
            )
            python = build_scheduler(vip.scheduler, vip.backends)
            idents = by_ident(bs)
            async with serving(vip, workers=1) as lb:
                held = []
                for _ in range(16):  # flows stay open: least_conn sees them
                    want = python.pick(flow_of(("127.0.0.1", 1), lb.address))
                    assert want is not None
                    python.on_open(want)
                    ident, _, writer = (await hold(lb.address, 1))[0]
                    assert idents[ident] == want
                    held.append(writer)
                for writer in held:
                    await close_writer(writer)

    run("asyncio", scenario())


def test_bind_error_raises_at_start() -> None:
    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            busy = Endpoint(ip_address("127.0.0.1"), taken.getsockname()[1])
            vip = make_vip([busy]).model_copy(update={"listen": busy})
            lb = NativeTcpListener(vip, workers=2)
            with pytest.raises(OSError) as raised:
                await lb.start()
            assert raised.value.errno == errno.EADDRINUSE
            await lb.close()

    run("asyncio", scenario())


def test_wildcard_listener_hashes_the_address_the_client_reached() -> None:
    async def scenario() -> None:
        async with (
            backends(3) as bs,
            serving(make_vip([b.endpoint for b in bs], listen="0.0.0.0"), workers=1) as lb,
        ):
            local = ("127.0.0.1", lb.address[1])
            scheduler = build_scheduler("maglev", lb.vip.backends)
            idents = by_ident(bs)
            for _ in range(30):
                ident, _, port = await echo(local, b"w")
                assert idents[ident] == scheduler.pick(flow_of(("127.0.0.1", port), local))

    run("asyncio", scenario())


@pytest.mark.parametrize("engine", ["python", "native"])
def test_proxy_local_header_is_forwarded_as_unknown(engine: str) -> None:
    async def scenario() -> None:
        async with backends(1, proxy_header="v1") as bs:
            vip = make_vip([bs[0].endpoint], accept_proxy_protocol=FROM_LOOPBACK, proxy_protocol="v1")
            lb: TcpListener | NativeTcpListener = (
                NativeTcpListener(vip, workers=1) if engine == "native" else TcpListener(vip)
            )
            await lb.start()
            try:
                _, data, _ = await echo(lb.address, V2_LOCAL + b"payload")
                assert data == b"payload"
                assert bs[0].headers == [build_proxy_header(1, None, None)]
            finally:
                await lb.close()

    run("asyncio", scenario())


# ---------------------------------------------------------------------------- engine lifetime


def test_closed_vip_leaves_no_descriptor_behind() -> None:
    async def scenario() -> None:
        async with backends(2) as bs:
            engine_for(2)  # the engine's own descriptors (epoll, eventfd per worker) stay
            before = sorted(os.listdir("/proc/self/fd"))
            lb = NativeTcpListener(make_vip([b.endpoint for b in bs]), workers=2)
            await lb.start()
            held = await hold(lb.address, 8)
            for _ in range(20):  # pipes and buffers go back to the pools
                assert (await echo(lb.address, b"p" * 100_000))[1] == b"p" * 100_000
            await lb.close()
            for _, reader, writer in held:
                assert await reader.read() == b""
                await close_writer(writer)
            await asyncio.gather(*(b.wait_idle() for b in bs))
            assert sorted(os.listdir("/proc/self/fd")) == before
            assert lb.stats.closed["shutdown"] == 8

    run("asyncio", scenario())


def test_engine_close_joins_its_workers() -> None:
    from sluice.dataplane.engine._engine import Engine

    before = set(os.listdir("/proc/self/task"))
    engine = Engine(3)
    assert len(set(os.listdir("/proc/self/task")) - before) == 3
    engine.close()
    assert set(os.listdir("/proc/self/task")) == before
    with pytest.raises(RuntimeError):
        engine.counters(0)


# ---------------------------------------------------------------------------- out of descriptors

ROOT = Path(__file__).resolve().parents[3]
TIGHT_LB = """
import asyncio, json, os, resource, sys
from ipaddress import ip_address
from sluice.config import Backend, Endpoint, Vip
from sluice.dataplane.engine.listener import NativeTcpListener
from sluice.dataplane.proxy.tcp import TcpListener

backend = Endpoint(ip_address("127.0.0.1"), int(sys.argv[1]))
vip = Vip(name="lb", listen=Endpoint(ip_address("127.0.0.1"), 0), backends=(Backend(address=backend),))
loop = asyncio.new_event_loop()
if sys.argv[2] == "native":
    lb = NativeTcpListener(vip, workers=1, use_splice=False)
else:
    lb = TcpListener(vip, use_splice=False)
loop.run_until_complete(lb.start())
fds = [int(fd) for fd in os.listdir("/proc/self/fd")]  # one of them is listdir's own, closed again
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
# room for 3 flows (2 sockets each), then accept fails with EMFILE
resource.setrlimit(resource.RLIMIT_NOFILE, (max(len(fds) - 1 + 6, max(fds) + 1), hard))
print(lb.address[1], flush=True)

def on_line():
    if not sys.stdin.readline():
        loop.stop()
        return
    s = lb.stats
    print(json.dumps({"flows": s.flows_total, "refused": dict(s.refused), "closed": dict(s.closed)}), flush=True)

loop.add_reader(sys.stdin.fileno(), on_line)
loop.run_forever()
"""


@pytest.mark.parametrize("engine", ["native", "python"])
def test_out_of_descriptors_pauses_accepting_counts_and_recovers(engine: str) -> None:
    from sluice.dataplane.proxy.tcp import ACCEPT_LOG_INTERVAL_S

    async def scenario() -> None:
        async with backends(1) as bs:
            started = asyncio.get_running_loop().time()
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                TIGHT_LB,
                str(bs[0].endpoint.port),
                engine,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert child.stdin is not None and child.stdout is not None and child.stderr is not None
            stdin, stdout = child.stdin, child.stdout

            async def stats() -> dict[str, Any]:
                stdin.write(b"stats\n")
                await stdin.drain()
                result: dict[str, Any] = json.loads(await stdout.readline())
                return result

            try:
                address = ("127.0.0.1", int(await stdout.readline()))
                served = await hold(address, 3)
                waiting = []
                for _ in range(5):  # no descriptor left for them: they wait, or are reset
                    with contextlib.suppress(ConnectionResetError):
                        waiting.append(await open_client(address))
                during = await stats()
                assert during["flows"] == 3
                assert during["refused"].get("accept_failed", 0) >= 1, during  # counted, not only logged
                for _, reader, writer in served:
                    writer.write_eof()
                    assert await reader.read() == b""
                    await close_writer(writer)
                for _, writer in waiting:
                    await close_writer(writer)
                # accepting resumed (the closed waiting clients may still take the descriptors for a
                # moment: a client turned away for no_resources tries again)
                attempts = 0
                while attempts < 50:
                    attempts += 1
                    with contextlib.suppress(ConnectionResetError, asyncio.IncompleteReadError):
                        ident, data, _ = await echo(address, b"after")
                        break
                    await asyncio.sleep(0.05)
                assert (ident, data) == (bs[0].ident, b"after")
                final = await stats()
                assert final["flows"] >= 4
                clients = final["flows"] + sum(n for r, n in final["refused"].items() if r != "accept_failed")
                assert clients == 8 + attempts, final  # each client counted once
                assert set(final["refused"]) <= {"no_resources", "accept_failed"}, final
            finally:
                stdin.close()
                await child.wait()
            elapsed = asyncio.get_running_loop().time() - started
            lines = [
                line for line in (await child.stderr.read()).decode().splitlines() if "accept failed" in line
            ]
            if engine == "python":  # one line per interval, saying how many failed
                assert 1 <= len(lines) <= 1 + elapsed // ACCEPT_LOG_INTERVAL_S, lines
                assert "failed since the last line" in lines[0]

    run("asyncio", scenario())
