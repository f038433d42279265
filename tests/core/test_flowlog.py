"""The flow log's sans-IO core: records to plain and JSON lines, the token bucket."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from sluice.core import reasons
from sluice.core.flowlog import FlowRecord, TokenBucket, format_line, iso_timestamp

START = 1_764_637_054.123456  # 2025-12-02T00:57:34.123Z

TCP = FlowRecord(
    vip="web",
    protocol="tcp",
    client="10.0.0.7:40000",
    listen="10.0.0.1:80",
    backend="10.0.1.2:8080",
    start=START,
    duration_s=1.2345,
    bytes_to_backend=517,
    bytes_from_backend=10240,
    reason="done",
    retries=1,
)
UDP = replace(
    TCP,
    protocol="udp",
    client="[2001:db8::7]:5353",
    listen="[2001:db8::1]:53",
    backend="[2001:db8::2]:53",
    bytes_to_backend=40,
    bytes_from_backend=120,
    reason="responses",
    retries=0,
    datagrams_to_backend=1,
    datagrams_from_backend=1,
)


def test_iso_timestamp_is_utc_with_milliseconds() -> None:
    assert iso_timestamp(START) == "2025-12-02T00:57:34.123Z"
    assert datetime.fromisoformat(iso_timestamp(START)).timestamp() == pytest.approx(START, abs=0.001)


def test_plain_tcp_line_has_every_field_in_order() -> None:
    assert format_line(TCP, "plain") == (
        "2025-12-02T00:57:34.123Z vip=web proto=tcp client=10.0.0.7:40000 listen=10.0.0.1:80 "
        "backend=10.0.1.2:8080 duration=1.234 bytes_to_backend=517 bytes_from_backend=10240 "
        "reason=done retries=1"
    )


def test_plain_udp_line_carries_datagrams() -> None:
    line = format_line(UDP, "plain")
    assert "bytes_from_backend=120 datagrams_to_backend=1 datagrams_from_backend=1 reason=responses" in line
    assert "client=[2001:db8::7]:5353" in line


def test_plain_line_fields_split_on_spaces() -> None:
    record = replace(TCP, vip="a b", backend=None)
    fields = format_line(record, "plain").split(" ")
    assert fields[1] == "vip=a_b"
    assert "backend=-" in fields


def test_json_line_parses_with_typed_fields() -> None:
    data = json.loads(format_line(TCP, "json"))
    assert data == {
        "start": "2025-12-02T00:57:34.123Z",
        "vip": "web",
        "proto": "tcp",
        "client": "10.0.0.7:40000",
        "listen": "10.0.0.1:80",
        "backend": "10.0.1.2:8080",
        "duration_s": 1.2345,
        "bytes_to_backend": 517,
        "bytes_from_backend": 10240,
        "reason": "done",
        "retries": 1,
    }
    udp = json.loads(format_line(UDP, "json"))
    assert (udp["datagrams_to_backend"], udp["datagrams_from_backend"]) == (1, 1)


def test_every_close_reason_formats() -> None:
    for reason in reasons.CLOSED:
        assert f"reason={reason} " in format_line(replace(TCP, reason=reason), "plain")
        assert json.loads(format_line(replace(TCP, reason=reason), "json"))["reason"] == reason


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown flow log format 'xml'"):
        format_line(TCP, "xml")  # type: ignore[arg-type]


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10)
    assert [bucket.take(0.0) for _ in range(12)].count(True) == 10
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)  # one token came back
    assert not bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(12)].count(True) == 10  # never more than the burst


def test_bucket_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(rate=1)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert not bucket.take(5.5)
    assert bucket.take(6.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (5, 0.5)])
def test_bucket_refuses_bad_bounds(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
