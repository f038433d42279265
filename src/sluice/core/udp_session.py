"""The UDP session policy (sans-IO): the flow a session is balanced by, its backend, when it moves.

The UDP listener (``dataplane/proxy/udp.py``) owns the sockets and the session table; for each
decision it asks this module, which returns what to do:

- **the flow**: `session_flow` builds the FiveTuple (client -> VIP, proto 17) a session is balanced
  by: ``FiveTuple(client ip, VIP ip, 0, 0, 17)`` for ``hash: source_ip``, so every port of one
  client IP lands on one backend (RTP + RTCP); `per_packet_flow` the one of each datagram of a
  ``per_packet`` VIP, ``FiveTuple(client ip, VIP ip, n mod 65536, VIP port, 17)`` with n a
  listener-wide datagram counter (maglev spreads that by weight, round_robin rotates);
- **a new session**: `open_route` gives its `SessionRoute` (the backend the scheduler picks, or the
  one a QUIC connection ID names; none for per_packet) or a `Refuse` (``shutting_down``, ``no_backend``);
- **a backend that went away**: an ICMP port unreachable (`SessionRoute.backend_refused`) or an
  update that removed it (`SessionRoute.backend_removed`) marks the route stale; the next datagram
  asks `rebalance`, which moves the session (`MoveTo`) to the scheduler's pick excluding the
  backends that refused it -- or, when every other backend is gone too, to one of those -- or
  ends it (`EndSession`, ``no_backend``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sluice.core.endpoint import Endpoint
from sluice.core.flow import IPPROTO_UDP, FiveTuple, IPAddress, client_flow
from sluice.core.scheduler import Scheduler

__all__ = [
    "EndSession",
    "MoveTo",
    "Refuse",
    "SessionRoute",
    "open_route",
    "per_packet_flow",
    "pick_backend",
    "rebalance",
    "session_flow",
]


def session_flow(
    client_ip: IPAddress, client_port: int, vip_ip: IPAddress, vip_port: int, *, source_ip_only: bool
) -> FiveTuple:
    """The FiveTuple a session from (client_ip, client_port) is balanced by."""
    return client_flow(IPPROTO_UDP, client_ip, client_port, vip_ip, vip_port, source_ip_only=source_ip_only)


def per_packet_flow(client_ip: IPAddress, vip_ip: IPAddress, vip_port: int, seq: int) -> FiveTuple:
    """The FiveTuple of one datagram of a per_packet VIP: the source port is `seq` mod 65536."""
    return FiveTuple(client_ip, vip_ip, seq & 0xFFFF, vip_port, IPPROTO_UDP)


@dataclass(frozen=True, slots=True)
class Refuse:
    """Decision: open no session; `reason` is its `refused` key."""

    reason: str


@dataclass(frozen=True, slots=True)
class MoveTo:
    """Decision: move the session to `backend` (a new upstream socket)."""

    backend: Endpoint


@dataclass(frozen=True, slots=True)
class EndSession:
    """Decision: end the session; `reason` is its `closed` key."""

    reason: str


@dataclass(slots=True, eq=False)
class SessionRoute:
    """Where one session's datagrams go, and what it learnt about its backends."""

    flow: FiveTuple
    """What the scheduler is asked (`session_flow`)."""
    backend: Endpoint | None
    """None for a per_packet session (one pick per datagram)."""
    excluded: frozenset[Endpoint] = frozenset()
    """Backends that refused this session (ICMP port unreachable)."""
    stale: bool = False
    """The backend went away: `rebalance` on the next datagram."""

    def backend_refused(self) -> bool:
        """The backend answered ICMP port unreachable: exclude it and move on the next datagram.
        True the first time since the last move (count the connect error once)."""
        assert self.backend is not None
        first = not self.stale
        self.stale = True
        self.excluded |= {self.backend}
        return first

    def backend_removed(self) -> None:
        """An update removed the backend: move on the next datagram."""
        self.stale = True

    def moved_to(self, backend: Endpoint) -> SessionRoute:
        """The route after a move to `backend` (`rebalance`): fresh, keeping what it learnt."""
        return SessionRoute(self.flow, backend, self.excluded)


def pick_backend(
    scheduler: Scheduler, flow: FiveTuple, exclude: Collection[Endpoint] = ()
) -> Endpoint | None:
    """The scheduler's pick excluding `exclude`; when that leaves none, the pick among all (a
    backend that refused once may be back; better than no backend)."""
    backend = scheduler.pick(flow, exclude)
    if backend is None and exclude:
        backend = scheduler.pick(flow)
    return backend


def open_route(
    scheduler: Scheduler,
    flow: FiveTuple,
    *,
    per_packet: bool,
    accepting: bool,
    by_cid: Endpoint | None = None,
) -> SessionRoute | Refuse:
    """The route of a new session balanced by `flow`, or why there is none. `by_cid`: the backend
    its first datagram's QUIC connection ID names (`sluice.core.quic`), taken instead of a pick; a
    later rebalance hashes `flow` as for any session."""
    if not accepting:
        return Refuse("shutting_down")
    if per_packet:
        return SessionRoute(flow, None)
    backend = by_cid or pick_backend(scheduler, flow)
    if backend is None:
        return Refuse("no_backend")
    return SessionRoute(flow, backend)


def rebalance(scheduler: Scheduler, route: SessionRoute) -> MoveTo | EndSession:
    """Where a stale session goes now (possibly its old backend, when it is the only one left)."""
    backend = pick_backend(scheduler, route.flow, route.excluded)
    if backend is None:
        return EndSession("no_backend")
    return MoveTo(backend)
