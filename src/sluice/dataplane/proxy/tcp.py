"""The TCP full proxy: one `TcpListener` per VIP.

Each accepted client connection goes through a short handshake task -- read the client's PROXY
header when the VIP expects one, build the `FiveTuple` (client -> VIP, proto 6), pick a backend,
connect with a timeout and retry on another backend -- and then becomes a `_Flow`: a `Splice`
moving bytes both ways, plus one lazily re-armed idle timer. No task lives on once the flow runs.

Counting (see `VipStats`): ``flows_total``/``active`` count flows that reached a backend, so
``flows_total == active + sum(closed.values())``; connections turned away before that are counted in
``refused`` by reason: max_connections, bad_proxy_header, proxy_header_timeout, no_backend (the
scheduler offered none), connect_failed (every backend tried failed), client_gone, no_resources
(no pipe: EMFILE), internal_error. Closed reasons: done, idle_timeout, client_reset, client_error,
backend_reset, backend_error, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from typing import Final, Literal

from sluice.config import Endpoint, Vip
from sluice.core.flow import IPPROTO_TCP, FiveTuple
from sluice.core.proxy_protocol import ProxyHeaderError, build_proxy_header, parse_proxy_header
from sluice.core.scheduler import Scheduler, build_scheduler
from sluice.dataplane.proxy.splice import SPLICE_AVAILABLE, Splice
from sluice.dataplane.stats import BackendStats, VipStats

log = logging.getLogger(__name__)

MAX_CONNECT_TRIES: Final = 3
"""Backends tried per client connection (fewer when the VIP has fewer backends)."""
PROXY_HEADER_MAX: Final = 536
"""Most bytes read from a client while looking for its PROXY header."""
ACCEPT_BATCH: Final = 64
"""Connections accepted per readable event of the listening socket."""
ACCEPT_PAUSE_S: Final = 0.1
"""Seconds accepting stops after an error such as EMFILE."""

_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_UNREACHABLE: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})

Address = tuple[str, int]


class _Refused(Exception):
    """The client connection is turned away; `reason` is its `refused` counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def connect_error_reason(exc: BaseException) -> str:
    """`connect_errors` key for a failed backend connect."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    return "other"


def _reset_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Flow:
    """One established client <-> backend connection pair."""

    def __init__(
        self,
        listener: TcpListener,
        client: socket.socket,
        backend_sock: socket.socket,
        backend: Endpoint,
        counted_by: Scheduler | None,
    ) -> None:
        self._listener = listener
        self.backend = backend
        self.counted_by = counted_by
        """The scheduler whose on_open saw this flow (on_close goes there too)."""
        self._bstats: BackendStats = listener.stats.backend(str(backend))
        self._loop = asyncio.get_running_loop()
        self._last_active = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self.splice = Splice(
            client,
            backend_sock,
            on_closed=self._on_closed,
            on_a_to_b=self._on_to_backend,
            on_b_to_a=self._on_from_backend,
            names=("client", "backend"),
            use_splice=listener.use_splice,
            buffer_size=listener.buffer_size,
        )

    def start(self) -> None:
        self._arm_idle()
        self.splice.start()

    def close(self, reason: str) -> None:
        self.splice.close(reason)

    def _on_to_backend(self, n: int) -> None:
        self._bstats.bytes_to_backend += n
        self._last_active = self._loop.time()

    def _on_from_backend(self, n: int) -> None:
        self._bstats.bytes_from_backend += n
        self._last_active = self._loop.time()

    def _arm_idle(self) -> None:
        deadline = self._last_active + self._listener.vip.idle_timeout_s
        self._idle = self._loop.call_at(deadline, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        # Activity only moves a timestamp; the timer notices it here and re-arms once.
        if self._loop.time() >= self._last_active + self._listener.vip.idle_timeout_s - 0.001:
            self.splice.close("idle_timeout")
        else:
            self._arm_idle()

    def _on_closed(self, reason: str) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._listener.flow_closed(self, reason)
        self._bstats.active -= 1


class TcpListener:
    """One TCP VIP: the listening socket, the handshakes in progress and the established flows.

    `use_splice` picks the byte mover (default: splice where the platform has it);
    `buffer_size` bounds the bytes held per direction (pipe or buffer size, default per mover).
    """

    def __init__(self, vip: Vip, *, use_splice: bool | None = None, buffer_size: int | None = None) -> None:
        self.stats = VipStats()
        self.vip = vip
        self.use_splice = SPLICE_AVAILABLE if use_splice is None else use_splice
        self.buffer_size = buffer_size
        self._scheduler = self._build_scheduler(vip)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._flows: set[_Flow] = set()
        self._resume: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ Listener interface

    async def start(self) -> None:
        family = socket.AF_INET6 if self.vip.listen.family_v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.vip.listen.host, self.vip.listen.port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_acceptable)

    def update(self, vip: Vip) -> None:
        old = self.vip
        self.vip = vip
        if (vip.scheduler, vip.backends, vip.maglev_table_size) == (
            old.scheduler,
            old.backends,
            old.maglev_table_size,
        ):
            return
        self._scheduler = self._build_scheduler(vip)
        for flow in self._flows:
            self._rehome(flow)

    async def stop_accepting(self) -> None:
        """Close the listening socket; established flows continue."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._resume is not None:
            self._resume.cancel()

    async def close(self) -> None:
        await self.stop_accepting()
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        for flow in list(self._flows):
            flow.close("shutdown")

    def close_backend_flows(self, backend: Endpoint, reason: str) -> int:
        """Close the established flows on `backend` (drain timeout, on_backend_down: close)."""
        doomed = [flow for flow in self._flows if flow.backend == backend]
        for flow in doomed:
            flow.close(reason)
        return len(doomed)

    # ------------------------------------------------------------------ observation

    @property
    def address(self) -> Address:
        """The bound (host, port): the port the kernel chose when the VIP says port 0."""
        assert self._sock is not None, "not started"
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def buffered(self) -> int:
        """Bytes held inside the LB now, all flows and directions."""
        return sum(flow.splice.buffered for flow in self._flows)

    @property
    def peak_buffered(self) -> int:
        """Highest bytes one direction of a live flow has held."""
        return max((flow.splice.peak_buffered for flow in self._flows), default=0)

    # ------------------------------------------------------------------ accepting

    def _build_scheduler(self, vip: Vip) -> Scheduler:
        for backend in vip.backends:
            self.stats.backend(str(backend.address))
        return build_scheduler(vip.scheduler, vip.backends, table_size=vip.maglev_table_size)

    def _on_acceptable(self) -> None:
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                client, _ = self._sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: back off instead of spinning
                log.warning("vip %s: accept failed: %s; pausing %.1fs", self.vip.name, exc, ACCEPT_PAUSE_S)
                self._loop.remove_reader(self._sock.fileno())
                self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if len(self._flows) + len(self._handshakes) >= self.vip.max_connections:
                _reset_close(client)
                self.stats.refused["max_connections"] += 1
                continue
            client.setblocking(False)
            task = self._loop.create_task(self._handshake(client))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_acceptable)

    async def _handshake(self, client: socket.socket) -> None:
        vip = self.vip
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer: Address = client.getpeername()[:2]
            local: Address = client.getsockname()[:2]
            source: Address | None = peer
            destination: Address | None = local
            early = b""  # client payload read together with its PROXY header
            if vip.accept_proxy_protocol:
                source, destination, early = await self._read_proxy_header(client)
            flow = FiveTuple.of(source or peer, local, IPPROTO_TCP)
            header = b""
            if vip.proxy_protocol != "off":
                version: Literal[1, 2] = 1 if vip.proxy_protocol == "v1" else 2
                header = build_proxy_header(version, source, destination)
            backend_sock, backend, counted_by = await self._connect(flow, header + early)
        except _Refused as exc:
            self.stats.refused[exc.reason] += 1
            _reset_close(client)
            return
        except OSError as exc:  # the client went away before its flow started
            log.debug("vip %s: client lost during the handshake: %r", vip.name, exc)
            self.stats.refused["client_gone"] += 1
            _reset_close(client)
            return
        except Exception:
            log.exception("vip %s: handshake failed", vip.name)
            self.stats.refused["internal_error"] += 1
            _reset_close(client)
            return
        except BaseException:
            _reset_close(client)
            raise
        self._start_flow(client, backend_sock, backend, counted_by, len(early))

    async def _read_proxy_header(self, client: socket.socket) -> tuple[Address | None, Address | None, bytes]:
        """The client's PROXY header: (source, destination, payload read past it)."""
        assert self._loop is not None
        data = b""
        try:
            async with asyncio.timeout(self.vip.timeouts.connect):
                while (parsed := parse_proxy_header(data, max_length=PROXY_HEADER_MAX)) is None:
                    chunk = await self._loop.sock_recv(client, PROXY_HEADER_MAX - len(data))
                    if not chunk:
                        raise _Refused("bad_proxy_header")
                    data += chunk
        except ProxyHeaderError as exc:
            log.debug("vip %s: bad PROXY header: %s", self.vip.name, exc)
            raise _Refused("bad_proxy_header") from None
        except TimeoutError:
            raise _Refused("proxy_header_timeout") from None
        except OSError:
            raise _Refused("bad_proxy_header") from None
        header, used = parsed
        return header.source, header.destination, data[used:]

    async def _connect(
        self, flow: FiveTuple, first_bytes: bytes
    ) -> tuple[socket.socket, Endpoint, Scheduler]:
        """Connect to the picked backend and send `first_bytes`; on failure try another one."""
        assert self._loop is not None
        scheduler = self._scheduler
        tried: list[Endpoint] = []
        for _ in range(min(MAX_CONNECT_TRIES, len(self.vip.backends))):
            backend = scheduler.pick(flow, exclude=tried)
            if backend is None:
                break
            tried.append(backend)
            stats = self.stats.backend(str(backend))
            stats.connect_attempts += 1
            scheduler.on_open(backend)
            sock = socket.socket(socket.AF_INET6 if backend.family_v6 else socket.AF_INET)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with asyncio.timeout(self.vip.timeouts.connect):
                    await self._loop.sock_connect(sock, (backend.host, backend.port))
                    if first_bytes:
                        await self._loop.sock_sendall(sock, first_bytes)
            except OSError as exc:  # TimeoutError included
                sock.close()
                scheduler.on_close(backend)
                stats.connect_errors[connect_error_reason(exc)] += 1
                log.debug("vip %s: connect to %s failed: %r", self.vip.name, backend, exc)
                continue
            except BaseException:
                sock.close()
                scheduler.on_close(backend)
                raise
            stats.connect_ok += 1
            return sock, backend, scheduler
        raise _Refused("connect_failed" if tried else "no_backend")

    # ------------------------------------------------------------------ flows

    def _start_flow(
        self,
        client: socket.socket,
        backend_sock: socket.socket,
        backend: Endpoint,
        counted_by: Scheduler,
        early: int,
    ) -> None:
        try:
            flow = _Flow(self, client, backend_sock, backend, counted_by)
        except OSError as exc:  # no pipe: EMFILE and friends
            log.warning("vip %s: cannot start a flow: %s", self.vip.name, exc)
            counted_by.on_close(backend)
            _reset_close(client)
            _reset_close(backend_sock)
            self.stats.refused["no_resources"] += 1
            return
        self._rehome(flow)
        bstats = self.stats.backend(str(backend))
        bstats.active += 1
        bstats.flows_total += 1
        bstats.bytes_to_backend += early
        self.stats.active += 1
        self.stats.flows_total += 1
        self._flows.add(flow)
        flow.start()

    def _rehome(self, flow: _Flow) -> None:
        """Count `flow` in the current scheduler (after a reload rebuilt it)."""
        if flow.counted_by is self._scheduler:
            return
        if flow.counted_by is not None:
            flow.counted_by.on_close(flow.backend)
        flow.counted_by = None
        if any(b.address == flow.backend for b in self.vip.backends):
            self._scheduler.on_open(flow.backend)
            flow.counted_by = self._scheduler

    def flow_closed(self, flow: _Flow, reason: str) -> None:
        """Called by a flow once its sockets are closed."""
        self._flows.discard(flow)
        if flow.counted_by is not None:
            flow.counted_by.on_close(flow.backend)
        self.stats.active -= 1
        self.stats.closed[reason] += 1
