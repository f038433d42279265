"""NativeUdpListener: one UDP VIP served by the native engine (udp.c), with the surface of `UdpListener`.

The behaviour is the python engine's (dataplane/proxy/udp.py, decisions from core/udp_session.py):
sessions per client ip:port, LRU-bounded, idle timeout, ``udp.responses``, ICMP-unreachable rebalance,
``per_packet``, ``hash: source_ip``, PROXY v2 per datagram, the same counters and reasons. What differs:

- Every worker has its own SO_REUSEPORT listen socket (the kernel keeps one client address on one
  worker) and its own session table; `udp.max_sessions` is split, each worker holds at most
  ``max(1, max_sessions // workers)`` sessions.
- A closed session's upstream socket is held: for the port quarantine (`port_quarantine_s`) nobody
  uses it (a late reply reaches nobody), then it waits, still connected, for the next session to that
  backend, so a warm DNS VIP makes no socket()/connect()/close() per request. A per_packet session's
  unconnected socket is held and reused the same way (by the next per_packet session; a held
  connected one is disconnected for it), so a warm per_packet VIP makes no socket()/close() per
  session either. A held socket also stays its last client's: that client address's next session
  to the same backend takes it back at once, in its quarantine or not (a late reply can only reach
  the client it was for). At most `held_max` per worker are held; near it, a new session that finds
  none past its quarantine takes the oldest with a new port (disconnect and connect: its old port
  goes back to the kernel, as close() would give it), so a flood of new sources costs no
  socket()/close() per session either. `quarantined_fds` are the held ones still in quarantine,
  `pooled_fds` the others.
- A session's datagrams that one read gave leave in one syscall: as one UDP GSO send when they are of
  one size (udp_send.c), the peer receiving the same datagrams; replies else by sendmmsg.
- Kernel drops at a full listen socket (SO_RXQ_OVFL) are counted as ``dropped["kernel_overflow"]``;
  every listen socket asks for ``udp.listen_receive_buffer`` (``udp.receive_buffer``, else sized
  from ``udp.max_queue_delay``). Datagrams that waited longer than ``udp.max_queue_delay`` are
  dropped (``dropped["queue_delay"]``) as in udp.py; the kernel receive timestamp comes in the same
  recvmmsg, the clock is read once per batch.
"""

from __future__ import annotations

import errno
from array import array
from typing import TYPE_CHECKING, Final

from sluice.config import Endpoint, Vip
from sluice.core.scheduler import Scheduler
from sluice.dataplane.engine.listener import BACKEND_SLOTS, NativeVip, _table_spec
from sluice.dataplane.listener import check_udp_vip
from sluice.dataplane.stats import VipStats

if TYPE_CHECKING:
    from sluice.dataplane.engine._engine import Counters, UdpCounters, UdpTableSpec

PORT_QUARANTINE_S: Final = 2.0
"""Seconds a closed session's upstream socket is held before another session may use it (udp.py's)."""
HELD_MAX: Final = 4096
"""Held upstream sockets per worker at most (quarantined or waiting for reuse); the oldest beyond it
is closed."""


def _udp_table_spec(vip: Vip, scheduler: Scheduler, slots: dict[Endpoint, int]) -> UdpTableSpec:
    udp = vip.udp
    base = _table_spec(vip, scheduler, slots)
    return (
        *base,
        udp.max_sessions,
        udp.responses or 0,
        udp.per_packet,
        udp.hash == "source_ip",
        udp.max_queue_delay,
        0 if vip.quic is None else vip.quic.server_id_bits,
        _quic_ids(vip),
    )


def _quic_ids(vip: Vip) -> bytes:
    """The server ID of every backend in config order (0: none, or it takes no new flows)."""
    routing = vip.quic_routing
    by_backend = {} if routing is None else {b: i for i, b in routing.backends.items()}
    return array("I", (by_backend.get(b.address, 0) for b in vip.backends)).tobytes()


class NativeUdpListener(NativeVip):
    """One UDP VIP on the native engine (`workers`: None = one worker per CPU)."""

    def __init__(
        self,
        vip: Vip,
        *,
        port_quarantine_s: float = PORT_QUARANTINE_S,
        held_max: int = HELD_MAX,
        workers: int | None = None,
    ) -> None:
        check_udp_vip(vip, "NativeUdpListener")
        super().__init__(vip, workers)
        self._quarantine_s = port_quarantine_s
        self._held_max = held_max
        self._gro = False

    # ------------------------------------------------------------------ Listener interface

    async def start(self) -> None:
        vip = self.vip
        spec = self._table(vip)
        self._id, port = self._engine.vip_add(
            vip.listen.host,
            vip.listen.port,
            False,
            0,
            BACKEND_SLOTS,
            spec,
            True,
            vip.udp.listen_receive_buffer,
            self._held_max,
            self._quarantine_s,
        )
        self._address = (vip.listen.host, port)
        self._gro = self._engine.udp_gro(self._id)
        self._start_flow_log()

    def update(self, vip: Vip) -> None:
        if (vip.listen, vip.protocol) != (self.vip.listen, self.vip.protocol):
            raise ValueError("update() cannot move a listener: stop it and start a new one")
        check_udp_vip(vip, "NativeUdpListener")
        super().update(vip)

    async def close(self) -> None:
        """End every session (``shutdown``), close every socket, keep the final counters."""
        if self._id is not None:
            vip_id, self._id = self._id, None
            self._engine.vip_detach(vip_id)
            try:
                self._fill(self._stats, self._engine.counters(vip_id), self._engine.udp_counters(vip_id))
                self._close_flow_log()
            finally:
                self._engine.vip_free(vip_id)

    @property
    def gro(self) -> bool:
        """True when the listen sockets read GRO-coalesced datagrams."""
        return self._gro

    @property
    def quarantined_fds(self) -> frozenset[int]:
        """Descriptors of closed sessions' upstream sockets still in the port quarantine."""
        return frozenset(fd for fd, quarantined in self._held() if quarantined)

    @property
    def pooled_fds(self) -> frozenset[int]:
        """Descriptors of held upstream sockets past the quarantine, waiting for a new session."""
        return frozenset(fd for fd, quarantined in self._held() if not quarantined)

    @property
    def held_fds(self) -> frozenset[int]:
        """Every held upstream socket's descriptor, from one look (quarantined and pooled apart may
        miss a socket whose quarantine ends between the two)."""
        return frozenset(fd for fd, _ in self._held())

    # ------------------------------------------------------------------ internals

    def _held(self) -> list[tuple[int, bool]]:
        return [] if self._id is None else self._engine.udp_held(self._id)

    def _table(self, vip: Vip) -> UdpTableSpec:
        return _udp_table_spec(vip, self._scheduler, self._slots)

    def _read(self, stats: VipStats, vip_id: int, worker: int) -> None:
        used = len(self._slots)
        self._fill(
            stats,
            self._engine.counters(vip_id, worker, used),
            self._engine.udp_counters(vip_id, worker, used),
        )

    def _fill(self, stats: VipStats, counters: Counters, udp: UdpCounters) -> None:
        from sluice.dataplane.engine import _engine  # built: this listener exists only then

        self._fill_flows(stats, counters)
        sessions, evictions, rebalanced, dropped, errnos, datagrams, quic_routed, quic_fallback = udp
        stats.sessions, stats.evictions, stats.rebalanced = sessions, evictions, rebalanced
        stats.quic_routed, stats.quic_fallback = quic_routed, quic_fallback
        stats.dropped.clear()
        stats.dropped.update({name: n for name, n in zip(_engine.DROPPED, dropped, strict=True) if n})
        for code, n in errnos.items():
            stats.dropped[errno.errorcode.get(code, "os_error").lower()] += n
        for endpoint, slot in self._slots.items():
            b = stats.backend(str(endpoint))
            b.datagrams_to_backend, b.datagrams_from_backend = datagrams[slot]
