"""``udp.max_queue_delay`` and the listen socket's default receive buffer sized from it."""

from __future__ import annotations

import pytest

from sluice.config import ConfigError, UdpOptions
from sluice.config.loading import parse_config_text
from sluice.config.vip import (
    DATAGRAM_TRUESIZE,
    EXPECTED_DATAGRAMS_PER_S,
    RECEIVE_BUFFER_MAX,
    RECEIVE_BUFFER_MIN,
    default_receive_buffer,
)

UDP_VIP = """\
vips:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:5353
    backends:
      - address: 127.0.0.1:9053
    udp: {udp}
"""


def udp_of(udp: str) -> UdpOptions:
    return parse_config_text(UDP_VIP.format(udp=udp)).vips[0].udp


def test_the_default_bound_is_50ms_and_sizes_the_buffer_for_it() -> None:
    udp = udp_of("{}")
    assert udp.max_queue_delay == 0.05
    assert udp.receive_buffer is None
    # 20,000 datagrams/s x 0.05 s x 2,048 bytes of truesize, halved (the kernel doubles SO_RCVBUF)
    assert udp.listen_receive_buffer == 1_024_000


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1ms", 0.001), ("2s", 2.0), ("0.25", 0.25)])
def test_the_bound_reads_as_a_duration(text: str, seconds: float) -> None:
    assert udp_of(f"{{max_queue_delay: {text}}}").max_queue_delay == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "a duration must be positive"),
        ("-5ms", "expected a duration like"),
        (".nan", "a duration must be a finite number"),
        (".inf", "a duration must be a finite number"),
        ("0.5ms", "must be 1ms to 10s, got 0.5ms"),
        ("11s", "must be 1ms to 10s, got 11000ms"),
        ("true", "expected a duration like"),
        ("fast", "expected a duration like"),
    ],
)
def test_a_bound_that_is_no_bound_is_refused(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        udp_of(f"{{max_queue_delay: {text}}}")
    assert any(e.startswith("vips[0].udp.max_queue_delay: ") and expected in e for e in err.value.errors), (
        err.value
    )


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0.05, 1_024_000),
        (0.1, 2_048_000),
        (0.2, 4_096_000),
        (0.001, RECEIVE_BUFFER_MIN),  # 20 datagrams: less than the kernel's usual default
        (0.005, RECEIVE_BUFFER_MIN),  # 102,400 bytes asked -> clamped up
        (0.25, RECEIVE_BUFFER_MAX),  # 5,120,000 -> clamped down to 4 MiB
        (10.0, RECEIVE_BUFFER_MAX),
    ],
)
def test_the_default_buffer_holds_the_bound_at_the_expected_rate(delay: float, expected: int) -> None:
    assert default_receive_buffer(delay) == expected
    unclamped = EXPECTED_DATAGRAMS_PER_S * delay * DATAGRAM_TRUESIZE / 2
    if RECEIVE_BUFFER_MIN < unclamped < RECEIVE_BUFFER_MAX:
        assert default_receive_buffer(delay) == round(unclamped)
    assert udp_of(f"{{max_queue_delay: {delay}}}").listen_receive_buffer == expected


def test_receive_buffer_overrides_the_default() -> None:
    udp = udp_of("{max_queue_delay: 20ms, receive_buffer: 8388608}")
    assert udp.listen_receive_buffer == 8_388_608
    assert udp.max_queue_delay == 0.02  # the bound still drops what waited longer
