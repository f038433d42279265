"""The health state machine: rise/fall, passive ejection, admin states, slow start."""

from __future__ import annotations

import pytest

from sluice.core.health import (
    TRANSITIONS,
    USABLE,
    Admin,
    BackendHealth,
    Event,
    PassivePolicy,
    State,
    ejection_budget,
    format_table,
    slow_start_factor,
)

POLICY = PassivePolicy(consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=25.0)


def checked_up(rise: int = 2, fall: int = 3, passive: PassivePolicy | None = POLICY) -> BackendHealth:
    h = BackendHealth(rise, fall, passive, now=0.0)
    assert h.on_check(True, 0.0) is None
    return h


def feed(h: BackendHealth, results: str, now: float = 1.0) -> list[State]:
    """'+' pass, '-' fail -> the state after each."""
    out = []
    for r in results:
        h.on_check(r == "+", now)
        out.append(h.state)
    return out


def test_starts_up_and_the_first_failed_check_takes_it_down() -> None:
    h = BackendHealth(2, 3, None, now=0.0)
    assert h.state is State.UP and h.usable
    t = h.on_check(False, 1.0, "refused")
    assert t is not None and (t.old, t.new, t.event, t.detail) == (
        State.UP,
        State.DOWN,
        Event.FALL,
        "refused",
    )
    assert not h.usable


def test_fall_needs_fall_failures_in_a_row() -> None:
    h = checked_up(fall=3)
    assert feed(h, "--+--") == [State.FALLING, State.FALLING, State.UP, State.FALLING, State.FALLING]
    assert feed(h, "-") == [State.DOWN]


def test_rise_needs_rise_passes_in_a_row() -> None:
    h = checked_up(rise=3, fall=1)
    assert feed(h, "-") == [State.DOWN]
    assert feed(h, "++-+++") == [
        State.RISING,
        State.RISING,
        State.DOWN,
        State.RISING,
        State.RISING,
        State.UP,
    ]


def test_rise_one_and_fall_one_switch_at_once() -> None:
    h = checked_up(rise=1, fall=1)
    assert feed(h, "-+-+") == [State.DOWN, State.UP, State.DOWN, State.UP]


def test_each_transition_is_reported_once() -> None:
    h = checked_up(rise=2, fall=2)
    reports = [h.on_check(r == "+", float(i)) for i, r in enumerate("----++++")]
    changes = [(t.old, t.new) for t in reports if t is not None]
    assert changes == [
        (State.UP, State.FALLING),
        (State.FALLING, State.DOWN),
        (State.DOWN, State.RISING),
        (State.RISING, State.UP),
    ]


def test_passive_ejection_after_consecutive_failures_and_growing_time() -> None:
    h = checked_up()
    assert h.on_traffic(0, 2, now=1.0) is None
    assert h.suspect
    assert h.on_traffic(5, 0, now=2.0) is None  # a good connect clears the streak
    assert not h.suspect
    assert h.on_traffic(0, 2, now=3.0) is None
    t = h.on_traffic(0, 1, now=4.0)
    assert t is not None and (t.new, t.event) == (State.EJECTED, Event.EJECT)
    assert h.ejected_until == 14.0 and not h.usable
    # a passing check before the ejection time is over does not re-admit
    assert h.on_check(True, 10.0) is None and h.state is State.EJECTED
    t = h.on_check(True, 14.0)
    assert t is not None and (t.new, t.event) == (State.UP, Event.READMIT)
    # the second ejection in a row lasts twice as long, the third is capped
    h.on_traffic(0, 3, now=15.0)
    assert h.ejected_until == 35.0
    h.on_check(True, 35.0)
    h.on_traffic(0, 3, now=36.0)
    assert h.ejected_until == 36.0 + 25.0


def test_ejection_count_starts_over_after_max_ejection_time_of_good_service() -> None:
    h = checked_up()
    h.on_traffic(0, 3, now=0.0)
    h.on_check(True, 10.0)
    h.on_traffic(0, 0, now=10.0 + 25.0)
    h.on_traffic(0, 3, now=10.0 + 25.0)
    assert h.ejected_until == 35.0 + 10.0


def test_failing_checks_while_ejected_take_it_down() -> None:
    h = checked_up(fall=2)
    h.on_traffic(0, 3, now=1.0)
    assert feed(h, "--", now=20.0) == [State.EJECTED, State.DOWN]
    assert feed(h, "++", now=21.0) == [State.RISING, State.UP]


def test_passive_respects_the_ejection_budget_and_disabled_policy() -> None:
    h = checked_up()
    assert h.on_traffic(0, 10, now=1.0, may_eject=False) is None
    assert h.state is State.UP and h.suspect
    off = checked_up(passive=None)
    assert off.on_traffic(0, 100, now=1.0) is None and not off.suspect


@pytest.mark.parametrize(
    ("backends", "usable", "ejected", "percent", "budget"),
    [
        (1, 1, 0, 50, 0),  # the only backend is the last usable one: never ejected
        (1, 1, 0, 100, 0),
        (2, 2, 0, 50, 1),
        (2, 1, 1, 100, 0),  # one ejected, the other is the last usable one
        (2, 1, 0, 100, 0),  # the other is down (active checks): this one is the last usable one
        (3, 3, 0, 100, 2),
        (3, 3, 0, 10, 1),  # rounds down, but one is always allowed while another stays usable
        (10, 10, 0, 50, 5),
        (10, 7, 3, 50, 2),
        (10, 7, 6, 50, 0),  # more ejected than the percentage (a reload shrank it): none more
        (4, 4, 0, 0, 0),  # 0 % disables ejection
        (3, 0, 0, 100, 0),  # nothing usable (all down): nothing to eject
    ],
)
def test_ejection_budget_never_takes_the_last_usable_backend(
    backends: int, usable: int, ejected: int, percent: int, budget: int
) -> None:
    assert ejection_budget(backends, usable, ejected, percent) == budget


def test_passive_ignored_for_unusable_backends() -> None:
    h = checked_up(fall=1)
    feed(h, "-")
    assert h.on_traffic(0, 10, now=2.0) is None and h.state is State.DOWN


@pytest.mark.parametrize(
    ("admin", "shown"), [(Admin.DRAIN, State.DRAINING), (Admin.MAINTENANCE, State.MAINTENANCE)]
)
def test_admin_states_override_and_checks_keep_running(admin: Admin, shown: State) -> None:
    h = checked_up(rise=1, fall=1)
    t = h.set_admin(admin, 1.0)
    assert t is not None and (t.old, t.new) == (State.UP, shown)
    assert not h.usable and h.usable_since is None
    assert h.on_check(False, 2.0) is None  # shown state stays, operational follows
    assert h.operational is State.DOWN
    t = h.set_admin(Admin.ACTIVE, 3.0)
    assert t is not None and t.new is State.DOWN
    h.on_check(True, 4.0)
    assert h.state is State.UP and h.usable_since == 4.0


def test_usable_since_tracks_the_last_time_it_became_usable() -> None:
    h = checked_up(rise=1, fall=1)
    assert h.usable_since == 0.0
    h.on_check(False, 5.0)
    assert h.usable_since is None
    h.on_check(True, 7.0)
    assert h.usable_since == 7.0


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        BackendHealth(0, 1, None, 0.0)


def test_slow_start_factor() -> None:
    assert slow_start_factor(100.0, 0.0, None) == 1.0
    assert slow_start_factor(5.0, None, 30.0) == 1.0
    assert slow_start_factor(0.0, 0.0, 30.0) == pytest.approx(0.1)
    assert slow_start_factor(15.0, 0.0, 30.0) == pytest.approx(0.5)
    assert slow_start_factor(30.0, 0.0, 30.0) == 1.0


def test_table_is_complete_for_the_events_the_machine_emits() -> None:
    check_events = (Event.PASS, Event.RISE, Event.FAIL, Event.FALL)
    for state in (State.UP, State.FALLING, State.DOWN, State.RISING, State.EJECTED):
        for event in check_events:
            assert (state, event) in TRANSITIONS
    for state in USABLE:
        assert TRANSITIONS[(state, Event.EJECT)] is State.EJECTED
    table = format_table()
    assert "| ejected | readmit | up |" in table
    assert "| any | set_drain | draining |" in table
