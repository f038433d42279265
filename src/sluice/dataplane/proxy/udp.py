"""The UDP side of the proxy data plane: one `UdpListener` per ``protocol: udp`` VIP.

A datagram from a new client address (ip, port) opens a session: the scheduler picks a backend from
the 5-tuple and the listener opens one *connected* upstream socket to it (the NAT entry). Later
datagrams of that client go out on that socket; the backend's replies come in on it and are sent to
the client from the listen socket, so clients always see the VIP's address and port. Sessions live
in `sluice.core.sessions.SessionTable` (bounded, LRU, idle timeout, ``udp.responses``).

Choices, each the simplest design found correct:

- **I/O.** Raw non-blocking sockets driven by ``loop.add_reader`` (uvloop in production, any loop in
  tests). Per readiness event a socket is read in a loop until EAGAIN, at most `READ_BATCH`
  datagrams: that loop is the batch (Python has no ``recvmmsg``). One preallocated 64 KiB buffer is
  reused for every datagram (``recv*_into`` + memoryview slices): no bytes object per datagram.
  Upstream sockets are created synchronously (``socket`` + ``connect`` cost no round trip for UDP),
  so the first datagram of a session is forwarded in the same callback that read it.
- **No silent truncation.** The 65,536-byte buffer exceeds any UDP payload, and a read the kernel
  marks ``MSG_TRUNC`` anyway is dropped and counted (``dropped["truncated"]``).
- **UDP_GRO.** Datagrams the kernel coalesced into one buffer are split back (`udp_sockets`).
- **Sends never queue.** UDP is lossy; a send that would block is dropped and counted
  (``dropped["send_buffer_full"]``), so no buffer grows without bound.
- **Reads never serve stale datagrams.** A client datagram that waited in the listen socket's queue
  longer than ``udp.max_queue_delay`` (its kernel receive timestamp, from the same ``recvmsg``) is
  dropped and counted (``dropped["queue_delay"]``): an overloaded VIP answers late by at most that
  bound. The listen socket's buffer is ``udp.receive_buffer``, by default sized from the bound.
- **Empty datagrams are forwarded** both ways (keepalives) and counted; payloads are never parsed.
  A datagram too large once the PROXY header is added (EMSGSIZE) is ``dropped["too_large"]``.
- **Backend gone.** An ICMP port unreachable surfaces on the connected socket as ECONNREFUSED (on
  recv, or on the next send); the session is marked and its next datagram is re-balanced
  (``stats.rebalanced``) as `sluice.core.udp_session` decides. A send that fails that way is
  retried once on the new backend, so that datagram is not lost. Sessions whose backend `update`
  removed are re-balanced the same way on their next datagram; the others keep their backend.
- **udp.hash source_ip.** The scheduler sees both ports zeroed (RTP + RTCP of one client IP on one
  backend); sessions (and their upstream sockets) are still per client ip:port.
- **udp.per_packet.** Sessions stay (one per client ip:port, so replies find their client), but the
  session's upstream socket is *unconnected* and every datagram picks its own backend (its flow's
  source port is a listener-wide datagram counter). Replies from sources that are not current
  backends are dropped (``dropped["unknown_source"]``); each datagram is one flow of its backend.
  Unconnected sockets get no ICMP errors (a dead backend is skipped once health checks remove it)
  and speak one address family (per_packet needs every backend in the same family).
- **PROXY protocol v2** (``proxy_protocol: v2``): a UDP4/UDP6 header (client -> VIP) is built once
  per session and sent in front of every datagram with ``sendmsg`` (scatter-gather, no copy). v1
  cannot carry UDP and is refused.
- **QUIC** (``quic``): a session opens on the backend its first datagram's CID names (`sluice.core.quic`).
- Settings that shape a session (hash, per_packet, proxy_protocol, quic) apply to sessions opened
  after an `update`; limits (max_sessions, idle timeout, responses) apply at once.
- **Port quarantine.** A closed session's upstream socket is held `PORT_QUARANTINE_S` before close
  (`udp_sockets.PortQuarantine`): a late reply cannot reach a new session on the same port.

The flows the scheduler sees and every choice of a backend come from `sluice.core.udp_session`;
this module does the I/O and the counting. Limits: every session holds one file descriptor, so
RLIMIT_NOFILE must exceed ``udp.max_sessions`` (a failed ``socket()`` refuses the new session and
counts ``refused["no_resources"]``, as TCP does). The VIP address in the 5-tuple and the PROXY
header is the listen address, so listen on a concrete address, not a wildcard.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from sluice.config import Endpoint, Vip
from sluice.core.flow import parse_address
from sluice.core.proxy_protocol import build_proxy_header
from sluice.core.scheduler import Scheduler, build_scheduler, maglev_slots_changed
from sluice.core.sessions import EVICTED, Session, SessionClosed, SessionTable
from sluice.core.udp_session import (
    EndSession,
    Refuse,
    open_route,
    per_packet_flow,
    rebalance,
    session_flow,
)
from sluice.dataplane.flowlog import FlowLog, close_flow_log, open_flow_log, reopen_flow_log
from sluice.dataplane.listener import check_udp_vip
from sluice.dataplane.proxy.records import udp_record
from sluice.dataplane.proxy.udp_sockets import (
    LISTEN_CMSG_SPACE,
    Address,
    BackendRef,
    PortQuarantine,
    Upstream,
    drop_reason,
    listen_socket,
    read_ancillary,
    upstream_socket,
)
from sluice.dataplane.stats import VipStats

log = logging.getLogger(__name__)

BUFFER_SIZE: Final = 65536  # bytes; > any UDP payload and >= a GRO-coalesced read
READ_BATCH: Final = 64  # datagrams read per readiness event, then other sockets get a turn
PORT_QUARANTINE_S: Final = 2.0  # seconds a closed session's upstream socket is held before close
PORT_QUARANTINE_MAX: Final = 1024  # sockets held at most; beyond it the oldest are closed


class UdpListener:
    """One UDP VIP: the listen socket, the session table and one upstream socket per session."""

    def __init__(self, vip: Vip, *, port_quarantine_s: float = PORT_QUARANTINE_S) -> None:
        check_udp_vip(vip, "UdpListener")
        self._vip = vip
        self.stats = VipStats()
        self.gro = False
        """True when the listen socket reads GRO-coalesced datagrams."""
        self._table: SessionTable[Address, Upstream] = SessionTable(
            vip.udp.max_sessions, vip.idle_timeout_s, vip.udp.responses
        )
        self._backends: dict[Endpoint, BackendRef] = {}
        self._by_addr: dict[tuple[str, int], BackendRef] = {}
        self._scheduler: Scheduler = self._build_scheduler(vip)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._vip_ip: IPv4Address | IPv6Address = vip.listen.ip
        self._vip_port = vip.listen.port
        self._seq = 0
        self._accepting = True
        self._quarantine_s = port_quarantine_s
        self._quarantine: PortQuarantine | None = None
        self.flow_log: FlowLog | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the listen address with the kernel's port when it asked for 0."""
        return (str(self._vip_ip), self._vip_port)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        listen, udp = self._vip.listen, self._vip.udp
        sock, self.gro = listen_socket(listen.host, listen.port, listen.family_v6, udp.listen_receive_buffer)
        try:
            self._vip_port = sock.getsockname()[1]
            self._loop.add_reader(sock, self._on_client_readable)
            self.flow_log = open_flow_log(self._vip, self.stats)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._quarantine = PortQuarantine(self._loop, self._quarantine_s, PORT_QUARANTINE_MAX)

    def update(self, vip: Vip) -> None:
        if (vip.listen, vip.protocol) != (self._vip.listen, self._vip.protocol):
            raise ValueError("update() cannot move a listener: stop it and start a new one")
        check_udp_vip(vip, "UdpListener")
        self.flow_log = reopen_flow_log(self.flow_log, vip, self.stats)
        self._vip = vip
        self._release_all(self._table.configure(vip.udp.max_sessions, vip.idle_timeout_s, vip.udp.responses))
        old_scheduler, self._scheduler = self._scheduler, self._build_scheduler(vip)
        self.stats.table_slots_changed += maglev_slots_changed(old_scheduler, self._scheduler)
        for session in self._table:
            up = session.value
            if up.backend is None:
                continue
            if up.backend.endpoint in self._backends:
                self._scheduler.on_open(up.backend.endpoint)  # the new scheduler's counts
            else:
                up.route.backend_removed()
        self._rearm_timer()

    async def stop_accepting(self) -> None:
        """Open no new sessions; datagrams of existing sessions still flow (UDP keeps its socket)."""
        self._accepting = False

    def close_backend_flows(self, backend: Endpoint, reason: str) -> int:
        """End the sessions on `backend`; their next datagram opens a new session elsewhere."""
        keys = [
            s.key for s in self._table if s.value.backend is not None and s.value.backend.endpoint == backend
        ]
        for key in keys:
            self._end(key, reason)
        return len(keys)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        self._release_all(self._table.clear("shutdown"))
        if self._quarantine is not None:
            self._quarantine.close()
        close_flow_log(self.flow_log)

    @property
    def quarantined_fds(self) -> frozenset[int]:
        """File descriptors of closed sessions' upstream sockets still held (see the docstring)."""
        return frozenset() if self._quarantine is None else self._quarantine.fds

    def _build_scheduler(self, vip: Vip) -> Scheduler:
        old = self._backends
        self._backends = {
            b.address: old.get(b.address)
            or BackendRef(b.address, (b.address.host, b.address.port), self.stats.backend(str(b.address)))
            for b in vip.backends
        }
        self._by_addr = {ref.addr: ref for ref in self._backends.values()}
        self._quic = vip.quic_routing
        return build_scheduler(
            vip.scheduler, vip.weighted_backends, table_size=vip.maglev_table_size, hash_key=vip.hash_key
        )

    # ------------------------------------------------------------------------- client -> backend

    def _on_client_readable(self) -> None:
        assert self._loop is not None and self._sock is not None
        sock, view, buffers = self._sock, self._view, [self._buf]
        now = self._loop.time()
        max_delay_ns = round(self._vip.udp.max_queue_delay * 1e9)
        for _ in range(READ_BATCH):
            try:
                n, ancdata, flags, addr = sock.recvmsg_into(buffers, LISTEN_CMSG_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:
                self.stats.dropped[drop_reason(exc)] += 1
                return
            if flags & socket.MSG_TRUNC:
                self.stats.dropped["truncated"] += 1
                continue
            segment, received_ns = read_ancillary(ancdata)
            if received_ns and time.time_ns() - received_ns > max_delay_ns:  # the clock: vDSO, no syscall
                self.stats.dropped["queue_delay"] += -(-n // segment) if 0 < segment < n else 1
                continue
            if 0 < segment < n:
                for start in range(0, n, segment):
                    self._on_client_datagram(view[start : min(start + segment, n)], addr, now)
            else:
                self._on_client_datagram(view[:n], addr, now)
            if self._sock is None:  # closed by a callback
                return

    def _on_client_datagram(self, data: memoryview, addr: Address, now: float) -> None:
        session = self._table.request(addr, now, len(data))
        if session is None:
            session = self._open_session(addr, now, data)
            if session is None:
                return
        up = session.value
        if up.backend is None:
            self._send_per_packet(up, data)
            return
        if up.route.stale:
            rebalanced = self._rebalance(session)
            if rebalanced is None:
                self.stats.dropped["no_backend"] += 1
                return
            up = rebalanced
        if not self._send(up, data):  # refused: an ICMP port unreachable came since the last send
            retry = self._rebalance(session)
            if retry is None or not self._send(retry, data):
                self.stats.dropped["backend_refused"] += 1

    def _send(self, up: Upstream, data: memoryview) -> bool:
        """Send on a session's connected socket; False when the backend refused (ECONNREFUSED)."""
        backend = up.backend
        assert backend is not None
        try:
            if up.header:
                up.sock.sendmsg((up.header, data))
            else:
                up.sock.send(data)
        except ConnectionRefusedError:
            self._on_refused(up)
            return False
        except OSError as exc:
            self.stats.dropped[drop_reason(exc)] += 1
            return True
        backend.stats.datagrams_to_backend += 1
        backend.stats.bytes_to_backend += len(data)
        return True

    def _send_per_packet(self, up: Upstream, data: memoryview) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        flow = per_packet_flow(up.route.flow.src_ip, self._vip_ip, self._vip_port, self._seq)
        endpoint = self._by_cid(data) or self._scheduler.pick(flow)
        if endpoint is None:
            self.stats.dropped["no_backend"] += 1
            return
        ref = self._backends[endpoint]
        try:
            if up.header:
                up.sock.sendmsg((up.header, data), (), 0, ref.addr)
            else:
                up.sock.sendto(data, ref.addr)
        except OSError as exc:
            self.stats.dropped[drop_reason(exc)] += 1
            return
        ref.stats.flows_total += 1
        ref.stats.datagrams_to_backend += 1
        ref.stats.bytes_to_backend += len(data)

    def _by_cid(self, data: memoryview) -> Endpoint | None:
        """QUIC: the backend a short-header datagram's connection ID names (counted), else None."""
        outcome, backend = ("hash", None) if self._quic is None else self._quic.route(data)
        if outcome != "hash":
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        return backend

    # ------------------------------------------------------------------------------- sessions

    def _open_session(self, addr: Address, now: float, data: memoryview) -> Session[Address, Upstream] | None:
        udp = self._vip.udp
        ip, source_ip_only = parse_address(addr[0]), udp.hash == "source_ip"
        flow = session_flow(ip, addr[1], self._vip_ip, self._vip_port, source_ip_only=source_ip_only)
        by_cid = None if udp.per_packet or not self._accepting else self._by_cid(data)
        route = open_route(
            self._scheduler, flow, per_packet=udp.per_packet, accepting=self._accepting, by_cid=by_cid
        )
        if isinstance(route, Refuse):
            self.stats.refused[route.reason] += 1
            return None
        ref = None if route.backend is None else self._backends[route.backend]
        header = b""
        if self._vip.proxy_protocol == "v2":
            try:
                header = build_proxy_header(2, (addr[0], addr[1]), self.address, "udp")
            except ValueError:  # e.g. a link-local client with a scope id
                self.stats.refused["proxy_header"] += 1
                return None
        try:
            sock = self._upstream_socket(ref)
        except OSError as exc:
            log.debug("vip %s: cannot open an upstream socket: %s", self._vip.name, exc)
            self.stats.refused["no_resources"] += 1
            return None
        up = Upstream(addr, sock, header, ref, route)
        session, evicted = self._table.open(addr, up, now)
        self._table.request(addr, now, len(data))
        self._release_all(evicted)
        self._attach(up)
        self.stats.flows_total += 1
        self._count_sessions()
        if self._timer is None:
            self._rearm_timer()
        return session

    def _upstream_socket(self, ref: BackendRef | None) -> socket.socket:
        if ref is None:  # per_packet: every backend is of one family (`_check`)
            return upstream_socket(None, self._vip.backends[0].address.family_v6)
        return upstream_socket(ref.addr, ref.endpoint.family_v6)

    def _attach(self, up: Upstream) -> None:
        """Start reading replies on a new upstream socket and count the session on its backend."""
        assert self._loop is not None
        if up.backend is None:
            self._loop.add_reader(up.sock, self._on_per_packet_readable, up)
            return
        self._loop.add_reader(up.sock, self._on_upstream_readable, up)
        self._scheduler.on_open(up.backend.endpoint)
        up.backend.stats.active += 1
        up.backend.stats.flows_total += 1

    def _detach(self, up: Upstream) -> None:
        """Close a session's upstream socket and uncount it."""
        if up.closed:
            return
        up.closed = True
        assert self._loop is not None
        self._loop.remove_reader(up.sock)
        assert self._quarantine is not None
        self._quarantine.retire(up.sock)
        if up.backend is not None:
            up.backend.stats.active -= 1
            if self._backends.get(up.backend.endpoint) is up.backend:
                self._scheduler.on_close(up.backend.endpoint)

    def _on_refused(self, up: Upstream) -> None:
        assert up.backend is not None
        if up.route.backend_refused():
            up.backend.stats.connect_errors["refused"] += 1

    def _rebalance(self, session: Session[Address, Upstream]) -> Upstream | None:
        """Move a session whose backend went away to another one; None if it had to end."""
        old = session.value
        assert old.backend is not None
        decision = rebalance(self._scheduler, old.route)
        if isinstance(decision, EndSession):
            self._end(session.key, decision.reason)
            return None
        ref = self._backends[decision.backend]
        try:
            sock = self._upstream_socket(ref)
        except OSError:
            self._end(session.key, "no_resources")
            return None
        new = Upstream(old.client, sock, old.header, ref, old.route.moved_to(decision.backend))
        self._detach(old)
        session.value = new
        self._attach(new)
        if ref is not old.backend:
            self.stats.rebalanced += 1
        return new

    def _end(self, key: Address, reason: str) -> None:
        closed = self._table.remove(key, reason)
        if closed is not None:
            self._release_all([closed])

    def _release_all(self, closed: list[SessionClosed[Address, Upstream]]) -> None:
        if not closed:
            return
        assert self._loop is not None
        now = self._loop.time()
        for event in closed:
            self._detach(event.value)
            self.stats.closed[event.reason] += 1
            self.stats.flow_duration.observe(now - event.created)
            if self.flow_log is not None:
                self.flow_log.log(udp_record(self._vip.name, self.address, event, self._loop))
            if event.reason == EVICTED:
                self.stats.evictions += 1
        self._count_sessions()

    def _count_sessions(self) -> None:
        self.stats.sessions = self.stats.active = len(self._table)

    def _rearm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._table.next_deadline()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        self._release_all(self._table.expire(self._loop.time()))
        self._rearm_timer()

    # ------------------------------------------------------------------------- backend -> client

    def _on_upstream_readable(self, up: Upstream) -> None:
        assert self._loop is not None and up.backend is not None
        view, stats = self._view, up.backend.stats
        now = self._loop.time()
        for _ in range(READ_BATCH):
            if up.closed:
                return
            try:
                n = up.sock.recv_into(self._buf)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self._on_refused(up)
                return
            except OSError as exc:
                self.stats.dropped[drop_reason(exc)] += 1
                return
            stats.datagrams_from_backend += 1
            stats.bytes_from_backend += n
            self._reply(up, view[:n], now)

    def _on_per_packet_readable(self, up: Upstream) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for _ in range(READ_BATCH):
            if up.closed:
                return
            try:
                n, addr = up.sock.recvfrom_into(self._buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self.stats.dropped[drop_reason(exc)] += 1
                return
            ref = self._by_addr.get(addr[:2])
            if ref is None:
                self.stats.dropped["unknown_source"] += 1
                continue
            ref.stats.datagrams_from_backend += 1
            ref.stats.bytes_from_backend += n
            self._reply(up, self._view[:n], now)

    def _reply(self, up: Upstream, data: memoryview, now: float) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(data, up.client)
        except OSError as exc:
            self.stats.dropped[drop_reason(exc)] += 1
            return
        closed = self._table.reply(up.client, now, len(data))
        if closed is not None:
            self._release_all([closed])
