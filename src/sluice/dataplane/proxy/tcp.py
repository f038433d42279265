"""The TCP full proxy: one `TcpListener` per VIP.

Each accepted client connection is one `Connection` whose `phase` (`sluice.core.connect.Phase`)
says where it is: read the client's PROXY header when the VIP expects one (a task: the only await),
build the `FiveTuple` (client -> VIP, proto 6), then a `Connector` (``connector.py``) connects to
the backends that `sluice.core.connect.ConnectPlan` offers, without blocking, with a timeout and
bounded retries -- and then the connection is established: a `Splice` moving bytes both ways, plus
one lazily re-armed idle timer. A direction holds a pipe only while bytes are in it, from the
listener's `PipePool`: an idle connection holds its two sockets, nothing more.

Counting (see `VipStats`): ``flows_total``/``active`` count connections that reached a backend, so
``flows_total == active + sum(closed.values())``; connections turned away before that are counted in
``refused`` by reason: max_connections, bad_proxy_header, proxy_header_timeout, no_backend (the
scheduler offered none), connect_failed (every backend tried failed), client_gone, no_resources
(no socket or pipe: EMFILE), proxy_header (no PROXY header can carry the client address),
internal_error, accept_failed (accept(2) itself failed, EMFILE & co: counted per failed call, the
connection waits in the backlog and may still be served; the log line about it is rate-limited),
proxy_not_allowed (a PROXY header is expected and the peer is not in ``accept_proxy_protocol.from``:
reset at once). Closed reasons: done, idle_timeout, client_reset, client_error, backend_reset,
backend_error, shutdown. Every reason is one of `sluice.core.reasons`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final, Literal

from sluice.config import Endpoint, Vip
from sluice.core.connect import MAX_CONNECT_TRIES, ConnectPlan, Phase
from sluice.core.flow import IPPROTO_TCP, FiveTuple, client_flow, parse_address
from sluice.core.proxy_protocol import (
    DEFAULT_MAX_LENGTH,
    ProxyHeaderError,
    build_proxy_header,
    parse_proxy_header,
)
from sluice.core.scheduler import Scheduler, build_scheduler, maglev_slots_changed
from sluice.dataplane.flowlog import FlowLog, close_flow_log, open_flow_log, reopen_flow_log
from sluice.dataplane.limits import EveryFewSeconds
from sluice.dataplane.proxy.connection import Connection
from sluice.dataplane.proxy.connector import BackendInfo, Connector
from sluice.dataplane.proxy.records import tcp_record
from sluice.dataplane.proxy.splice import (
    PIPE_POOL_SIZE,
    PIPE_SIZE,
    SPLICE_AVAILABLE,
    Lingerer,
    PipePool,
    reset_close,
)
from sluice.dataplane.stats import VipStats

__all__ = [
    "ACCEPT_BATCH",
    "ACCEPT_LOG_INTERVAL_S",
    "ACCEPT_PAUSE_S",
    "MAX_CONNECT_TRIES",
    "PROXY_HEADER_MAX",
    "TcpListener",
]

log = logging.getLogger(__name__)

PROXY_HEADER_MAX: Final = DEFAULT_MAX_LENGTH
"""Most bytes read from a client while looking for its PROXY header (the parser's own limit)."""
ACCEPT_BATCH: Final = 64
"""Connections accepted per readable event of the listening socket."""
ACCEPT_PAUSE_S: Final = 0.1
"""Seconds accepting stops after an error such as EMFILE."""
ACCEPT_LOG_INTERVAL_S: Final = 10.0
"""Seconds between two log lines about failing accepts (each says how many failed since the last)."""

Address = tuple[str, int]
_WILDCARDS: Final = frozenset({"0.0.0.0", "::"})


def _tcp_flow(client: Address, vip: Address) -> FiveTuple:
    """The FiveTuple a connection from `client` to the VIP address `vip` is balanced by."""
    return client_flow(IPPROTO_TCP, parse_address(client[0]), client[1], parse_address(vip[0]), vip[1])


class _Refused(Exception):
    """The client connection is turned away; `reason` is its `refused` counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TcpListener:
    """One TCP VIP: the listening socket and its client connections, each in its phase.

    `use_splice` picks the byte mover (default: splice where the platform has it);
    `buffer_size` bounds the bytes held per direction (pipe or buffer size, default per mover).
    """

    def __init__(self, vip: Vip, *, use_splice: bool | None = None, buffer_size: int | None = None) -> None:
        self.stats = VipStats()
        self.vip = vip
        self.use_splice = SPLICE_AVAILABLE if use_splice is None else use_splice
        self.buffer_size = buffer_size
        self.pipes = PipePool(PIPE_POOL_SIZE, buffer_size or PIPE_SIZE)
        """Drained pipes, for the next direction with bytes to move (splice mover only)."""
        self._backend_info: dict[Endpoint, BackendInfo] = {}
        self._scheduler = self._build_scheduler(vip)
        self._sock: socket.socket | None = None
        self._local: Address | None = None
        """The listen address when it is concrete (then no getsockname per connection)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[Connection] = set()
        """Every client connection from accept to close, whatever its phase."""
        self._resume: asyncio.TimerHandle | None = None
        self.lingerer: Lingerer | None = None
        """Sockets of reset flows waiting for their bytes to leave (made at start)."""
        self._accept_log = EveryFewSeconds(ACCEPT_LOG_INTERVAL_S)
        self.flow_log: FlowLog | None = None

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
            self.flow_log = open_flow_log(self.vip, self.stats)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._local = None if host in _WILDCARDS else (host, port)
        self._loop = asyncio.get_running_loop()
        self.lingerer = Lingerer(self._loop)
        self._loop.add_reader(sock.fileno(), self._on_acceptable)

    def update(self, vip: Vip) -> None:
        old = self.vip
        self.flow_log = reopen_flow_log(self.flow_log, vip, self.stats)
        self.vip = vip
        if (vip.scheduler, vip.backends, vip.maglev_table_size, vip.hash_key) == (
            old.scheduler,
            old.backends,
            old.maglev_table_size,
            old.hash_key,
        ):
            return
        old_scheduler, self._scheduler = self._scheduler, self._build_scheduler(vip)
        self.stats.table_slots_changed += maglev_slots_changed(old_scheduler, self._scheduler)
        for conn in self._established():
            self._rehome(conn)

    async def stop_accepting(self) -> None:
        """Close the listening socket; established connections continue."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._resume is not None:
            self._resume.cancel()

    async def close(self) -> None:
        await self.stop_accepting()
        tasks = [c.task for c in self._connections if c.phase is Phase.PROXY_HEADER and c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._connections):
            if conn.phase is Phase.CONNECTING and conn.connector is not None:
                conn.connector.cancel()
                self._drop(conn)
            elif conn.phase is not Phase.ESTABLISHED:  # a header task cancelled before it ran
                self._drop(conn)
        for conn in list(self._established()):
            conn.close("shutdown")
        if self.lingerer is not None:
            self.lingerer.close()
        self.pipes.close()
        close_flow_log(self.flow_log)

    def close_backend_flows(self, backend: Endpoint, reason: str) -> int:
        """Close the established connections on `backend` (drain timeout, on_backend_down: close)."""
        doomed = [conn for conn in self._established() if conn.backend == backend]
        for conn in doomed:
            conn.close(reason)
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
        """Bytes held inside the LB now, all connections and directions."""
        return sum(conn.splice.buffered for conn in self._established() if conn.splice is not None)

    @property
    def peak_buffered(self) -> int:
        """Highest bytes one direction of a live connection has held."""
        return max(
            (conn.splice.peak_buffered for conn in self._established() if conn.splice is not None), default=0
        )

    def backend_info(self, backend: Endpoint) -> BackendInfo:
        """`backend`'s socket address and counters (made once per backend ever seen)."""
        info = self._backend_info.get(backend)
        if info is None:
            info = self._backend_info[backend] = BackendInfo(backend, self.stats.backend(str(backend)))
        return info

    def _established(self) -> list[Connection]:
        return [conn for conn in self._connections if conn.phase is Phase.ESTABLISHED]

    # ------------------------------------------------------------------ accepting

    def _build_scheduler(self, vip: Vip) -> Scheduler:
        for backend in vip.backends:
            self.backend_info(backend.address)
        return build_scheduler(
            vip.scheduler, vip.weighted_backends, table_size=vip.maglev_table_size, hash_key=vip.hash_key
        )

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
                self.stats.refused["accept_failed"] += 1
                if self._accept_log.due(self._loop.time()):
                    log.warning(
                        "vip %s: accept failed: %s; pausing %.1fs each time (%d failed since the last line)",
                        self.vip.name,
                        exc,
                        ACCEPT_PAUSE_S,
                        self._accept_log.since_last,
                    )
                    self._accept_log.logged()
                self._loop.remove_reader(self._sock.fileno())
                self._resume = self._loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if len(self._connections) >= self.vip.max_connections:
                reset_close(client)
                self.stats.refused["max_connections"] += 1
                continue
            conn = Connection(self, client)
            self._connections.add(conn)
            self._on_accepted(conn, peer[:2])

    def _on_accepted(self, conn: Connection, peer: Address) -> None:
        client = conn.client
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local: Address = self._local or client.getsockname()[:2]
        except OSError as exc:  # the client went away already
            log.debug("vip %s: client lost before a backend was chosen: %r", self.vip.name, exc)
            self._refuse(conn, "client_gone")
            return
        conn.peer, conn.local = peer, local
        accept = self.vip.accept_proxy_protocol
        if accept is not None:
            if not accept.allows(peer[0]):  # only the listed peers may say who the client is
                self._refuse(conn, "proxy_not_allowed")
                return
            assert self._loop is not None
            conn.enter(Phase.PROXY_HEADER)
            conn.task = self._loop.create_task(self._read_header_then_connect(conn, peer, local))
            return
        self._connect(conn, _tcp_flow(peer, local), peer, local, b"")

    def _connect(
        self,
        conn: Connection,
        flow: FiveTuple,
        source: Address | None,
        destination: Address | None,
        early: bytes,
    ) -> None:
        """Start connecting `conn` to a backend: `flow` picks it; `source` and `destination` go in
        the PROXY header sent first, then `early` (client bytes read past its own PROXY header)."""
        vip = self.vip
        try:
            header = b""
            if vip.proxy_protocol != "off":
                version: Literal[1, 2] = 1 if vip.proxy_protocol == "v1" else 2
                header = build_proxy_header(version, source, destination)
        except ValueError as exc:  # e.g. a link-local client with a scope id
            log.debug("vip %s: cannot build the PROXY header for the backend: %s", vip.name, exc)
            self._refuse(conn, "proxy_header")
            return
        except Exception:
            log.exception("vip %s: building the PROXY header for the backend failed", vip.name)
            self._refuse(conn, "internal_error")
            return
        assert self._loop is not None
        plan = ConnectPlan(self._scheduler, flow, len(vip.backends))
        conn.enter(Phase.CONNECTING)
        conn.connector = Connector(
            loop=self._loop,
            plan=plan,
            first_bytes=header + early,
            timeout_s=vip.timeouts.connect,
            backend_info=self.backend_info,
            on_connected=lambda sock, backend: self._on_connected(
                conn, sock, backend, plan.scheduler, len(early), len(plan.tried) - 1
            ),
            on_gave_up=lambda reason: self._refuse(conn, reason),
            vip_name=vip.name,
            vip_stats=self.stats,
        )
        conn.connector.start()

    def _refuse(self, conn: Connection, reason: str) -> None:
        """Turn `conn` away (RST), counted in ``refused[reason]``."""
        self.stats.refused[reason] += 1
        self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        """Forget a connection that never reached a backend and reset its client."""
        self._connections.discard(conn)
        reset_close(conn.client)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_acceptable)

    async def _read_header_then_connect(self, conn: Connection, peer: Address, local: Address) -> None:
        """Read the client's PROXY header, then connect `conn` to a backend."""
        try:
            source, destination, early = await self._read_proxy_header(conn.client)
        except _Refused as exc:
            self._refuse(conn, exc.reason)
            return
        except Exception:
            log.exception("vip %s: reading the client's PROXY header failed", self.vip.name)
            self._refuse(conn, "internal_error")
            return
        except BaseException:
            self._drop(conn)
            raise
        flow = _tcp_flow(source or peer, local)  # client -> VIP, as the header says
        conn.peer = source or peer
        self._connect(conn, flow, source, destination, early)

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

    # ------------------------------------------------------------------ established connections

    def _on_connected(
        self,
        conn: Connection,
        backend_sock: socket.socket,
        backend: Endpoint,
        counted_by: Scheduler,
        early: int,
        retries: int = 0,
    ) -> None:
        try:
            bstats = conn.establish(backend_sock, backend, counted_by)
        except OSError as exc:  # no pipe: EMFILE and friends
            log.warning("vip %s: cannot join a client to its backend: %s", self.vip.name, exc)
            counted_by.on_close(backend)
            reset_close(backend_sock)
            self._refuse(conn, "no_resources")
            return
        self._rehome(conn)
        bstats.active += 1
        bstats.flows_total += 1
        bstats.bytes_to_backend += early
        conn.bytes_to_backend, conn.retries = early, retries
        self.stats.active += 1
        self.stats.flows_total += 1
        conn.start()

    def _rehome(self, conn: Connection) -> None:
        """Count `conn` in the current scheduler (after a reload rebuilt it)."""
        if conn.counted_by is self._scheduler:
            return
        assert conn.backend is not None
        if conn.counted_by is not None:
            conn.counted_by.on_close(conn.backend)
        conn.counted_by = None
        if any(b.address == conn.backend for b in self.vip.backends):
            self._scheduler.on_open(conn.backend)
            conn.counted_by = self._scheduler

    def connection_closed(self, conn: Connection, reason: str) -> None:
        """Called by an established connection once its sockets are closed."""
        self._connections.discard(conn)
        if conn.counted_by is not None:
            assert conn.backend is not None
            conn.counted_by.on_close(conn.backend)
        self.stats.active -= 1
        self.stats.closed[reason] += 1
        if self.flow_log is not None:
            self.flow_log.log(tcp_record(self.vip.name, conn, reason))
