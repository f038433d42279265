"""The health monitor with scripted checkers, hand-made counters and a fake clock."""

from __future__ import annotations

from sluice.config import parse_config
from sluice.control.monitor import Monitor
from sluice.core.health import State
from sluice.dataplane.stats import VipStats
from tests.support.fakes import FakeClock, ScriptedChecks, ep, make_config


def monitor(stats: dict[str, VipStats] | None = None) -> tuple[Monitor, FakeClock, ScriptedChecks]:
    clock, checks = FakeClock(), ScriptedChecks()
    source = stats if stats is not None else {}
    mon = Monitor(lambda: source, clock=clock, checkers=checks.registry(), passive_interval_s=0.25)
    return mon, clock, checks


async def run_until(mon: Monitor, clock: FakeClock, until: float) -> list[tuple[float, str, State]]:
    """Step the monitor at every due time up to `until`; returns (time, backend, new state)."""
    seen = []
    while True:
        clock.t = mon.next_due()
        if clock.t > until:
            return seen
        for bt in await mon.step():
            seen.append((clock.t, str(bt.backend), bt.transition.new))


async def test_checks_run_every_interval_and_follow_rise_and_fall() -> None:
    mon, clock, checks = monitor()
    mon.configure(make_config(backends=2))
    assert await run_until(mon, clock, 1.0) == []
    assert len(checks.calls) == 4  # t=0 and t=1, two backends
    checks.down.add(ep(9001))
    seen = await run_until(mon, clock, 6.0)
    assert seen == [(2.0, "127.0.0.1:9001", State.FALLING), (3.0, "127.0.0.1:9001", State.DOWN)]
    checks.down.clear()
    seen = await run_until(mon, clock, 10.0)
    assert seen == [(7.0, "127.0.0.1:9001", State.RISING), (8.0, "127.0.0.1:9001", State.UP)]
    assert mon.transitions[("web", "127.0.0.1:9001", State.DOWN)] == 1
    record = mon.record("web", ep(9001))
    assert record.checks_total[False] == 5 and record.latency.count == record.checks_total.total()


async def test_check_port_is_the_check_target() -> None:
    mon, _clock, checks = monitor()
    config = parse_config(
        {
            "vips": [
                {
                    "name": "web",
                    "listen": "127.0.0.1:8000",
                    "backends": [{"address": "127.0.0.1:9001", "check_port": 7001}],
                    "health": {"type": "tcp", "jitter": 0},
                }
            ]
        }
    )
    mon.configure(config)
    await mon.step()
    assert checks.calls == [ep(7001)]


async def test_jitter_spreads_checks_within_bounds() -> None:
    mon, clock, _checks = monitor()
    mon.configure(
        make_config(backends=20, health={"type": "tcp", "interval": 1, "timeout": 0.5, "jitter": 0.2})
    )
    firsts = sorted(r.next_check for r in mon.records())
    assert firsts[0] >= 0.0 and firsts[-1] <= 0.2 and firsts[0] != firsts[-1]
    clock.t = 0.2
    await mon.step()
    waits = [r.next_check - 0.2 for r in mon.records()]
    assert all(0.8 <= w <= 1.2 for w in waits) and len(set(waits)) > 1


async def test_passive_ejection_from_connect_counters_with_budget() -> None:
    stats = {"web": VipStats()}
    mon, clock, _ = monitor(stats)
    mon.configure(make_config(backends=2, passive={"consecutive_failures": 3, "base_ejection_time": 5}))
    await mon.step()
    a, b = stats["web"].backend("127.0.0.1:9001"), stats["web"].backend("127.0.0.1:9002")
    a.connect_errors["refused"] += 2
    b.connect_errors["timeout"] += 3
    clock.t = 0.25
    changes = await mon.step()
    assert [(str(c.backend), c.transition.new) for c in changes] == [("127.0.0.1:9002", State.EJECTED)]
    assert mon.record("web", ep(9001)).health.suspect
    # the budget (50 % of 2 = 1) is spent: 9001 stays in, suspect, even past the threshold
    a.connect_errors["refused"] += 5
    clock.t = 0.5
    assert await mon.step() == []
    assert mon.record("web", ep(9001)).health.state is State.UP
    # a successful connect clears the streak
    a.connect_ok += 1
    clock.t = 0.75
    await mon.step()
    assert not mon.record("web", ep(9001)).health.suspect
    # 9002 comes back with the first passing check after its ejection time (5 s)
    seen = await run_until(mon, clock, 6.0)
    assert seen == [(6.0, "127.0.0.1:9002", State.UP)]


async def test_passive_without_active_checks_readmits_after_ejection_time() -> None:
    stats = {"web": VipStats()}
    mon, clock, _checks = monitor(stats)
    mon.configure(
        make_config(backends=3, health=None, passive={"consecutive_failures": 1, "base_ejection_time": 3})
    )
    await mon.step()
    stats["web"].backend("127.0.0.1:9001").connect_errors["reset"] += 1
    seen = await run_until(mon, clock, 8.0)
    assert [s[2] for s in seen] == [State.EJECTED, State.UP]
    assert 3.0 <= seen[1][0] - seen[0][0] <= 5.0


async def test_reload_keeps_state_of_backends_that_stay() -> None:
    mon, clock, checks = monitor()
    mon.configure(make_config(backends=2))
    checks.down.add(ep(9001))
    await run_until(mon, clock, 2.0)
    assert mon.record("web", ep(9001)).health.state is State.DOWN
    mon.configure(make_config(backends=3))  # adds 9003
    assert mon.record("web", ep(9001)).health.state is State.DOWN
    assert mon.record("web", ep(9003)).health.state is State.UP
    mon.configure(make_config(backends=1))
    assert [str(r.address) for r in mon.records()] == ["127.0.0.1:9001"]


async def test_counter_reset_is_not_a_negative_delta() -> None:
    stats = {"web": VipStats()}
    mon, clock, _ = monitor(stats)
    mon.configure(make_config(backends=1, passive={"consecutive_failures": 2}))
    b = stats["web"].backend("127.0.0.1:9001")
    b.connect_ok = 100
    clock.t = 0.0
    await mon.step()
    stats["web"] = VipStats()  # the listener was recreated
    stats["web"].backend("127.0.0.1:9001").connect_errors["refused"] = 1
    clock.t = 0.3
    await mon.step()
    assert mon.record("web", ep(9001)).health.connect_failures == 1
