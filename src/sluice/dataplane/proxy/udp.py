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
- **No silent truncation.** The buffer holds 65,536 bytes, more than any UDP payload (65,507 over
  IPv4, 65,527 over IPv6), and the listen socket checks ``MSG_TRUNC`` anyway; a truncated read is
  dropped and counted (``dropped["truncated"]``).
- **UDP_GRO.** The listen socket asks for UDP_GRO (``setsockopt(SOL_UDP, 104)``). When the kernel
  hands over several same-flow datagrams coalesced into one buffer, a ``UDP_GRO`` control message
  gives the segment size and the buffer is split back into the original datagrams. A kernel without
  UDP_GRO refuses the option and the listener reads datagram by datagram (`gro` says which).
- **Sends never queue.** UDP is lossy; a send that would block is dropped and counted
  (``dropped["send_buffer_full"]``), so no buffer grows without bound.
- **Empty datagrams are forwarded** both ways (UDP allows zero-length payloads; some protocols use
  them as keepalives) and counted like any other. The payload is never parsed, so "garbage" is just
  data. A datagram that cannot be sent (too large once the PROXY header is added: EMSGSIZE) is
  dropped and counted (``dropped["too_large"]``).
- **Backend gone.** An ICMP port unreachable surfaces on the connected socket as ECONNREFUSED (on
  recv, or on the next send); the session is marked and its next datagram is re-balanced with
  ``scheduler.pick(flow, exclude=...)`` (``stats.rebalanced``). A send that fails that way is
  retried once on the new backend, so that datagram is not lost. Sessions whose backend `update`
  removed are re-balanced the same way on their next datagram; the others keep their backend.
- **udp.hash source_ip.** The scheduler sees ``FiveTuple(client ip, VIP ip, 0, 0, 17)``: both ports
  zeroed, so every port of one client IP lands on one backend (RTP + RTCP). Sessions (and their
  upstream sockets) are still per client ip:port.
- **udp.per_packet.** Sessions stay (one per client ip:port, so replies find their client), but the
  session's upstream socket is *unconnected* and every datagram picks its own backend with a flow
  whose source port is a listener-wide datagram counter: ``FiveTuple(client ip, VIP ip, n mod 65536,
  VIP port, 17)``. Any scheduler works with that (maglev spreads by weight, round_robin rotates).
  Replies arrive on the session's socket from whichever backend; only sources that are current
  backends are relayed (``dropped["unknown_source"]``). Each datagram counts as one flow of its
  backend. The kernel reports no ICMP errors on unconnected sockets: a dead backend is skipped only
  once health checks remove it. One unconnected socket speaks one address family, so per_packet
  needs every backend in the same family.
- **PROXY protocol v2** (``proxy_protocol: v2``): a UDP4/UDP6 header (client -> VIP) is built once
  per session and sent in front of every datagram with ``sendmsg`` (scatter-gather, no copy). v1
  cannot carry UDP and is refused.
- Settings that shape a session (hash, per_packet, proxy_protocol) apply to sessions opened after an
  `update`; limits (max_sessions, idle timeout, responses) apply at once.

- **Port quarantine.** A closed session's upstream socket is kept open, unread and with a minimal
  receive buffer, for `PORT_QUARANTINE_S` (at most `PORT_QUARANTINE_MAX` sockets) before it is
  closed. Otherwise the kernel could hand its port at once to a new session towards the same
  backend, and a reply of the old session still in flight would reach the new session's client.

Limits: every session holds one file descriptor, so RLIMIT_NOFILE must exceed ``udp.max_sessions``
(a failed ``socket()`` refuses the new session and counts ``refused["no_resources"]``, as TCP does). The VIP
address in the 5-tuple and the PROXY header is the listen address, so listen on a concrete address,
not a wildcard.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, TypeAlias

from sluice.config import Endpoint, Vip
from sluice.core.flow import IPPROTO_UDP, FiveTuple, parse_address
from sluice.core.proxy_protocol import build_proxy_header
from sluice.core.scheduler import Scheduler, build_scheduler, maglev_slots_changed
from sluice.core.sessions import EVICTED, Session, SessionClosed, SessionTable
from sluice.dataplane.stats import BackendStats, VipStats

log = logging.getLogger(__name__)

Address: TypeAlias = tuple[Any, ...]
"""A socket address as the socket module reports it: (host, port) or (host, port, flow, scope)."""

BUFFER_SIZE: Final = 65536  # bytes; > any UDP payload and >= a GRO-coalesced read
READ_BATCH: Final = 64  # datagrams read per readiness event, then other sockets get a turn
LISTEN_RCVBUF: Final = 4 << 20  # bytes asked for the listen socket (capped by net.core.rmem_max)
SOL_UDP: Final = 17
UDP_GRO: Final = 104  # linux/udp.h; the control message carries the segment size as an int
PORT_QUARANTINE_S: Final = 2.0  # seconds a closed session's upstream socket is held before close
PORT_QUARANTINE_MAX: Final = 1024  # sockets held at most; beyond it the oldest are closed
_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_INT: Final = struct.Struct("=i")


@dataclass(slots=True)
class _BackendRef:
    """A current backend: its socket address (computed once) and its counters."""

    endpoint: Endpoint
    addr: tuple[str, int]
    stats: BackendStats


@dataclass(slots=True, eq=False)
class _Upstream:
    """The value of one session: the NAT entry."""

    client: Address
    flow: FiveTuple
    """What the scheduler is asked (ports zeroed for udp.hash source_ip)."""
    sock: socket.socket
    header: bytes
    """PROXY v2 header sent before each datagram, or b""."""
    backend: _BackendRef | None
    """None for a per_packet session (unconnected socket, one pick per datagram)."""
    excluded: frozenset[Endpoint] = frozenset()
    """Backends that refused this session (ICMP port unreachable)."""
    stale: bool = False
    """The backend went away: re-balance on the next datagram."""
    closed: bool = False


class UdpListener:
    """One UDP VIP: the listen socket, the session table and one upstream socket per session."""

    def __init__(self, vip: Vip, *, port_quarantine_s: float = PORT_QUARANTINE_S) -> None:
        _check(vip)
        self._vip = vip
        self.stats = VipStats()
        self.gro = False
        """True when the listen socket reads GRO-coalesced datagrams."""
        self._table: SessionTable[Address, _Upstream] = SessionTable(
            vip.udp.max_sessions, vip.idle_timeout_s, vip.udp.responses
        )
        self._backends: dict[Endpoint, _BackendRef] = {}
        self._by_addr: dict[tuple[str, int], _BackendRef] = {}
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
        self._quarantine: deque[tuple[float, socket.socket]] = deque()
        self._quarantine_timer: asyncio.TimerHandle | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the listen address with the kernel's port when it asked for 0."""
        return (str(self._vip_ip), self._vip_port)

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if self._vip.listen.family_v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTEN_RCVBUF)
            sock.bind((self._vip.listen.host, self._vip.listen.port))
            self.gro = _try_enable_gro(sock)
            self._vip_port = sock.getsockname()[1]
            self._loop.add_reader(sock, self._on_client_readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def update(self, vip: Vip) -> None:
        if (vip.listen, vip.protocol) != (self._vip.listen, self._vip.protocol):
            raise ValueError("update() cannot move a listener: stop it and start a new one")
        _check(vip)
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
                up.stale = True
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
        if self._quarantine_timer is not None:
            self._quarantine_timer.cancel()
            self._quarantine_timer = None
        while self._quarantine:
            self._quarantine.popleft()[1].close()

    @property
    def quarantined_fds(self) -> frozenset[int]:
        """File descriptors of closed sessions' upstream sockets still held (see the docstring)."""
        return frozenset(sock.fileno() for _, sock in self._quarantine)

    def _build_scheduler(self, vip: Vip) -> Scheduler:
        old = self._backends
        self._backends = {
            b.address: old.get(b.address)
            or _BackendRef(b.address, (b.address.host, b.address.port), self.stats.backend(str(b.address)))
            for b in vip.backends
        }
        self._by_addr = {ref.addr: ref for ref in self._backends.values()}
        return build_scheduler(vip.scheduler, vip.weighted_backends, table_size=vip.maglev_table_size)

    # ------------------------------------------------------------------------- client -> backend

    def _on_client_readable(self) -> None:
        assert self._loop is not None and self._sock is not None
        sock, view, buffers = self._sock, self._view, [self._buf]
        ancsize = _GRO_CMSG_SPACE if self.gro else 0
        now = self._loop.time()
        for _ in range(READ_BATCH):
            try:
                n, ancdata, flags, addr = sock.recvmsg_into(buffers, ancsize)
            except BlockingIOError:
                return
            except OSError as exc:
                self.stats.dropped[_reason(exc)] += 1
                return
            if flags & socket.MSG_TRUNC:
                self.stats.dropped["truncated"] += 1
                continue
            segment = _gro_segment_size(ancdata) if ancdata else 0
            if 0 < segment < n:
                for start in range(0, n, segment):
                    self._on_client_datagram(view[start : min(start + segment, n)], addr, now)
            else:
                self._on_client_datagram(view[:n], addr, now)
            if self._sock is None:  # closed by a callback
                return

    def _on_client_datagram(self, data: memoryview, addr: Address, now: float) -> None:
        session = self._table.request(addr, now)
        if session is None:
            session = self._open_session(addr, now)
            if session is None:
                return
        up = session.value
        if up.backend is None:
            self._send_per_packet(up, data)
            return
        if up.stale:
            rebalanced = self._rebalance(session)
            if rebalanced is None:
                self.stats.dropped["no_backend"] += 1
                return
            up = rebalanced
        if not self._send(up, data):  # refused: an ICMP port unreachable came since the last send
            retry = self._rebalance(session)
            if retry is None or not self._send(retry, data):
                self.stats.dropped["backend_refused"] += 1

    def _send(self, up: _Upstream, data: memoryview) -> bool:
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
            self.stats.dropped[_reason(exc)] += 1
            return True
        backend.stats.datagrams_to_backend += 1
        backend.stats.bytes_to_backend += len(data)
        return True

    def _send_per_packet(self, up: _Upstream, data: memoryview) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        flow = FiveTuple(up.flow.src_ip, self._vip_ip, self._seq, self._vip_port, IPPROTO_UDP)
        endpoint = self._scheduler.pick(flow)
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
            self.stats.dropped[_reason(exc)] += 1
            return
        ref.stats.flows_total += 1
        ref.stats.datagrams_to_backend += 1
        ref.stats.bytes_to_backend += len(data)

    # ------------------------------------------------------------------------------- sessions

    def _open_session(self, addr: Address, now: float) -> Session[Address, _Upstream] | None:
        if not self._accepting:
            self.stats.refused["shutting_down"] += 1
            return None
        udp = self._vip.udp
        client_ip = parse_address(addr[0])
        if udp.hash == "source_ip":
            flow = FiveTuple(client_ip, self._vip_ip, 0, 0, IPPROTO_UDP)
        else:
            flow = FiveTuple(client_ip, self._vip_ip, addr[1], self._vip_port, IPPROTO_UDP)
        ref = None
        if not udp.per_packet:
            ref = self._pick(flow, frozenset())
            if ref is None:
                self.stats.refused["no_backend"] += 1
                return None
        header = b""
        if self._vip.proxy_protocol == "v2":
            try:
                header = build_proxy_header(2, (addr[0], addr[1]), self.address, "udp")
            except ValueError:  # e.g. a link-local client with a scope id
                self.stats.refused["proxy_header"] += 1
                return None
        try:
            sock = _upstream_socket(ref, self._vip.backends[0].address.family_v6)
        except OSError as exc:
            log.debug("vip %s: cannot open an upstream socket: %s", self._vip.name, exc)
            self.stats.refused["no_resources"] += 1
            return None
        up = _Upstream(addr, flow, sock, header, ref)
        session, evicted = self._table.open(addr, up, now)
        self._table.request(addr, now)
        self._release_all(evicted)
        self._attach(up)
        self.stats.flows_total += 1
        self._count_sessions()
        if self._timer is None:
            self._rearm_timer()
        return session

    def _pick(self, flow: FiveTuple, exclude: frozenset[Endpoint]) -> _BackendRef | None:
        endpoint = self._scheduler.pick(flow, exclude)
        if endpoint is None and exclude:  # every other backend is gone too: try the refused ones
            endpoint = self._scheduler.pick(flow)
        return None if endpoint is None else self._backends[endpoint]

    def _attach(self, up: _Upstream) -> None:
        """Start reading replies on a new upstream socket and count the session on its backend."""
        assert self._loop is not None
        if up.backend is None:
            self._loop.add_reader(up.sock, self._on_per_packet_readable, up)
            return
        self._loop.add_reader(up.sock, self._on_upstream_readable, up)
        self._scheduler.on_open(up.backend.endpoint)
        up.backend.stats.active += 1
        up.backend.stats.flows_total += 1

    def _detach(self, up: _Upstream) -> None:
        """Close a session's upstream socket and uncount it."""
        if up.closed:
            return
        up.closed = True
        assert self._loop is not None
        self._loop.remove_reader(up.sock)
        self._retire(up.sock)
        if up.backend is not None:
            up.backend.stats.active -= 1
            if self._backends.get(up.backend.endpoint) is up.backend:
                self._scheduler.on_close(up.backend.endpoint)

    def _retire(self, sock: socket.socket) -> None:
        """Hold a closed session's socket for the port quarantine, then close it."""
        assert self._loop is not None
        if self._quarantine_s <= 0:
            sock.close()
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
        except OSError:
            sock.close()
            return
        self._quarantine.append((self._loop.time() + self._quarantine_s, sock))
        while len(self._quarantine) > PORT_QUARANTINE_MAX:
            self._quarantine.popleft()[1].close()
        if self._quarantine_timer is None:
            self._quarantine_timer = self._loop.call_at(self._quarantine[0][0], self._on_quarantine_timer)

    def _on_quarantine_timer(self) -> None:
        assert self._loop is not None
        self._quarantine_timer = None
        now = self._loop.time()
        while self._quarantine and self._quarantine[0][0] <= now:
            self._quarantine.popleft()[1].close()
        if self._quarantine:
            self._quarantine_timer = self._loop.call_at(self._quarantine[0][0], self._on_quarantine_timer)

    def _on_refused(self, up: _Upstream) -> None:
        assert up.backend is not None
        if not up.stale:
            up.backend.stats.connect_errors["refused"] += 1
        up.stale = True
        up.excluded |= {up.backend.endpoint}

    def _rebalance(self, session: Session[Address, _Upstream]) -> _Upstream | None:
        """Move a session whose backend went away to another one; None if it had to end."""
        old = session.value
        assert old.backend is not None
        ref = self._pick(old.flow, old.excluded)
        if ref is None:
            self._end(session.key, "no_backend")
            return None
        try:
            sock = _upstream_socket(ref, self._vip.backends[0].address.family_v6)
        except OSError:
            self._end(session.key, "no_resources")
            return None
        new = _Upstream(old.client, old.flow, sock, old.header, ref, old.excluded)
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

    def _release_all(self, closed: list[SessionClosed[Address, _Upstream]]) -> None:
        for event in closed:
            self._detach(event.value)
            self.stats.closed[event.reason] += 1
            if event.reason == EVICTED:
                self.stats.evictions += 1
        if closed:
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

    def _on_upstream_readable(self, up: _Upstream) -> None:
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
                self.stats.dropped[_reason(exc)] += 1
                return
            stats.datagrams_from_backend += 1
            stats.bytes_from_backend += n
            self._reply(up, view[:n], now)

    def _on_per_packet_readable(self, up: _Upstream) -> None:
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
                self.stats.dropped[_reason(exc)] += 1
                return
            ref = self._by_addr.get(addr[:2])
            if ref is None:
                self.stats.dropped["unknown_source"] += 1
                continue
            ref.stats.datagrams_from_backend += 1
            ref.stats.bytes_from_backend += n
            self._reply(up, self._view[:n], now)

    def _reply(self, up: _Upstream, data: memoryview, now: float) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(data, up.client)
        except OSError as exc:
            self.stats.dropped[_reason(exc)] += 1
            return
        closed = self._table.reply(up.client, now)
        if closed is not None:
            self._release_all([closed])


# ------------------------------------------------------------------------------------- helpers


def _check(vip: Vip) -> None:
    if vip.protocol != "udp":
        raise ValueError(f"vip {vip.name}: UdpListener serves protocol udp, not {vip.protocol}")
    if vip.proxy_protocol == "v1":
        raise ValueError(f"vip {vip.name}: PROXY protocol v1 cannot carry UDP; use v2")
    if vip.udp.per_packet and len({b.address.family_v6 for b in vip.backends}) > 1:
        raise ValueError(f"vip {vip.name}: udp.per_packet needs every backend in one address family")


def _upstream_socket(backend: _BackendRef | None, family_v6: bool) -> socket.socket:
    """A non-blocking socket connected to `backend`, or an unconnected one (per_packet) of the
    backends' address family `family_v6`."""
    if backend is not None:
        family_v6 = backend.endpoint.family_v6
    family = socket.AF_INET6 if family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)  # no separate ioctl
    try:
        if backend is not None:
            sock.connect(backend.addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _try_enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            return int(_INT.unpack_from(data)[0])
    return 0


_ERRNO_REASONS: Final = {
    errno.EAGAIN: "send_buffer_full",
    errno.ENOBUFS: "send_buffer_full",
    errno.EMSGSIZE: "too_large",
    errno.ECONNREFUSED: "backend_refused",
}


def _reason(exc: OSError) -> str:
    """A drop reason for the counters: a few named ones, else the errno name in lower case."""
    if exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    return errno.errorcode.get(exc.errno or 0, "os_error").lower()
