"""Schedulers: maglev, round_robin, least_conn, random_two."""

from __future__ import annotations

import random
from collections import Counter
from typing import get_args

import pytest

from sluice.core.endpoint import Endpoint
from sluice.core.flow import IPPROTO_TCP, FiveTuple, flow_hash
from sluice.core.maglev import build_table, diff_tables
from sluice.core.scheduler import (
    REGISTRY,
    MaglevScheduler,
    Scheduler,
    SchedulerName,
    build_scheduler,
    maglev_slots_changed,
)

A, B, C, D = (Endpoint.parse(f"127.0.0.1:{9001 + i}") for i in range(4))
V6 = Endpoint.parse("[::1]:9005")


def backends(*weights: int) -> list[tuple[Endpoint, int]]:
    addrs = [A, B, C, D, V6]
    return [(addrs[i], w) for i, w in enumerate(weights)]


def flow(i: int) -> FiveTuple:
    return FiveTuple.of(
        (f"192.0.{(i >> 8) & 255}.{i & 255}", 1024 + i % 60000), ("198.18.0.1", 443), IPPROTO_TCP
    )


FLOWS = [flow(i) for i in range(6000)]


# ---------------------------------------------------------------- registry


def test_registry_has_every_scheduler_name() -> None:
    assert set(REGISTRY) == set(get_args(SchedulerName))
    for name in get_args(SchedulerName):
        s = build_scheduler(name, backends(1, 1), table_size=13, rng=random.Random(1))
        assert s.name == name
        assert isinstance(s, REGISTRY[name])


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler("fastest", backends(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", get_args(SchedulerName))
def test_weight_zero_never_gets_a_flow(name: SchedulerName) -> None:
    s = build_scheduler(name, backends(1, 0, 2), table_size=251, rng=random.Random(5))
    picked = set()
    for f in FLOWS[:600]:
        b = s.pick(f)
        assert b is not None
        picked.add(b)
        s.on_open(b)
    assert picked == {A, C}


@pytest.mark.parametrize("name", get_args(SchedulerName))
def test_no_eligible_backend_gives_none(name: SchedulerName) -> None:
    idle = build_scheduler(name, backends(0, 0), table_size=13, rng=random.Random(1))
    assert idle.pick(flow(1)) is None
    s = build_scheduler(name, backends(1, 2, 0), table_size=13, rng=random.Random(1))
    assert s.pick(flow(1), exclude={A, B}) is None
    assert s.pick(flow(1), exclude=[A]) == B


@pytest.mark.parametrize("name", get_args(SchedulerName))
def test_exclude_is_respected(name: SchedulerName) -> None:
    s = build_scheduler(name, backends(1, 1, 1, 1), table_size=251, rng=random.Random(9))
    for f in FLOWS[:300]:
        b = s.pick(f, exclude={A, C})
        assert b in {B, D}


# ---------------------------------------------------------------- maglev


def test_maglev_is_the_table_lookup() -> None:
    bs = backends(1, 2, 3, 1, 1)
    s = build_scheduler("maglev", bs, table_size=4093)
    table = build_table([(str(a), w) for a, w in bs], 4093)
    for f in FLOWS[:2000]:
        assert str(s.pick(f)) == table.lookup(flow_hash(f))


def test_maglev_is_consistent_and_weighted() -> None:
    s = build_scheduler("maglev", backends(1, 2, 3))
    again = build_scheduler("maglev", list(reversed(backends(1, 2, 3))))
    counts = Counter(s.pick(f) for f in FLOWS)
    assert all(s.pick(f) == again.pick(f) for f in FLOWS[:1000])
    for b, w in ((A, 1), (B, 2), (C, 3)):
        assert abs(counts[b] / len(FLOWS) - w / 6) < 0.03


def test_maglev_exclude_walks_to_the_next_slots() -> None:
    s = build_scheduler("maglev", backends(1, 1, 1), table_size=31)
    table = build_table([(str(a), w) for a, w in backends(1, 1, 1)], 31)
    for f in FLOWS[:200]:
        first = s.pick(f)
        assert first is not None
        slot = flow_hash(f) % 31
        expected = next(
            table.backend_at((slot + k) % 31)
            for k in range(31)
            if table.backend_at((slot + k) % 31) != str(first)
        )
        assert str(s.pick(f, exclude={first})) == expected
        assert s.pick(f, exclude={first}) == s.pick(f, exclude={first})  # deterministic
        assert s.pick(f, exclude={A, B, C}) is None


def test_maglev_counts_do_not_change_picks() -> None:
    s = build_scheduler("maglev", backends(1, 1))
    before = [s.pick(f) for f in FLOWS[:100]]
    for _ in range(50):
        s.on_open(A)
    assert [s.pick(f) for f in FLOWS[:100]] == before


# ---------------------------------------------------------------- round robin


def test_round_robin_is_smooth_weighted() -> None:
    s = build_scheduler("round_robin", backends(5, 1, 1))
    assert [s.pick(flow(0)) for _ in range(7)] == [A, A, B, A, C, A, A]
    assert [s.pick(flow(0)) for _ in range(7)] == [A, A, B, A, C, A, A]


def test_round_robin_shares_are_exact_per_cycle() -> None:
    s = build_scheduler("round_robin", backends(3, 2, 1, 4))
    counts = Counter(s.pick(f) for f in FLOWS[:1000])  # 100 cycles of 10
    assert counts == {A: 300, B: 200, C: 100, D: 400}


def test_round_robin_equal_weights_rotate() -> None:
    s = build_scheduler("round_robin", backends(1, 1, 1))
    assert [s.pick(flow(i)) for i in range(6)] == [A, B, C, A, B, C]


def test_round_robin_exclude_does_not_advance_the_excluded() -> None:
    s = build_scheduler("round_robin", backends(1, 1))
    assert [s.pick(flow(0), exclude={A}) for _ in range(3)] == [B, B, B]
    assert [s.pick(flow(0)) for _ in range(4)] == [A, B, A, B]


# ---------------------------------------------------------------- least conn


def test_least_conn_follows_active_flows() -> None:
    s = build_scheduler("least_conn", backends(1, 1, 1))
    s.on_open(A)
    s.on_open(A)
    s.on_open(B)
    assert s.pick(flow(0)) == C
    s.on_open(C)
    s.on_open(C)
    assert s.pick(flow(0)) == B
    s.on_close(A)
    s.on_close(A)
    assert s.pick(flow(0)) == A


def test_least_conn_is_weight_aware() -> None:
    s = build_scheduler("least_conn", backends(1, 3))
    counts: Counter[Endpoint | None] = Counter()
    for f in FLOWS[:400]:
        b = s.pick(f)
        assert b is not None
        counts[b] += 1
        s.on_open(b)
    assert counts == {A: 100, B: 300}


def test_least_conn_ties_go_to_heavier_then_config_order() -> None:
    s = build_scheduler("least_conn", backends(1, 2, 2))
    assert s.pick(flow(0)) == B  # all at 0: the heavier, first of them
    s.on_open(B)
    assert s.pick(flow(0)) == C  # B at 1/2, C at 0
    s.on_open(C)
    assert s.pick(flow(0)) == A  # A at 0/1
    s.on_open(A)
    assert s.pick(flow(0)) == B  # 1/1 vs 1/2 vs 1/2: B first
    assert [s.pick(flow(0)) for _ in range(3)] == [B, B, B]  # picking alone changes nothing


def test_least_conn_bookkeeping_is_safe() -> None:
    s = build_scheduler("least_conn", backends(1, 1))
    s.on_close(A)  # nothing open: stays 0
    s.on_open(Endpoint.parse("10.9.9.9:80"))  # not ours (removed by a reload): ignored
    s.on_close(Endpoint.parse("10.9.9.9:80"))
    s.on_open(B)
    assert s.pick(flow(0)) == A
    s.on_open(A)
    s.on_open(A)
    assert s.pick(flow(0)) == B


# ---------------------------------------------------------------- random two


def test_random_two_is_deterministic_with_an_injected_rng() -> None:
    def run(seed: int) -> list[Endpoint | None]:
        s = build_scheduler("random_two", backends(1, 2, 3, 1), rng=random.Random(seed))
        out = []
        for f in FLOWS[:300]:
            b = s.pick(f)
            out.append(b)
            if b is not None:
                s.on_open(b)
            if len(out) % 3 == 0 and b is not None:
                s.on_close(b)
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_random_two_picks_the_less_loaded_of_two() -> None:
    s = build_scheduler("random_two", backends(1, 1), rng=random.Random(1))
    s.on_open(A)
    assert {s.pick(f) for f in FLOWS[:50]} == {B}  # both are always drawn: B has fewer
    s.on_open(B)
    s.on_open(B)
    assert {s.pick(f) for f in FLOWS[:50]} == {A}


def test_random_two_balances_by_weight() -> None:
    s = build_scheduler("random_two", backends(1, 1, 2, 4), rng=random.Random(7))
    for f in FLOWS[:4000]:
        b = s.pick(f)
        assert b is not None
        s.on_open(b)
    total = 4000
    for b, w in ((A, 1), (B, 1), (C, 2), (D, 4)):
        assert abs(s.active[b] / total - w / 8) < 0.02  # type: ignore[attr-defined]


def test_random_two_with_one_eligible_backend() -> None:
    s = build_scheduler("random_two", backends(0, 5), rng=random.Random(1))
    assert {s.pick(f) for f in FLOWS[:20]} == {B}


def test_scheduler_protocol_is_satisfied() -> None:
    def use(s: Scheduler) -> Endpoint | None:
        b = s.pick(flow(1))
        if b is not None:
            s.on_open(b)
            s.on_close(b)
        return b

    for name in get_args(SchedulerName):
        assert use(build_scheduler(name, backends(1, 1), rng=random.Random(0))) in {A, B}


def test_maglev_slots_changed_counts_what_diff_tables_counts() -> None:
    old = build_scheduler("maglev", backends(1, 1, 1), table_size=251)
    new = build_scheduler("maglev", backends(1, 1), table_size=251)
    assert isinstance(old, MaglevScheduler) and isinstance(new, MaglevScheduler)
    expected = diff_tables(old.table, new.table).slots_changed
    assert 0 < maglev_slots_changed(old, new) == expected
    assert maglev_slots_changed(old, build_scheduler("round_robin", backends(1))) == 0
