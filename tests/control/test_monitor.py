"""The health monitor with scripted checkers, hand-made counters and a fake clock."""

from __future__ import annotations

import pytest

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


async def test_udp_replies_clear_the_streak_of_isolated_refusals() -> None:
    """The issue's nsd: a refusal now and then, each followed by dozens of replies, stays up."""
    stats = {"dns": VipStats()}
    mon, clock, _ = monitor(stats)
    mon.configure(
        make_config(backends=2, name="dns", protocol="udp", passive={"consecutive_failures": 3}, health=None)
    )
    await mon.step()
    a = stats["dns"].backend("127.0.0.1:9001")
    for i in range(1, 21):
        a.connect_errors["refused"] += 1  # ICMP port unreachable: the UDP plane's failed "connect"
        clock.t = i * 1.0
        assert await mon.step() == []
        a.datagrams_from_backend += 40
        a.datagrams_to_backend += 41
        clock.t = i * 1.0 + 0.5
        assert await mon.step() == []
        assert not mon.record("dns", ep(9001)).health.suspect
    assert mon.record("dns", ep(9001)).health.state is State.UP
    # without replies the refusals still eject it (the other backend stays)
    a.connect_errors["refused"] += 3
    clock.t = 30.0
    changes = await mon.step()
    assert [(str(c.backend), c.transition.new) for c in changes] == [("127.0.0.1:9001", State.EJECTED)]


async def test_replies_counter_reset_is_not_a_negative_delta() -> None:
    stats = {"dns": VipStats()}
    mon, clock, _ = monitor(stats)
    mon.configure(make_config(backends=2, name="dns", protocol="udp", passive={"consecutive_failures": 5}))
    stats["dns"].backend("127.0.0.1:9001").datagrams_from_backend = 100
    await mon.step()
    stats["dns"] = VipStats()  # the listener was recreated
    b = stats["dns"].backend("127.0.0.1:9001")
    b.connect_errors["refused"], b.datagrams_from_backend = 2, 1
    clock.t = 0.3
    await mon.step()
    assert not mon.record("dns", ep(9001)).health.suspect  # the one reply after the reset counts


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
async def test_a_single_backend_is_never_ejected(protocol: str) -> None:
    stats = {"web": VipStats()}
    mon, clock, _ = monitor(stats)
    passive = {"consecutive_failures": 2, "max_ejected_percent": 100}
    mon.configure(make_config(backends=1, protocol=protocol, passive=passive, health=None))
    await mon.step()
    b = stats["web"].backend("127.0.0.1:9001")
    for i in range(1, 41):
        b.connect_errors["refused"] += 10
        clock.t = i * 0.25
        assert await mon.step() == []
    health = mon.record("web", ep(9001)).health
    assert health.state is State.UP and health.suspect


async def test_the_last_usable_backend_is_not_ejected_while_the_others_are_out() -> None:
    stats = {"web": VipStats()}
    mon, clock, checks = monitor(stats)
    passive = {"consecutive_failures": 2, "max_ejected_percent": 100, "base_ejection_time": 100}
    mon.configure(make_config(backends=3, passive=passive))
    await mon.step()
    a, b = stats["web"].backend("127.0.0.1:9001"), stats["web"].backend("127.0.0.1:9002")
    checks.down.add(ep(9003))
    await run_until(mon, clock, 2.0)  # fall 2: down at the second failed check
    assert mon.record("web", ep(9003)).health.state is State.DOWN
    a.connect_errors["refused"] += 2
    b.connect_errors["refused"] += 2
    clock.t = 2.25
    changes = await mon.step()
    # both are past the threshold; the first is ejected, the second is then the last usable one
    assert [(str(ch.backend), ch.transition.new) for ch in changes] == [("127.0.0.1:9001", State.EJECTED)]
    assert mon.record("web", ep(9002)).health.state is State.UP
    # a backend at weight 0 takes no new flows: it does not count as the usable one left
    config = parse_config(
        {
            "vips": [
                {
                    "name": "web",
                    "listen": "127.0.0.1:8000",
                    "backends": [
                        {"address": "127.0.0.1:9001"},
                        {"address": "127.0.0.1:9002"},
                        {"address": "127.0.0.1:9004", "weight": 0},
                    ],
                    "passive": passive,
                }
            ]
        }
    )
    mon.configure(config)
    stats["web"].backend("127.0.0.1:9004")
    b.connect_errors["refused"] += 5
    clock.t = 2.5
    assert await mon.step() == []
    assert mon.record("web", ep(9002)).health.state is State.UP


async def test_a_backend_at_runtime_weight_zero_is_not_the_usable_one_left() -> None:
    stats = {"web": VipStats()}
    clock, checks = FakeClock(), ScriptedChecks()
    runtime = {ep(9002): 0}
    mon = Monitor(
        lambda: stats,
        clock=clock,
        checkers=checks.registry(),
        runtime_weights=lambda vip, backend: runtime.get(backend),
    )
    mon.configure(make_config(backends=2, passive={"consecutive_failures": 2, "max_ejected_percent": 100}))
    await mon.step()
    stats["web"].backend("127.0.0.1:9001").connect_errors["refused"] += 5
    clock.t = 0.25
    assert await mon.step() == []
    assert mon.record("web", ep(9001)).health.state is State.UP
    runtime[ep(9002)] = 3  # back in use: now 9001 may go
    clock.t = 0.5
    changes = await mon.step()
    assert [(str(c.backend), c.transition.new) for c in changes] == [("127.0.0.1:9001", State.EJECTED)]
