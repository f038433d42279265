"""The UDP session policy: the flows, a new session's route, refusals, moves."""

from __future__ import annotations

from ipaddress import ip_address

from sluice.core.endpoint import Endpoint
from sluice.core.flow import IPPROTO_UDP, FiveTuple
from sluice.core.scheduler import Scheduler, build_scheduler
from sluice.core.udp_session import (
    EndSession,
    MoveTo,
    Refuse,
    SessionRoute,
    open_route,
    per_packet_flow,
    pick_backend,
    rebalance,
    session_flow,
)

CLIENT, VIP = ip_address("192.0.2.7"), ip_address("198.18.0.1")
A, B, C = (Endpoint.parse(f"127.0.0.1:{9001 + i}") for i in range(3))
FLOW = session_flow(CLIENT, 40000, VIP, 53, source_ip_only=False)


def scheduler(*weights: int) -> Scheduler:
    return build_scheduler(
        "maglev", [(e, w) for e, w in zip((A, B, C), weights, strict=False)], table_size=251
    )


def test_session_flows() -> None:
    assert FiveTuple(CLIENT, VIP, 40000, 53, IPPROTO_UDP) == FLOW
    assert session_flow(CLIENT, 40000, VIP, 53, source_ip_only=True) == FiveTuple(
        CLIENT, VIP, 0, 0, IPPROTO_UDP
    )
    assert per_packet_flow(CLIENT, VIP, 53, 65537) == FiveTuple(CLIENT, VIP, 1, 53, IPPROTO_UDP)


def test_a_new_session_goes_where_the_scheduler_says() -> None:
    s = scheduler(1, 1, 1)
    route = open_route(s, FLOW, per_packet=False, accepting=True)
    assert isinstance(route, SessionRoute)
    assert route.backend == s.pick(FLOW) and route.flow == FLOW and not route.stale


def test_new_sessions_refused() -> None:
    assert open_route(scheduler(1), FLOW, per_packet=False, accepting=False) == Refuse("shutting_down")
    assert open_route(scheduler(0, 0), FLOW, per_packet=False, accepting=True) == Refuse("no_backend")


def test_a_per_packet_session_has_no_backend() -> None:
    route = open_route(scheduler(0), FLOW, per_packet=True, accepting=True)
    assert isinstance(route, SessionRoute) and route.backend is None


def test_a_refused_backend_is_excluded_and_counted_once() -> None:
    route = SessionRoute(FLOW, A)
    assert route.backend_refused() is True
    assert route.backend_refused() is False  # the same refusal seen again (recv, then send)
    assert route.stale and route.excluded == {A}


def test_rebalance_avoids_the_refused_backend() -> None:
    s = scheduler(1, 1, 1)
    first = s.pick(FLOW)
    assert first is not None
    route = SessionRoute(FLOW, first)
    route.backend_refused()
    decision = rebalance(s, route)
    assert isinstance(decision, MoveTo) and decision.backend != first
    moved = route.moved_to(decision.backend)
    assert (moved.backend, moved.excluded, moved.stale) == (decision.backend, {first}, False)


def test_when_every_backend_refused_the_pick_is_among_all() -> None:
    s = scheduler(1, 1)
    route = SessionRoute(FLOW, A, excluded=frozenset({A, B}), stale=True)
    pick = s.pick(FLOW)
    assert pick is not None
    assert rebalance(s, route) == MoveTo(pick)
    assert pick_backend(s, FLOW, {A, B}) == pick


def test_a_removed_backend_moves_the_session_or_ends_it() -> None:
    route = SessionRoute(FLOW, C)
    route.backend_removed()
    assert route.stale and not route.excluded
    assert isinstance(rebalance(scheduler(1, 1), route), MoveTo)
    assert rebalance(scheduler(0, 0), route) == EndSession("no_backend")
