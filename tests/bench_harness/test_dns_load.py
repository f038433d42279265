"""The DNS bench's pure parts: the messages, the open-loop pacing, loss and latency percentiles."""

from __future__ import annotations

import pytest
from bench import dnsgen, dnsmsg


def test_a_response_gives_back_the_query_number_and_send_time() -> None:
    query = dnsmsg.build_query(70_000, 123_456_789_012)
    response = dnsmsg.build_response(query)
    assert len(query) == dnsmsg.QUERY_LEN == 56
    assert len(response) == 72
    assert response[:2] == query[:2] == (70_000 & 0xFFFF).to_bytes(2, "big")
    assert dnsmsg.parse_response(response) == (70_000, 123_456_789_012)


def test_a_response_is_a_dns_answer_to_its_question() -> None:
    dns = pytest.importorskip("dns.message")
    query = dnsmsg.build_query(7, 42)
    q = dns.from_wire(query)
    assert str(q.question[0].name) == f"{7:08x}-{42:016x}.bench.sluice."
    r = dns.from_wire(dnsmsg.build_response(query))
    assert r.id == 7 and r.flags & 0x8000
    assert [a.address for a in r.answer[0]] == ["198.18.0.53"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        dnsmsg.build_query(1, 2),  # a query, not a response (no QR bit)
        dnsmsg.build_response(dnsmsg.build_query(1, 2))[:40],  # cut short
        b"\x00\x02" + dnsmsg.build_response(dnsmsg.build_query(1, 2))[2:],  # id does not match the label
        dnsmsg.build_response(dnsmsg.build_query(1, 2)).replace(b"bench", b"bunch"),  # another name
    ],
)
def test_what_is_not_an_answer_to_our_query_is_refused(data: bytes) -> None:
    assert dnsmsg.parse_response(data) is None


def test_the_backend_answers_nothing_to_garbage_or_to_a_response() -> None:
    assert dnsmsg.build_response(b"junk") == b""
    assert dnsmsg.build_response(dnsmsg.build_response(dnsmsg.build_query(1, 2))) == b""


@pytest.mark.parametrize(("seq", "sent_ns"), [(-1, 0), (1 << 32, 0), (0, -1), (0, 1 << 64)])
def test_a_query_number_or_time_out_of_range_is_an_error(seq: int, sent_ns: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        dnsmsg.build_query(seq, sent_ns)


@pytest.mark.parametrize(
    ("elapsed", "rate", "total", "expected"),
    [
        (0.0, 10_000, 50_000, 1),  # query 0 is due at once
        (0.0001, 10_000, 50_000, 2),  # query 1 at 1/rate
        (0.00099, 10_000, 50_000, 10),
        (1.0, 10_000, 50_000, 10_001),
        (4.9999, 10_000, 50_000, 50_000),
        (60.0, 10_000, 50_000, 50_000),  # never more than the run's total
        (-0.5, 10_000, 50_000, 0),
        (1.0, 0, 50_000, 0),
    ],
)
def test_queries_are_due_at_i_over_rate(elapsed: float, rate: float, total: int, expected: int) -> None:
    assert dnsgen.due(elapsed, rate, total) == expected


def test_a_sender_looking_every_millisecond_sends_rate_per_millisecond() -> None:
    sent, bursts = 0, []
    for ms in range(5_001):  # 5 s at 5,000 q/s
        now_due = dnsgen.due(ms / 1000, 5_000, 25_000)
        bursts.append(now_due - sent)
        sent = now_due
    assert sent == 25_000
    assert bursts[0] == 1 and bursts[-1] == 4  # query 0 at once; the total caps the last look
    assert set(bursts[1:-1]) == {5}  # 5 per millisecond, no float wobble (4 then 6)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 50, None),
        ([5], 99, 5),
        (list(range(1, 101)), 50, 50),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 100, 100),
        (list(range(1, 11)), 99, 10),  # nearest rank: ceil(0.99 * 10) = 10th
        (list(range(1, 11)), 50, 5),
    ],
)
def test_percentile_is_the_nearest_rank(values: list[int], pct: float, expected: int | None) -> None:
    assert dnsgen.percentile(values, pct) == expected


def test_loss_counts_what_was_sent_and_not_answered_in_time() -> None:
    latencies = [1_000_000] * 98 + [3_000_000, 5_000_000]  # ns, 100 answered
    s = dnsgen.summarise(latencies, sent=200)
    assert s["loss_pct"] == 50.0
    assert s["p50_ms"] == 1.0
    assert s["p99_ms"] == 3.0
    assert s["max_ms"] == 5.0
    assert s["avg_ms"] == pytest.approx((98 + 3 + 5) / 100)


def test_nothing_answered_is_total_loss_without_latency() -> None:
    assert dnsgen.summarise([], sent=10) == {
        "loss_pct": 100.0,
        "p50_ms": None,
        "p99_ms": None,
        "avg_ms": None,
        "max_ms": None,
    }
    assert dnsgen.summarise([], sent=0)["loss_pct"] is None
