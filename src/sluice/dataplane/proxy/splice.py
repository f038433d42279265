"""Moving bytes between two connected TCP sockets: the proxy's byte mover.

A `Splice` joins two sockets with one `_Direction` each way. A direction reads from its source into
a bounded holding area and writes that out to its destination:

- `PipeMover`: a kernel pipe and `os.splice` (socket -> pipe -> socket, the bytes never enter
  Python), the pipe sized with ``F_SETPIPE_SZ``, held only while bytes are in it (from a
  `PipePool`), so an idle flow holds just its two sockets;
- `CopyMover`: a preallocated buffer and ``recv_into``/``send``, where splice is unavailable.

Flow control lives in one place, `_Direction._flush`: a direction reads again only once its holding
area has been written out completely. A slow reader therefore stops its writer (the source's TCP
receive window closes) and the LB holds at most `capacity` bytes per direction.

The sockets are driven with ``loop.add_reader``/``add_writer`` on their raw file descriptors, so the
same code runs on asyncio's selector loop and on uvloop. End of stream in one direction becomes
``shutdown(SHUT_WR)`` on the destination once everything read before it was written (half-close).
A reset or error on either socket closes both at once, the other one with ``SO_LINGER`` 0 so the
reset reaches its peer too -- once the bytes already written to it have left (a reset drops what
the kernel still holds; a `Lingerer` waits at most `RESET_LINGER_S` seconds): its peer gets the
data, then the reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import Final, Protocol

SPLICE_AVAILABLE: Final = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
PIPE_SIZE: Final = 1 << 20  # bytes per direction asked of F_SETPIPE_SZ
COPY_BUFFER_SIZE: Final = 256 * 1024  # bytes per direction for the recv/send fallback
PIPE_POOL_SIZE: Final = 16  # drained pipes kept for reuse (per pool)
RESET_LINGER_S: Final = 1.0  # most seconds a reset waits for bytes already written to reach the peer
_LINGER_POLL_S: Final = 0.002  # how often a lingering socket's send queue is looked at
READS_PER_EVENT: Final = 8  # most reads of one socket per readable event, then it is watched anew

_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Mover(Protocol):
    """A bounded holding area between a source and a destination socket."""

    capacity: int
    """Most bytes it ever holds."""
    held: int
    """Bytes read from the source and not yet written to the destination."""
    peak: int
    """Highest `held` seen."""

    def fill(self, src: socket.socket) -> int | None:
        """Read what fits; bytes read, 0 at end of stream, None if nothing to read now."""

    def drain(self, dst: socket.socket) -> int:
        """Write what the destination takes now; bytes written."""

    def close(self) -> None: ...


class PipePool:
    """A bounded free-list of drained pipes, so a new flow skips ``pipe2`` + ``F_SETPIPE_SZ`` (two
    syscalls and a buffer allocation per direction) and a closed one skips two ``close``.

    Only empty pipes come back (`PipeMover.close` checks); at most `max_free` wait here, each counted
    against the user's pipe page quota at its full size, so keep the bound small.
    """

    def __init__(self, max_free: int = PIPE_POOL_SIZE, size: int = PIPE_SIZE) -> None:
        self.max_free = max_free
        self.size = size
        self._free: list[tuple[int, int, int]] = []  # (read fd, write fd, capacity)

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> tuple[int, int, int]:
        """A pipe: (read fd, write fd, capacity in bytes), reused when one is free."""
        if self._free:
            return self._free.pop()
        return open_pipe(self.size)

    def give(self, r: int, w: int, capacity: int) -> None:
        """Take back an *empty* pipe; closed when the free-list is full."""
        if len(self._free) < self.max_free:
            self._free.append((r, w, capacity))
        else:
            os.close(r)
            os.close(w)

    def close(self) -> None:
        """Close every free pipe (the owner is shutting down); the pool stays usable."""
        free, self._free = self._free, []
        for r, w, _ in free:
            os.close(r)
            os.close(w)


def reset_close(sock: socket.socket) -> None:
    """Close `sock` with ``SO_LINGER`` 0, so its peer gets a reset (RST) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def unsent(sock: socket.socket) -> int:
    """Bytes `sock`'s peer has not acknowledged yet (sent or not: ``SIOCOUTQ``); 0 on error."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), "little")
    except OSError:
        return 0


class Lingerer:
    """Sockets to reset once their peer has everything written to them (``SIOCOUTQ`` 0), at most
    `RESET_LINGER_S` seconds each; `close` resets the ones still waiting at once (the owner stops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[socket.socket, tuple[float, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def reset_close(self, sock: socket.socket) -> None:
        self._check(sock, self._loop.time() + RESET_LINGER_S)

    def _check(self, sock: socket.socket, deadline: float) -> None:
        self._waiting.pop(sock, None)
        if unsent(sock) == 0 or self._loop.time() >= deadline:
            reset_close(sock)
        else:
            self._waiting[sock] = (
                deadline,
                self._loop.call_later(_LINGER_POLL_S, self._check, sock, deadline),
            )

    def close(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for sock, (_, handle) in waiting.items():
            handle.cancel()
            reset_close(sock)


def open_pipe(size: int) -> tuple[int, int, int]:
    """A new non-blocking pipe sized `size` bytes if allowed: (read fd, write fd, capacity)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # Over fs.pipe-max-size or the user's pipe page quota (EPERM): keep the default size.
        try:
            return r, w, fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)  # returns the size granted
        except OSError:
            return r, w, fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    except BaseException:
        os.close(r)
        os.close(w)
        raise


class NoPipe(OSError):
    """No pipe could be made for bytes to move (EMFILE, ENFILE, the pipe quota)."""


class PipeMover:
    """socket -> pipe -> socket with `os.splice`. A pipe is held only while bytes are in it: taken
    from `pool` (or made) when a read starts, given back once drained, so an idle flow holds none."""

    def __init__(self, size: int = PIPE_SIZE, pool: PipePool | None = None) -> None:
        self._pool = pool if pool is not None else PipePool(0, size)
        self._pipe: tuple[int, int] | None = None
        self.capacity = self._pool.size
        """The pipe's size once one was granted (the size asked for before)."""
        self.held = 0
        self.peak = 0

    def fill(self, src: socket.socket) -> int | None:
        if self._pipe is None:
            try:
                r, w, self.capacity = self._pool.take()
            except OSError as exc:
                raise NoPipe(exc.errno, exc.strerror) from exc
            self._pipe = (r, w)
        try:
            n = os.splice(src.fileno(), self._pipe[1], self.capacity - self.held, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            n = None
        if not n:  # nothing read: the pipe is empty, back it goes
            self._give_back()
            return n
        self.held += n
        if self.held > self.peak:
            self.peak = self.held
        return n

    def drain(self, dst: socket.socket) -> int:
        written = 0
        while self.held:
            assert self._pipe is not None
            try:
                n = os.splice(self._pipe[0], dst.fileno(), self.held, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                break
            self.held -= n
            written += n
        if not self.held:
            self._give_back()
        return written

    def _give_back(self) -> None:
        # `held` counts exactly the bytes in the pipe: 0 means drained, safe to hand to another flow.
        if self._pipe is not None and self.held == 0:
            self._pool.give(*self._pipe, self.capacity)
            self._pipe = None

    def close(self) -> None:
        self._give_back()
        if self._pipe is not None:  # bytes left in it: never reused
            os.close(self._pipe[0])
            os.close(self._pipe[1])
            self._pipe = None


class CopyMover:
    """socket -> buffer -> socket with `recv_into` and `send` (the fallback)."""

    def __init__(self, size: int = COPY_BUFFER_SIZE) -> None:
        self._view = memoryview(bytearray(size))
        self._start = 0
        self.capacity = size
        self.held = 0
        self.peak = 0

    def fill(self, src: socket.socket) -> int | None:
        # Only called once everything held was written out: the buffer is empty.
        try:
            n = src.recv_into(self._view)
        except BlockingIOError:
            return None
        self._start, self.held = 0, n
        self.peak = max(self.peak, n)
        return n

    def drain(self, dst: socket.socket) -> int:
        written = 0
        while self.held:
            try:
                n = dst.send(self._view[self._start : self._start + self.held])
            except BlockingIOError:
                break
            self._start += n
            self.held -= n
            written += n
        return written

    def close(self) -> None:
        self._view.release()


class _Direction:
    """src -> mover -> dst, paced by the mover's capacity."""

    def __init__(
        self,
        splice: Splice,
        src: socket.socket,
        dst: socket.socket,
        mover: Mover,
        on_moved: Callable[[int], None],
    ) -> None:
        self._splice = splice
        self._loop = splice.loop
        self.src, self.dst = src, dst
        self._src_fd, self._dst_fd = src.fileno(), dst.fileno()
        self.mover = mover
        self._on_moved = on_moved
        self._reading = False
        self._writing = False
        self._eof = False
        self.done = False
        """End of stream read, everything written, and the destination shut down for writing."""

    def start(self) -> None:
        self._start_reading()

    def stop(self) -> None:
        if self._reading:
            self._stop_reading()
        if self._writing:
            self._loop.remove_writer(self._dst_fd)
            self._writing = False

    def _start_reading(self) -> None:
        self._loop.add_reader(self._src_fd, self._on_readable)
        self._reading = True

    def _stop_reading(self) -> None:
        self._loop.remove_reader(self._src_fd)
        self._reading = False

    def _on_readable(self) -> None:
        # Read on until the socket says EAGAIN, the stream ends or fails, or the destination is
        # full. uvloop (libuv's uv_poll) calls the reader once for an error event (a reset: EPOLLERR)
        # and then stops watching the socket: bytes that arrived with the reset would otherwise be
        # its last call, and the reset behind them would never be read (issues 12.8/12.9).
        for _ in range(READS_PER_EVENT):
            try:
                n = self.mover.fill(self.src)
            except NoPipe:
                self._splice.close("no_resources", reset=True)
                return
            except OSError as exc:
                self._splice.abort(self.src, exc)
                return
            if n is None:
                return
            if n == 0:
                self._eof = True
                self._stop_reading()
            self._flush()
            if not self._reading:  # end of stream, the destination full, or the splice closed
                return
        # More may wait: watch the socket anew (uvloop may have dropped its watcher, see above).
        self._stop_reading()
        self._start_reading()

    def _on_writable(self) -> None:
        self._flush()

    def _flush(self) -> None:
        try:
            moved = self.mover.drain(self.dst)
        except OSError as exc:
            self._splice.abort(self.dst, exc)
            return
        if moved:
            self._on_moved(moved)
        if self.mover.held:  # the destination is full: stop reading until it takes the rest
            if self._reading:
                self._stop_reading()
            if not self._writing:
                self._loop.add_writer(self._dst_fd, self._on_writable)
                self._writing = True
            return
        if self._writing:
            self._loop.remove_writer(self._dst_fd)
            self._writing = False
        if self._eof:
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._splice.abort(self.dst, exc)
                return
            self.done = True
            self._splice.direction_done()
        elif not self._reading:
            self._start_reading()


class Splice:
    """Two connected sockets joined both ways until both ends finished, one reset, or `close`.

    Owns both sockets from `start` on and closes them; `on_closed(reason)` is called exactly once:
    ``done`` (both directions ended cleanly), ``<name>_reset`` / ``<name>_error`` (a socket failed;
    `names` gives the two sockets' names), or the reason given to `close`.
    """

    def __init__(
        self,
        a: socket.socket,
        b: socket.socket,
        *,
        on_closed: Callable[[str], None],
        on_a_to_b: Callable[[int], None] = lambda n: None,
        on_b_to_a: Callable[[int], None] = lambda n: None,
        names: tuple[str, str] = ("a", "b"),
        use_splice: bool = SPLICE_AVAILABLE,
        buffer_size: int | None = None,
        pipes: PipePool | None = None,
        lingerer: Lingerer | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._lingerer = lingerer
        """Where a reset waits for the bytes already written (None: reset at once)."""
        self._names = {a.fileno(): names[0], b.fileno(): names[1]}
        self._socks = (a, b)
        self._on_closed = on_closed
        movers: list[Mover] = []
        try:
            for _ in range(2):
                if use_splice:
                    movers.append(PipeMover(buffer_size or PIPE_SIZE, pipes))
                else:
                    movers.append(CopyMover(buffer_size or COPY_BUFFER_SIZE))
        except OSError:
            for mover in movers:
                mover.close()
            raise
        self._dirs = (
            _Direction(self, a, b, movers[0], on_a_to_b),
            _Direction(self, b, a, movers[1], on_b_to_a),
        )
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held in the LB now, both directions."""
        return sum(d.mover.held for d in self._dirs)

    @property
    def peak_buffered(self) -> int:
        """Highest bytes held by one direction so far."""
        return max(d.mover.peak for d in self._dirs)

    @property
    def capacity(self) -> int:
        """Most bytes one direction can hold."""
        return max(d.mover.capacity for d in self._dirs)

    def start(self) -> None:
        for d in self._dirs:
            d.start()

    def direction_done(self) -> None:
        if all(d.done for d in self._dirs):
            self.close("done")

    def abort(self, failed: socket.socket, exc: OSError) -> None:
        """`failed` raised `exc`: close both, resetting the other socket's connection (after the
        bytes already written to it, see `linger_reset_close`)."""
        # ENOTCONN: the connection is gone already (a reset nobody was reading for; shutdown says so)
        gone = isinstance(exc, ConnectionResetError | BrokenPipeError) or exc.errno == errno.ENOTCONN
        kind = "reset" if gone else "error"
        reason = f"{self._names.get(failed.fileno(), '?')}_{kind}"
        self.close(reason, reset=True)

    def close(self, reason: str, *, reset: bool = False) -> None:
        """Stop moving and close both sockets (with RST when `reset`, each once what was written to
        it has left when a `lingerer` was given); idempotent. `on_closed` runs at once."""
        if self.closed:
            return
        self.closed = True
        for d in self._dirs:
            d.stop()
            d.mover.close()
        for sock in self._socks:
            if reset and self._lingerer is not None:
                self._lingerer.reset_close(sock)
            elif reset:
                reset_close(sock)
            else:
                sock.close()
        self._on_closed(reason)
