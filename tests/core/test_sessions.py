"""The session table: LRU bound, idle timeout, response counting, all on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.sessions import EVICTED, IDLE_TIMEOUT, RESPONSES, SessionClosed, SessionTable

Addr = tuple[str, int]


@dataclass
class FakeClock:
    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def client(n: int) -> Addr:
    return ("127.0.0.1", 40000 + n)


def opened(table: SessionTable[Addr, str], key: Addr, now: float) -> list[SessionClosed[Addr, str]]:
    """Open a session for `key` as the shell does on a first datagram (open, then count it)."""
    _, evicted = table.open(key, f"sock-{key[1]}", now)
    assert table.request(key, now) is not None
    return evicted


# ------------------------------------------------------------------------------------------ basics


def test_open_then_request_refreshes_and_counts() -> None:
    clock = FakeClock()
    table: SessionTable[Addr, str] = SessionTable(max_sessions=4, idle_timeout_s=10)
    assert opened(table, client(1), clock.now) == []
    session = table.request(client(1), clock.advance(3))
    assert session is not None
    assert (session.value, session.requests, session.replies) == ("sock-40001", 2, 0)
    assert (session.created, session.last_seen) == (1000.0, 1003.0)
    assert len(table) == 1 and client(1) in table and client(2) not in table


def test_unknown_keys_are_not_sessions() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=4, idle_timeout_s=10)
    assert table.request(client(1), 0.0) is None
    assert table.reply(client(1), 0.0) is None
    assert table.remove(client(1), "x") is None
    assert table.get(client(1)) is None
    assert len(table) == 0


def test_opening_an_open_key_is_an_error() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=4, idle_timeout_s=10)
    opened(table, client(1), 0.0)
    with pytest.raises(KeyError):
        table.open(client(1), "again", 0.0)


def test_the_value_can_be_replaced_in_place() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=4, idle_timeout_s=10)
    opened(table, client(1), 0.0)
    session = table.get(client(1))
    assert session is not None
    session.value = "rebalanced"
    assert table.remove(client(1), "shutdown") == SessionClosed(client(1), "rebalanced", "shutdown")


def test_keys_can_be_any_hashable() -> None:
    table: SessionTable[object, int] = SessionTable(max_sessions=3, idle_timeout_s=1)
    for key in ("dns", ("::1", 53, 0, 0), frozenset({1, 2})):
        table.open(key, 1, 0.0)
    assert len(table) == 3 and ("::1", 53, 0, 0) in table


@pytest.mark.parametrize(
    ("max_sessions", "idle", "responses"),
    [(0, 1.0, None), (-1, 1.0, None), (1, 0.0, None), (1, -2.0, None), (1, float("nan"), None), (1, 1.0, 0)],
)
def test_bad_limits_are_refused(max_sessions: int, idle: float, responses: int | None) -> None:
    with pytest.raises(ValueError):
        SessionTable(max_sessions=max_sessions, idle_timeout_s=idle, responses=responses)


# ------------------------------------------------------------------------------------ LRU bound


def test_a_full_table_evicts_the_least_recently_used() -> None:
    clock = FakeClock()
    table: SessionTable[Addr, str] = SessionTable(max_sessions=3, idle_timeout_s=100)
    for n in (1, 2, 3):
        assert opened(table, client(n), clock.advance(1)) == []
    table.request(client(1), clock.advance(1))  # 1 is now the most recent; 2 the least
    table.reply(client(3), clock.advance(1))  # replies refresh too: order 2, 1, 3
    evicted = opened(table, client(4), clock.advance(1))
    assert evicted == [SessionClosed(client(2), "sock-40002", EVICTED)]
    assert [s.key for s in table] == [client(1), client(3), client(4)]
    assert opened(table, client(5), clock.advance(1))[0].key == client(1)
    assert len(table) == 3


def test_a_flood_of_new_keys_never_grows_the_table() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=50, idle_timeout_s=100)
    evictions = 0
    for n in range(5000):
        evictions += len(opened(table, (f"127.0.{n // 256}.{n % 256}", 9), float(n)))
        assert len(table) <= 50
    assert evictions == 5000 - 50


def test_shrinking_the_bound_evicts_the_oldest() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=5, idle_timeout_s=100)
    for n in range(5):
        opened(table, client(n), float(n))
    evicted = table.configure(max_sessions=2, idle_timeout_s=100)
    assert [(e.key, e.reason) for e in evicted] == [(client(n), EVICTED) for n in (0, 1, 2)]
    assert [s.key for s in table] == [client(3), client(4)]
    assert table.configure(max_sessions=10, idle_timeout_s=5, responses=1) == []
    assert (table.max_sessions, table.idle_timeout_s, table.responses) == (10, 5, 1)


# ------------------------------------------------------------------------------------ idle timeout


def test_sessions_expire_after_the_idle_timeout_and_not_before() -> None:
    clock = FakeClock()
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30)
    assert table.next_deadline() is None
    opened(table, client(1), clock.now)
    opened(table, client(2), clock.advance(10))
    assert table.next_deadline() == 1030.0
    assert table.expire(clock.advance(19.999)) == []
    assert table.expire(clock.advance(0.001)) == [SessionClosed(client(1), "sock-40001", IDLE_TIMEOUT)]
    assert table.next_deadline() == 1040.0
    assert table.expire(clock.advance(1000)) == [SessionClosed(client(2), "sock-40002", IDLE_TIMEOUT)]
    assert len(table) == 0 and table.next_deadline() is None


def test_traffic_either_way_keeps_a_session_alive() -> None:
    clock = FakeClock()
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30)
    opened(table, client(1), clock.now)
    for _ in range(10):
        table.request(client(1), clock.advance(20))
        assert table.expire(clock.now) == []
        table.reply(client(1), clock.advance(20))
        assert table.expire(clock.now) == []
    assert table.next_deadline() == clock.now + 30
    assert [e.reason for e in table.expire(clock.advance(30))] == [IDLE_TIMEOUT]


def test_expire_takes_every_idle_session_in_one_call() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=100, idle_timeout_s=5)
    for n in range(20):
        opened(table, client(n), float(n))
    closed = table.expire(14.0)  # last_seen 0..9 are >= 5 s old at 14
    assert [e.key for e in closed] == [client(n) for n in range(10)]
    assert table.next_deadline() == 15.0


def test_a_shorter_idle_timeout_applies_to_open_sessions() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=120)
    opened(table, client(1), 0.0)
    table.configure(max_sessions=10, idle_timeout_s=1)
    assert [e.reason for e in table.expire(1.0)] == [IDLE_TIMEOUT]


# ----------------------------------------------------------------------------------- responses


def test_one_response_ends_a_dns_like_session() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30, responses=1)
    opened(table, client(1), 0.0)
    assert table.reply(client(1), 0.1) == SessionClosed(client(1), "sock-40001", RESPONSES)
    assert len(table) == 0


def test_responses_are_expected_per_client_datagram() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30, responses=2)
    opened(table, client(1), 0.0)
    table.request(client(1), 0.0)  # two queries in flight: 4 replies expected
    for _ in range(3):
        assert table.reply(client(1), 0.1) is None
    closed = table.reply(client(1), 0.2)
    assert closed is not None and closed.reason == RESPONSES


def test_without_a_response_limit_replies_never_end_a_session() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30)
    opened(table, client(1), 0.0)
    assert all(table.reply(client(1), 0.0) is None for _ in range(100))
    session = table.get(client(1))
    assert session is not None and session.replies == 100


def test_remove_and_clear_report_the_shells_reason() -> None:
    table: SessionTable[Addr, str] = SessionTable(max_sessions=10, idle_timeout_s=30)
    for n in range(3):
        opened(table, client(n), 0.0)
    assert table.remove(client(0), "no_backend") == SessionClosed(client(0), "sock-40000", "no_backend")
    assert [(e.key, e.reason) for e in table.clear("shutdown")] == [
        (client(1), "shutdown"),
        (client(2), "shutdown"),
    ]
    assert len(table) == 0


# ------------------------------------------------------------------------------ model-based check

OPS = st.lists(
    st.tuples(st.sampled_from(["open", "request", "reply", "tick", "expire"]), st.integers(0, 7)),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, max_sessions=st.integers(1, 5), responses=st.sampled_from([None, 1, 2]))
def test_every_session_ends_exactly_once_and_bounds_hold(
    ops: list[tuple[str, int]], max_sessions: int, responses: int | None
) -> None:
    """Random traffic: the table stays bounded, nothing idle survives `expire`, and each opened
    session is either still in the table or was reported closed exactly once."""
    table: SessionTable[int, int] = SessionTable(max_sessions, idle_timeout_s=3.0, responses=responses)
    now, generation = 0.0, 0
    live: set[tuple[int, int]] = set()  # (key, generation of its value)
    events: list[SessionClosed[int, int]] = []
    for op, key in ops:
        if op == "open" and key not in table:
            generation += 1
            _, evicted = table.open(key, generation, now)
            table.request(key, now)
            live.add((key, generation))
            events += evicted
        elif op == "request":
            table.request(key, now)
        elif op == "reply" and (closed := table.reply(key, now)) is not None:
            events.append(closed)
        elif op == "tick":
            now += key / 2
        elif op == "expire":
            events += table.expire(now)
            assert all(s.last_seen + 3.0 > now for s in table)
        assert len(table) <= max_sessions
    ended = [(e.key, e.value) for e in events]
    assert len(ended) == len(set(ended))
    assert set(ended) | {(s.key, s.value) for s in table} == live
    assert not set(ended) & {(s.key, s.value) for s in table}


def test_bytes_are_counted_and_an_ended_session_carries_its_counts() -> None:
    """What the flow log reads: bytes and datagrams each way, and when the session was opened."""
    table: SessionTable[Addr, str] = SessionTable(max_sessions=4, idle_timeout_s=10.0, responses=2)
    table.open(client(1), "sock", 5.0)
    table.request(client(1), 5.0, 40)
    assert table.reply(client(1), 6.0, 100) is None
    closed = table.reply(client(1), 7.0, 23)
    assert closed is not None and closed.reason == RESPONSES
    session = closed.session
    assert session is not None
    assert (session.created, session.requests, session.replies) == (5.0, 1, 2)
    assert (session.bytes_in, session.bytes_out) == (40, 123)
    table.open(client(2), "sock2", 8.0)
    table.request(client(2), 8.0, 7)
    [expired] = table.expire(100.0)
    assert expired.session is not None and expired.session.bytes_in == 7
