"""The TCP connect policy: which backend next, bounded tries, the reason to give up, errno names."""

from __future__ import annotations

import errno

import pytest

from sluice.core.connect import (
    CONNECT_ERROR_BY_ERRNO,
    MAX_CONNECT_TRIES,
    NEXT_PHASES,
    Connect,
    ConnectPlan,
    GiveUp,
    Phase,
    connect_error_reason,
)
from sluice.core.endpoint import Endpoint
from sluice.core.flow import IPPROTO_TCP, FiveTuple
from sluice.core.reasons import CONNECT_ERRORS, REFUSED
from sluice.core.scheduler import SchedulerName, build_scheduler

FLOW = FiveTuple.of(("192.0.2.7", 40000), ("198.18.0.1", 443), IPPROTO_TCP)


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint.parse(f"127.0.0.1:{9001 + i}") for i in range(n)]


def walk(plan: ConnectPlan) -> tuple[list[Endpoint], str]:
    """Fail every connect the plan offers: the backends tried and the reason it gave up."""
    tried = []
    for _ in range(100):
        decision = plan.next()
        if isinstance(decision, GiveUp):
            return tried, decision.reason
        tried.append(decision.backend)
    raise AssertionError("the plan never gave up")


@pytest.mark.parametrize("name", ["maglev", "round_robin", "least_conn", "random_two"])
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_tries_are_bounded_distinct_and_end_in_connect_failed(name: SchedulerName, n: int) -> None:
    scheduler = build_scheduler(name, [(e, 1) for e in endpoints(n)], table_size=251)
    tried, reason = walk(ConnectPlan(scheduler, FLOW, n))
    assert len(tried) == min(MAX_CONNECT_TRIES, n) == len(set(tried))
    assert reason == "connect_failed"


def test_the_first_try_is_the_schedulers_pick() -> None:
    scheduler = build_scheduler("maglev", [(e, 1) for e in endpoints(5)], table_size=251)
    pick = scheduler.pick(FLOW)
    assert pick is not None
    assert ConnectPlan(scheduler, FLOW, 5).next() == Connect(pick)


def test_no_eligible_backend_is_no_backend() -> None:
    scheduler = build_scheduler("maglev", [(e, 0) for e in endpoints(3)], table_size=251)
    assert walk(ConnectPlan(scheduler, FLOW, 3)) == ([], "no_backend")


def test_fewer_eligible_backends_than_tries_stops_early() -> None:
    a, b, c = endpoints(3)
    scheduler = build_scheduler("round_robin", [(a, 1), (b, 0), (c, 1)])
    tried, reason = walk(ConnectPlan(scheduler, FLOW, 3))
    assert sorted(tried) == [a, c] and reason == "connect_failed"


def test_max_tries_is_a_parameter() -> None:
    scheduler = build_scheduler("round_robin", [(e, 1) for e in endpoints(5)])
    assert len(walk(ConnectPlan(scheduler, FLOW, 5, max_tries=5))[0]) == 5


def test_give_up_reasons_are_table_reasons() -> None:
    assert {"connect_failed", "no_backend"} <= set(REFUSED)


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (errno.ECONNREFUSED, "refused"),
        (errno.ETIMEDOUT, "timeout"),
        (errno.ECONNRESET, "reset"),
        (errno.EPIPE, "reset"),
        (errno.ECONNABORTED, "reset"),
        (errno.EHOSTUNREACH, "unreachable"),
        (errno.ENETUNREACH, "unreachable"),
        (errno.EACCES, "other"),
    ],
)
def test_connect_error_reason_by_errno_name(number: int, reason: str) -> None:
    assert connect_error_reason(errno.errorcode[number]) == reason


def test_an_unknown_error_is_other() -> None:
    assert connect_error_reason(None) == connect_error_reason("EWHATEVER") == "other"
    assert set(CONNECT_ERROR_BY_ERRNO.values()) | {"other"} == set(CONNECT_ERRORS)


def test_every_phase_is_reachable_and_established_is_last() -> None:
    seen, todo = {Phase.ACCEPTED}, [Phase.ACCEPTED]
    while todo:
        for nxt in NEXT_PHASES[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Phase) == set(NEXT_PHASES)
    assert not NEXT_PHASES[Phase.ESTABLISHED]
