"""The TCP full proxy: one `TcpListener` per VIP.

Each accepted client connection goes through a short handshake -- read the client's PROXY header
when the VIP expects one (a task: the only await), build the `FiveTuple` (client -> VIP, proto 6),
then a `_Connector` picks a backend, connects without blocking (``connect_ex`` + ``add_writer``,
callbacks, no task) with a timeout and retries on another backend -- and then becomes a `_Flow`: a
`Splice` moving bytes both ways, plus one lazily re-armed idle timer. Drained pipes of closed flows
are reused (`PipePool`).

Counting (see `VipStats`): ``flows_total``/``active`` count flows that reached a backend, so
``flows_total == active + sum(closed.values())``; connections turned away before that are counted in
``refused`` by reason: max_connections, bad_proxy_header, proxy_header_timeout, no_backend (the
scheduler offered none), connect_failed (every backend tried failed), client_gone, no_resources
(no socket or pipe: EMFILE), proxy_header (no PROXY header can carry the client address),
internal_error. Every reason is one of `sluice.core.reasons`. Closed reasons: done, idle_timeout, client_reset, client_error,
backend_reset, backend_error, shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Final, Literal

from sluice.config import Endpoint, Vip
from sluice.core.flow import IPPROTO_TCP, FiveTuple
from sluice.core.proxy_protocol import ProxyHeaderError, build_proxy_header, parse_proxy_header
from sluice.core.scheduler import Scheduler, build_scheduler, maglev_slots_changed
from sluice.dataplane.proxy.splice import (
    PIPE_POOL_SIZE,
    PIPE_SIZE,
    SPLICE_AVAILABLE,
    PipePool,
    Splice,
    reset_close,
)
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
_UNREACHABLE: Final = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})

Address = tuple[str, int]
_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


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


class _BackendInfo:
    """What a connect to one backend needs, computed once: family, socket address, counters."""

    __slots__ = ("addr", "family", "stats")

    def __init__(self, backend: Endpoint, stats: BackendStats) -> None:
        self.family = socket.AF_INET6 if backend.family_v6 else socket.AF_INET
        self.addr: Address = (backend.host, backend.port)
        self.stats = stats


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
        self.bstats: BackendStats = listener.backend_info(backend).stats
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
            pipes=listener.pipes,
        )

    def start(self) -> None:
        self._arm_idle()
        self.splice.start()

    def close(self, reason: str) -> None:
        self.splice.close(reason)

    def _on_to_backend(self, n: int) -> None:
        self.bstats.bytes_to_backend += n
        self._last_active = self._loop.time()

    def _on_from_backend(self, n: int) -> None:
        self.bstats.bytes_from_backend += n
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
        self.bstats.active -= 1


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
        self.pipes = PipePool(PIPE_POOL_SIZE, buffer_size or PIPE_SIZE)
        """Drained pipes of closed flows, for the next ones (splice mover only)."""
        self._backend_info: dict[Endpoint, _BackendInfo] = {}
        self._scheduler = self._build_scheduler(vip)
        self._sock: socket.socket | None = None
        self._local: Address | None = None
        """The listen address when it is concrete (then no getsockname per connection)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        """Clients whose PROXY header is being read."""
        self._connecting: set[_Connector] = set()
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
        host, port = sock.getsockname()[:2]
        self._local = None if host in _WILDCARDS else (host, port)
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
        old_scheduler, self._scheduler = self._scheduler, self._build_scheduler(vip)
        self.stats.table_slots_changed += maglev_slots_changed(old_scheduler, self._scheduler)
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
        for connector in list(self._connecting):
            connector.cancel()
        for flow in list(self._flows):
            flow.close("shutdown")
        self.pipes.close()

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
            self.backend_info(backend.address)
        return build_scheduler(vip.scheduler, vip.weighted_backends, table_size=vip.maglev_table_size)

    def backend_info(self, backend: Endpoint) -> _BackendInfo:
        """`backend`'s socket address and counters (made once per backend ever seen)."""
        info = self._backend_info.get(backend)
        if info is None:
            info = self._backend_info[backend] = _BackendInfo(backend, self.stats.backend(str(backend)))
        return info

    def _on_acceptable(self) -> None:
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                client, peer = self._sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: back off instead of spinning
                log.warning("vip %s: accept failed: %s; pausing %.1fs", self.vip.name, exc, ACCEPT_PAUSE_S)
                self._loop.remove_reader(self._sock.fileno())
                self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if len(self._flows) + len(self._connecting) + len(self._handshakes) >= self.vip.max_connections:
                reset_close(client)
                self.stats.refused["max_connections"] += 1
                continue
            self._on_accepted(client, peer[:2])

    def _on_accepted(self, client: socket.socket, peer: Address) -> None:
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local: Address = self._local or client.getsockname()[:2]
        except OSError as exc:  # the client went away already
            self._refuse_lost(client, exc)
            return
        if self.vip.accept_proxy_protocol:
            assert self._loop is not None
            task = self._loop.create_task(self._handshake(client, peer, local))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
            return
        self._connect_flow(client, FiveTuple.of(peer, local, IPPROTO_TCP), peer, local, b"")

    def _connect_flow(
        self,
        client: socket.socket,
        flow: FiveTuple,
        source: Address | None,
        destination: Address | None,
        early: bytes,
    ) -> None:
        """Start connecting `client` to a backend: `flow` picks it; `source` and `destination` go in
        the PROXY header sent first, then `early` (client bytes read past its own PROXY header)."""
        vip = self.vip
        try:
            header = b""
            if vip.proxy_protocol != "off":
                version: Literal[1, 2] = 1 if vip.proxy_protocol == "v1" else 2
                header = build_proxy_header(version, source, destination)
        except ValueError as exc:  # e.g. a link-local client with a scope id
            log.debug("vip %s: cannot build the PROXY header for the backend: %s", vip.name, exc)
            self.refuse(client, "proxy_header")
            return
        except Exception:
            log.exception("vip %s: building the PROXY header for the backend failed", vip.name)
            self.refuse(client, "internal_error")
            return
        connector = _Connector(self, client, flow, header + early, len(early))
        self._connecting.add(connector)
        connector.start()

    def refuse(self, client: socket.socket, reason: str) -> None:
        """Turn `client` away (RST), counted in ``refused[reason]``."""
        self.stats.refused[reason] += 1
        reset_close(client)

    def _refuse_lost(self, client: socket.socket, exc: OSError) -> None:
        log.debug("vip %s: client lost before a backend was chosen: %r", self.vip.name, exc)
        self.refuse(client, "client_gone")

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_acceptable)

    async def _handshake(self, client: socket.socket, peer: Address, local: Address) -> None:
        """Read the client's PROXY header, then hand the client to a `_Connector`."""
        try:
            source, destination, early = await self._read_proxy_header(client)
        except _Refused as exc:
            self.refuse(client, exc.reason)
            return
        except Exception:
            log.exception("vip %s: reading the client's PROXY header failed", self.vip.name)
            self.refuse(client, "internal_error")
            return
        except BaseException:
            reset_close(client)
            raise
        flow = FiveTuple.of(source or peer, local, IPPROTO_TCP)  # client -> VIP, as the header says
        self._connect_flow(client, flow, source, destination, early)

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

    # ------------------------------------------------------------------ flows

    def start_flow(
        self,
        connector: _Connector,
        client: socket.socket,
        backend_sock: socket.socket,
        backend: Endpoint,
        counted_by: Scheduler,
        early: int,
    ) -> None:
        self._connecting.discard(connector)
        try:
            flow = _Flow(self, client, backend_sock, backend, counted_by)
        except OSError as exc:  # no pipe: EMFILE and friends
            log.warning("vip %s: cannot start a flow: %s", self.vip.name, exc)
            counted_by.on_close(backend)
            reset_close(client)
            reset_close(backend_sock)
            self.stats.refused["no_resources"] += 1
            return
        self._rehome(flow)
        bstats = flow.bstats
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


class _Connector:
    """One client on its way to a backend: pick, non-blocking connect, send the first bytes (PROXY
    header, early payload), and on failure or timeout try another backend; then `start_flow`.

    Driven by ``add_writer`` callbacks and one timer per attempt: no task, no future.
    """

    def __init__(
        self, listener: TcpListener, client: socket.socket, flow: FiveTuple, first_bytes: bytes, early: int
    ) -> None:
        assert listener._loop is not None
        self._listener = listener
        self._loop = listener._loop
        self._client = client
        self._flow = flow
        self._first = first_bytes
        self._early = early
        self._scheduler = listener._scheduler
        self._tried: list[Endpoint] = []
        self._sock: socket.socket | None = None
        self._backend: Endpoint | None = None
        self._info: _BackendInfo | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        try:
            self._next()
        except Exception:
            log.exception("vip %s: connecting to a backend failed", self._listener.vip.name)
            self._give_up("internal_error")

    def cancel(self) -> None:
        """Abandon the attempt (the listener is closing): close both sockets, count nothing."""
        self._drop_backend()
        self._listener._connecting.discard(self)
        reset_close(self._client)

    def _next(self) -> None:
        """Connect to the next backend the scheduler offers, or refuse the client."""
        listener = self._listener
        tries = min(MAX_CONNECT_TRIES, len(listener.vip.backends))
        while len(self._tried) < tries:
            backend = self._scheduler.pick(self._flow, exclude=self._tried)
            if backend is None:
                break
            self._tried.append(backend)
            info = listener.backend_info(backend)
            info.stats.connect_attempts += 1
            try:
                sock = socket.socket(info.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError as exc:  # EMFILE and friends
                log.warning("vip %s: cannot open a backend socket: %s", listener.vip.name, exc)
                self._give_up("no_resources")
                return
            self._scheduler.on_open(backend)
            self._sock, self._backend, self._info = sock, backend, info
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(info.addr)
            except OSError as exc:
                self._failed(exc)
                continue
            if err == 0:
                self._on_writable()
                return
            if err != errno.EINPROGRESS:
                self._failed(OSError(err, os.strerror(err)))
                continue
            self._wait()
            return
        self._give_up("connect_failed" if self._tried else "no_backend")

    def _on_writable(self) -> None:
        sock = self._sock
        assert sock is not None and self._backend is not None and self._info is not None
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if self._first:
                try:
                    sent = sock.send(self._first)
                except BlockingIOError:
                    sent = 0
                self._first = self._first[sent:]
                if self._first:  # the rest when the socket takes it, within the same timeout
                    self._wait()
                    return
        except OSError as exc:
            self._retry(exc)
            return
        self._stop_waiting()
        self._info.stats.connect_ok += 1
        self._sock = None
        self._listener.start_flow(self, self._client, sock, self._backend, self._scheduler, self._early)

    def _on_timeout(self) -> None:
        self._stop_waiting()
        self._retry(TimeoutError("connect timed out"))

    def _retry(self, exc: OSError) -> None:
        self._failed(exc)
        try:
            self._next()
        except Exception:
            log.exception("vip %s: connecting to a backend failed", self._listener.vip.name)
            self._give_up("internal_error")

    def _failed(self, exc: OSError) -> None:
        """The current attempt failed with `exc`: count it and release its socket."""
        assert self._info is not None
        self._info.stats.connect_errors[connect_error_reason(exc)] += 1
        log.debug("vip %s: connect to %s failed: %r", self._listener.vip.name, self._backend, exc)
        self._drop_backend()

    def _wait(self) -> None:
        """Call `_on_writable` when the socket is writable, `_on_timeout` after the connect timeout
        (one timeout for the connect and the first bytes together)."""
        if self._timer is None:
            assert self._sock is not None
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
            self._timer = self._loop.call_later(self._listener.vip.timeouts.connect, self._on_timeout)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            assert self._sock is not None
            self._loop.remove_writer(self._sock.fileno())

    def _drop_backend(self) -> None:
        self._stop_waiting()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            assert self._backend is not None
            self._scheduler.on_close(self._backend)

    def _give_up(self, reason: str) -> None:
        self._drop_backend()
        self._listener._connecting.discard(self)
        self._listener.refuse(self._client, reason)
