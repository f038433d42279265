"""core/quic.py: the server ID in a QUIC connection ID, and where a datagram goes by it."""

from __future__ import annotations

import pytest

from sluice.core.endpoint import Endpoint
from sluice.core.quic import (
    LONG_HEADER,
    MIN_CID_LEN,
    NOT_ROUTABLE,
    ServerIds,
    build_short_header_cid,
    read_server_id,
)

A = Endpoint.parse("127.0.0.1:4001")
B = Endpoint.parse("127.0.0.1:4002")


def short(cid: bytes, payload: bytes = b"\x17" * 20) -> bytes:
    return b"\x40" + cid + payload  # fixed bit set, short header


# (description, datagram, server_id_bits, expected)
FIXTURES = [
    ("empty datagram", b"", 16, LONG_HEADER),
    ("long header Initial", b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" * 30, 16, LONG_HEADER),
    (
        "long header with a v1 CID is still hashed",
        b"\xc0\x00\x00\x00\x01\x08" + b"\x40\x07" + bytes(30),
        16,
        LONG_HEADER,
    ),
    ("version negotiation (long)", b"\x80\x00\x00\x00\x00", 8, LONG_HEADER),
    (
        "katran layout, 16 bits",
        short(bytes([0x40 | 0x01, 0x23, 0x40]) + bytes(5)),
        16,
        (0x01 << 10) | (0x23 << 2) | 1,
    ),
    ("16 bits, all ones", short(b"\x7f\xff\xc0" + bytes(5)), 16, 0xFFFF),
    ("8 bits", short(bytes([0x40 | 0x2A >> 2, (0x2A & 3) << 6]) + bytes(6)), 8, 0x2A),
    ("1 bit", short(b"\x60" + bytes(7)), 1, 1),
    ("30 bits", short(b"\x40\x00\x00\x05" + bytes(4)), 30, 5),
    ("free bits after the id are ignored", short(b"\x47\x3f\xff\xff" + bytes(4)), 8, 0x1C),
    ("short header, CID version 0", short(b"\x00\x07\x00" + bytes(5)), 16, NOT_ROUTABLE),
    ("short header, CID version 2", short(b"\x80\x07\x00" + bytes(5)), 16, NOT_ROUTABLE),
    ("short header, CID version 3", short(b"\xc0\x07\x00" + bytes(5)), 16, NOT_ROUTABLE),
    ("short header, server id 0", short(b"\x40\x00\x00" + bytes(5)), 16, NOT_ROUTABLE),
    ("truncated: first byte only", b"\x40", 16, NOT_ROUTABLE),
    ("truncated: 4 CID bytes", b"\x40\x40\x07\x00\x00", 16, NOT_ROUTABLE),
    ("truncated: 7 CID bytes", b"\x40" + b"\x40\x07" + bytes(5), 16, NOT_ROUTABLE),
    ("exactly 8 CID bytes, no payload", b"\x40" + b"\x47\x00" + bytes(6), 8, 0x1C),
]


@pytest.mark.parametrize(
    ("datagram", "bits", "expected"), [f[1:] for f in FIXTURES], ids=[f[0] for f in FIXTURES]
)
def test_read_server_id(datagram: bytes, bits: int, expected: int) -> None:
    assert read_server_id(datagram, bits) == expected
    assert read_server_id(memoryview(datagram), bits) == expected


@pytest.mark.parametrize("bits", [1, 2, 7, 8, 12, 16, 24, 30])
def test_build_then_read_round_trips(bits: int) -> None:
    for server_id in {1, (1 << bits) - 1, max(1, (1 << bits) // 3)}:
        cid = build_short_header_cid(server_id, bits, b"\xff\xee")
        assert len(cid) == MIN_CID_LEN + 2
        assert read_server_id(b"\x41" + cid, bits) == server_id


def test_katran_v1_layout_matches() -> None:
    """With 16 bits our layout is Katran's CID version 1."""
    for c0, c1, c2 in [(0x41, 0x02, 0x03), (0x7F, 0xAB, 0xCD), (0x40, 0x00, 0x40)]:
        katran = ((c0 & 0x3F) << 10) | (c1 << 2) | (c2 >> 6)
        assert read_server_id(bytes([0x40, c0, c1, c2]) + bytes(5), 16) == katran


@pytest.mark.parametrize("bits", [0, -1, 31, 64])
def test_bad_bits_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="server_id_bits"):
        read_server_id(b"\x40" + bytes(8), bits)
    with pytest.raises(ValueError, match="server_id_bits"):
        build_short_header_cid(1, bits)


def test_build_refuses_an_id_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        build_short_header_cid(256, 8)


def test_route() -> None:
    ids = ServerIds.of(8, [(1, A), (2, B)])
    to_b = b"\x40" + build_short_header_cid(2, 8) + b"payload"
    assert ids.route(to_b) == ("quic_routed", B)
    assert ServerIds.of(8, [(1, A)]).route(to_b) == ("quic_fallback", None)  # B down: not listed
    assert ids.route(b"\x40" + build_short_header_cid(3, 8)) == ("quic_fallback", None)  # unknown id
    assert ids.route(b"\x40\x40") == ("quic_fallback", None)  # truncated
    assert ids.route(b"\xc0" + bytes(40)) == ("hash", None)
    assert ids.route(b"") == ("hash", None)


def test_never_raises_on_any_first_bytes() -> None:
    for first in range(256):
        for length in (1, 5, 9, 20):
            datagram = bytes([first]) + bytes([0x5A]) * (length - 1)
            got = read_server_id(datagram, 16)
            assert got == LONG_HEADER if first & 0x80 else got >= 0
