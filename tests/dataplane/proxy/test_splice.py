"""Splice on its own: two TCP connections on 127.0.0.1 joined both ways, with either mover."""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import socket
import struct
import termios
import time
from collections.abc import Callable

import pytest

from sluice.dataplane.proxy.splice import (
    PIPE_SIZE,
    READS_PER_EVENT,
    SPLICE_AVAILABLE,
    CopyMover,
    Lingerer,
    PipeMover,
    Splice,
)
from tests.dataplane.proxy.helpers import run

KINDS = [("uvloop", True), ("asyncio", False), ("asyncio", True), ("uvloop", False)]


@pytest.fixture(params=KINDS, ids=lambda k: f"{'splice' if k[1] else 'copy'}-{k[0]}")
def kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    return request.param  # type: ignore[no-any-return]


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (outside, inside) pair of non-blocking TCP sockets."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        outside = socket.socket()
        outside.setblocking(False)
        await loop.sock_connect(outside, server.getsockname())
        inside, _ = await loop.sock_accept(server)
    inside.setblocking(False)
    return outside, inside


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def send_until_stalled(sock: socket.socket, data: bytes, quiet_s: float) -> int:
    """Send until the socket has taken nothing for `quiet_s` seconds; bytes sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < len(data):
        try:
            sent += sock.send(memoryview(data)[sent:])
            continue
        except BlockingIOError:
            pass
        writable = loop.create_future()
        loop.add_writer(sock.fileno(), writable.set_result, None)
        try:
            await asyncio.wait_for(writable, quiet_s)
        except TimeoutError:
            break
        finally:
            loop.remove_writer(sock.fileno())
    return sent


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pipe_is_sized() -> None:
    assert SPLICE_AVAILABLE
    mover = PipeMover()
    try:
        assert mover.capacity == PIPE_SIZE
    finally:
        mover.close()
    assert CopyMover(4096).capacity == 4096


def test_both_ways_intact_and_half_close_forwarded_after_the_data(kind: tuple[str, bool]) -> None:
    loop_name, use_splice = kind
    rng = random.Random(5)
    up, down = rng.randbytes(2 << 20), rng.randbytes(3 << 20)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (a_peer, a), (b_peer, b) = await tcp_pair(), await tcp_pair()
        closed: asyncio.Future[str] = loop.create_future()
        moved = {"a->b": 0, "b->a": 0}

        def count(key: str) -> Callable[[int], None]:
            return lambda n: moved.__setitem__(key, moved[key] + n)

        splice = Splice(
            a,
            b,
            on_closed=closed.set_result,
            on_a_to_b=count("a->b"),
            on_b_to_a=count("b->a"),
            use_splice=use_splice,
        )
        splice.start()

        async def a_side() -> bytes:
            await loop.sock_sendall(a_peer, up)
            a_peer.shutdown(socket.SHUT_WR)
            return await read_all(a_peer)

        async def b_side() -> bytes:
            got = await read_all(b_peer)  # ends only when a's FIN was passed on
            await loop.sock_sendall(b_peer, down)
            b_peer.shutdown(socket.SHUT_WR)
            return got

        with a_peer, b_peer:
            got_down, got_up = await asyncio.gather(a_side(), b_side())
        assert (got_up == up, got_down == down) == (True, True)
        assert await closed == "done"
        assert moved == {"a->b": len(up), "b->a": len(down)}
        assert a.fileno() == b.fileno() == -1

    run(loop_name, scenario())


@pytest.mark.parametrize("side", ["a", "b"])
def test_a_reset_on_one_side_resets_the_other(kind: tuple[str, bool], side: str) -> None:
    loop_name, use_splice = kind

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (a_peer, a), (b_peer, b) = await tcp_pair(), await tcp_pair()
        closed: asyncio.Future[str] = loop.create_future()
        Splice(a, b, on_closed=closed.set_result, names=("a", "b"), use_splice=use_splice).start()
        resetting, other = (a_peer, b_peer) if side == "a" else (b_peer, a_peer)
        with other:
            await loop.sock_sendall(resetting, b"hello")
            assert await loop.sock_recv(other, 5) == b"hello"
            resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            resetting.close()
            with pytest.raises(ConnectionResetError):
                await read_all(other)
        assert await closed == f"{side}_reset"

    run(loop_name, scenario())


TCP_CLOSE = 7  # tcpi_state of a connection that was reset


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Until `condition()` holds (polled: the kernel raises no event for it), at most `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {within}s")
        await asyncio.sleep(0.002)


def unacked(sock: socket.socket) -> int:
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), "little")


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize(
    ("size", "buffer_size"),
    [(1000, None), (48 * 1024, 4096)],  # the second takes more reads than one event makes
    ids=["small", "many-reads"],
)
def test_bytes_and_a_reset_arriving_together_are_passed_on_then_the_reset(
    kind: tuple[str, bool], side: str, size: int, buffer_size: int | None
) -> None:
    """uvloop (libuv's uv_poll) calls a reader once for an error event, then stops watching the fd:
    the splice must still read to the reset behind the bytes (issues 12.8/12.9)."""
    loop_name, use_splice = kind
    assert buffer_size is None or size > READS_PER_EVENT * buffer_size

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (a_peer, a), (b_peer, b) = await tcp_pair(), await tcp_pair()
        resetting, reset_sock, other = (a_peer, a, b_peer) if side == "a" else (b_peer, b, a_peer)
        payload = random.Random(3).randbytes(size)
        await loop.sock_sendall(resetting, payload)
        await until(lambda: unacked(resetting) == 0, "acknowledged")  # all in reset_sock's queue
        resetting.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resetting.close()
        await until(lambda: tcp_state(reset_sock) == TCP_CLOSE, "reset")  # before anyone reads
        closed: asyncio.Future[str] = loop.create_future()
        lingerer = Lingerer(loop)  # the bytes passed on reach `other` before its reset
        Splice(
            a,
            b,
            on_closed=closed.set_result,
            names=("a", "b"),
            use_splice=use_splice,
            buffer_size=buffer_size,
            lingerer=lingerer,
        ).start()
        got = bytearray()
        with other:
            async with asyncio.timeout(10):
                assert await closed == f"{side}_reset"
                with pytest.raises(ConnectionResetError):
                    while chunk := await loop.sock_recv(other, 1 << 20):
                        got += chunk
        assert got == payload
        lingerer.close()

    run(loop_name, scenario())


def test_close_ends_both_connections_once_and_frees_every_fd(kind: tuple[str, bool]) -> None:
    loop_name, use_splice = kind

    async def scenario() -> None:
        (a_peer, a), (b_peer, b) = await tcp_pair(), await tcp_pair()
        reasons: list[str] = []
        before = open_fds()
        splice = Splice(a, b, on_closed=reasons.append, use_splice=use_splice)
        splice.start()
        splice.close("idle_timeout")
        splice.close("again")
        assert reasons == ["idle_timeout"]
        assert open_fds() == before - 2  # a and b; the pipes are gone too
        with a_peer, b_peer:
            assert await read_all(a_peer) == b""
            assert await read_all(b_peer) == b""

    run(loop_name, scenario())


def test_a_slow_reader_stops_the_writer_within_the_buffer(kind: tuple[str, bool]) -> None:
    loop_name, use_splice = kind
    limit = 64 * 1024

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (a_peer, a), (b_peer, b) = await tcp_pair(), await tcp_pair()
        for sock in (a_peer, a, b, b_peer):  # small kernel buffers: the path fills fast
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, limit)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
        closed: asyncio.Future[str] = loop.create_future()
        splice = Splice(a, b, on_closed=closed.set_result, use_splice=use_splice, buffer_size=limit)
        splice.start()
        data = random.Random(9).randbytes(16 << 20)
        with a_peer, b_peer:
            sent = await send_until_stalled(a_peer, data, quiet_s=0.2)
            assert sent < len(data) // 2
            assert splice.buffered <= splice.capacity <= limit
            rest = loop.create_task(loop.sock_sendall(a_peer, memoryview(data)[sent:]))
            got = bytearray()
            while len(got) < len(data):
                got += await loop.sock_recv(b_peer, 1 << 20)
            await rest
            assert got == data
            assert splice.peak_buffered <= limit
        await closed  # both peers closed: the splice ends

    run(loop_name, scenario())
