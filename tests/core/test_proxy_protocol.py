"""PROXY protocol v1/v2: exact bytes on build, strict parse, incremental parse, malformed inputs."""

from __future__ import annotations

import ast
import contextlib
import struct
from pathlib import Path
from typing import Any

import pytest

import sluice.core.proxy_protocol as pp
from sluice.core.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build_proxy_header,
    crc32c,
    parse_proxy_header,
)

SIG = V2_SIGNATURE
PAYLOAD = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def v2(ver_cmd: int, fam: int, block: bytes, *, length: int | None = None) -> bytes:
    """A v2 header with an explicit fixed part; `length` overrides the real block length."""
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(block) if length is None else length) + block


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


INET4_BLOCK = bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 1111, 2222)
INET6_BLOCK = bytes.fromhex("20010db8" + "00" * 11 + "01" + "20010db8" + "00" * 11 + "02") + struct.pack(
    "!HH", 80, 443
)
UNIX_BLOCK = b"/run/src.sock".ljust(108, b"\x00") + b"/run/dst.sock".ljust(108, b"\x00")
TCP4 = ProxyHeader(2, "PROXY", "TCP4", ("1.2.3.4", 1111), ("5.6.7.8", 2222))
LOCAL = ProxyHeader(2, "LOCAL", "UNKNOWN", None, None)
V1_UNKNOWN = ProxyHeader(1, "PROXY", "UNKNOWN", None, None)
# v2 PROXY TCP4 1.2.3.4:1111 -> 5.6.7.8:2222 with a CRC32C TLV (checksum 0xd17a2c97).
CRC_HEADER = bytes.fromhex("0d0a0d0a000d0a515549540a211100130102030405060708045708ae030004d17a2c97")


# ----------------------------------------------------------------------------------------------- build

BUILD_CASES: list[tuple[str, dict[str, Any], bytes]] = [
    (
        "v1-tcp4",
        {"version": 1, "source": ("192.168.0.1", 56324), "destination": ("192.168.0.11", 443)},
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    ),
    (
        "v1-tcp4-extremes",
        {"version": 1, "source": ("255.255.255.255", 65535), "destination": ("0.0.0.0", 0)},
        b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
    ),
    (
        "v1-tcp6",
        {"version": 1, "source": ("2001:db8::1", 1111), "destination": ("2001:db8::2", 2222)},
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n",
    ),
    (
        "v1-tcp6-canonicalised",
        {"version": 1, "source": ("2001:0DB8:0:0:1:0:0:1", 1), "destination": ("::FFFF:1.2.3.4", 2)},
        b"PROXY TCP6 2001:db8::1:0:0:1 ::ffff:102:304 1 2\r\n",
    ),
    (
        "v1-tcp6-single-zero-not-compressed",
        {"version": 1, "source": ("2001:db8:0:1:1:1:1:1", 1), "destination": ("::", 2)},
        b"PROXY TCP6 2001:db8:0:1:1:1:1:1 :: 1 2\r\n",
    ),
    ("v1-unknown", {"version": 1, "source": None, "destination": None}, b"PROXY UNKNOWN\r\n"),
    (
        "v2-tcp4",
        {"version": 2, "source": ("1.2.3.4", 1111), "destination": ("5.6.7.8", 2222)},
        SIG + b"\x21\x11\x00\x0c" + b"\x01\x02\x03\x04\x05\x06\x07\x08\x04\x57\x08\xae",
    ),
    (
        "v2-udp4",
        {
            "version": 2,
            "source": ("10.0.0.1", 53),
            "destination": ("10.0.0.2", 5353),
            "transport": "udp",
        },
        SIG + b"\x21\x12\x00\x0c" + b"\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x35\x14\xe9",
    ),
    (
        "v2-tcp6",
        {"version": 2, "source": ("2001:db8::1", 80), "destination": ("2001:db8::2", 443)},
        SIG
        + bytes.fromhex(
            "2121 0024 20010db8000000000000000000000001 20010db8000000000000000000000002 0050 01bb"
        ),
    ),
    (
        "v2-udp6",
        {"version": 2, "source": ("::1", 1), "destination": ("ff02::fb", 5353), "transport": "udp"},
        SIG
        + bytes.fromhex(
            "2122 0024 00000000000000000000000000000001 ff0200000000000000000000000000fb 0001 14e9"
        ),
    ),
    (
        "v2-local",
        {"version": 2, "source": None, "destination": None, "local": True},
        SIG + b"\x20\x00\x00\x00",
    ),
    (
        "v2-no-addresses-is-local",
        {"version": 2, "source": None, "destination": None},
        SIG + b"\x20\x00\x00\x00",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), [c[1:] for c in BUILD_CASES], ids=[c[0] for c in BUILD_CASES]
)
def test_build_exact_bytes(kwargs: dict[str, Any], expected: bytes) -> None:
    assert build_proxy_header(**kwargs) == expected


BUILD_ROUND_TRIPS: list[tuple[str, dict[str, Any], ProxyHeader]] = [
    (
        "v1-tcp4",
        {"version": 1, "source": ("1.2.3.4", 1111), "destination": ("5.6.7.8", 2222)},
        ProxyHeader(1, "PROXY", "TCP4", ("1.2.3.4", 1111), ("5.6.7.8", 2222)),
    ),
    (
        "v1-tcp6",
        {"version": 1, "source": ("2001:DB8::1", 1), "destination": ("::1", 2)},
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 2)),
    ),
    ("v1-unknown", {"version": 1, "source": None, "destination": None}, V1_UNKNOWN),
    (
        "v2-tcp4",
        {"version": 2, "source": ("1.2.3.4", 1111), "destination": ("5.6.7.8", 2222)},
        TCP4,
    ),
    (
        "v2-udp4",
        {"version": 2, "source": ("1.2.3.4", 0), "destination": ("5.6.7.8", 65535), "transport": "udp"},
        ProxyHeader(2, "PROXY", "UDP4", ("1.2.3.4", 0), ("5.6.7.8", 65535)),
    ),
    (
        "v2-tcp6",
        {"version": 2, "source": ("2001:db8::1", 80), "destination": ("2001:db8::2", 443)},
        ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 80), ("2001:db8::2", 443)),
    ),
    (
        "v2-udp6",
        {"version": 2, "source": ("::ffff:1.2.3.4", 1), "destination": ("::", 2), "transport": "udp"},
        ProxyHeader(2, "PROXY", "UDP6", ("::ffff:102:304", 1), ("::", 2)),
    ),
    ("v2-local", {"version": 2, "source": None, "destination": None, "local": True}, LOCAL),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), [c[1:] for c in BUILD_ROUND_TRIPS], ids=[c[0] for c in BUILD_ROUND_TRIPS]
)
def test_build_then_parse_round_trips(kwargs: dict[str, Any], expected: ProxyHeader) -> None:
    wire = build_proxy_header(**kwargs)
    assert parse_proxy_header(wire + PAYLOAD) == (expected, len(wire))


BUILD_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("mixed-families", {"version": 2, "source": ("1.2.3.4", 1), "destination": ("::1", 2)}, "IPv4 but"),
    ("mixed-families-v1", {"version": 1, "source": ("::1", 1), "destination": ("1.2.3.4", 2)}, "IPv6 but"),
    (
        "mapped-is-not-v4",
        {"version": 2, "source": ("::ffff:1.2.3.4", 1), "destination": ("1.2.3.4", 2)},
        "IPv6",
    ),
    (
        "v1-udp",
        {"version": 1, "source": ("1.2.3.4", 1), "destination": ("5.6.7.8", 2), "transport": "udp"},
        "only TCP",
    ),
    ("v1-local", {"version": 1, "source": None, "destination": None, "local": True}, "no LOCAL"),
    (
        "local-with-addresses",
        {"version": 2, "source": ("1.2.3.4", 1), "destination": ("5.6.7.8", 2), "local": True},
        "no addresses",
    ),
    ("half-addressed", {"version": 2, "source": ("1.2.3.4", 1), "destination": None}, "both"),
    ("port-too-big", {"version": 2, "source": ("1.2.3.4", 65536), "destination": ("5.6.7.8", 2)}, "port"),
    ("port-negative", {"version": 1, "source": ("1.2.3.4", 1), "destination": ("5.6.7.8", -1)}, "port"),
    ("port-bool", {"version": 1, "source": ("1.2.3.4", True), "destination": ("5.6.7.8", 2)}, "port"),
    ("hostname", {"version": 1, "source": ("example.com", 1), "destination": ("5.6.7.8", 2)}, "not an IPv4"),
    ("leading-zero-v4", {"version": 1, "source": ("01.2.3.4", 1), "destination": ("5.6.7.8", 2)}, "not an"),
    ("scope-id", {"version": 2, "source": ("fe80::1%eth0", 1), "destination": ("fe80::2", 2)}, "scope"),
    ("version-3", {"version": 3, "source": None, "destination": None}, "version"),
    ("transport-sctp", {"version": 2, "source": None, "destination": None, "transport": "sctp"}, "transport"),
]


@pytest.mark.parametrize(("kwargs", "match"), [c[1:] for c in BUILD_ERRORS], ids=[c[0] for c in BUILD_ERRORS])
def test_build_rejects_what_no_header_can_carry(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_proxy_header(**kwargs)


# ----------------------------------------------------------------------------------------------- parse

SSL_VALUE = b"\x01" + bytes(4) + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"example.com")
UNKNOWN_107 = b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n"

GOOD_HEADERS: list[tuple[str, bytes, ProxyHeader]] = [
    (
        "v1-tcp4",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    ),
    (
        "v1-tcp4-zero-port-zero-octets",
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 65535\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("0.0.0.0", 0), ("10.0.0.1", 65535)),
    ),
    (
        "v1-tcp6",
        b"PROXY TCP6 2001:db8::1 ::1 1111 2222\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1111), ("::1", 2222)),
    ),
    (
        "v1-tcp6-upper-case-hex",
        b"PROXY TCP6 2001:DB8::A ::FFFF:102:304 1 2\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::a", 1), ("::ffff:102:304", 2)),
    ),
    (
        "v1-tcp6-longest-line",
        b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n",
        ProxyHeader(1, "PROXY", "TCP6", (":".join(["ffff"] * 8), 65535), (":".join(["ffff"] * 8), 65535)),
    ),
    ("v1-unknown-short", b"PROXY UNKNOWN\r\n", V1_UNKNOWN),
    ("v1-unknown-rest-ignored", b"PROXY UNKNOWN 1.2.3.4 whatever 99999 x\r\n", V1_UNKNOWN),
    ("v1-unknown-107-bytes", UNKNOWN_107, V1_UNKNOWN),
    ("v2-tcp4", v2(0x21, 0x11, INET4_BLOCK), TCP4),
    (
        "v2-udp6",
        v2(0x21, 0x22, INET6_BLOCK),
        ProxyHeader(2, "PROXY", "UDP6", ("2001:db8::1", 80), ("2001:db8::2", 443)),
    ),
    (
        "v2-tcp4-tlvs",
        v2(0x21, 0x11, INET4_BLOCK + tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"")),
        ProxyHeader(
            2,
            "PROXY",
            "TCP4",
            ("1.2.3.4", 1111),
            ("5.6.7.8", 2222),
            ((1, b"h2"), (2, b"example.com"), (4, b"")),
        ),
    ),
    (
        "v2-ssl-tlv-with-sub-tlvs",
        v2(0x21, 0x11, INET4_BLOCK + tlv(0x20, SSL_VALUE)),
        ProxyHeader(2, "PROXY", "TCP4", ("1.2.3.4", 1111), ("5.6.7.8", 2222), ((0x20, SSL_VALUE),)),
    ),
    (
        "v2-unique-id-128",
        v2(0x21, 0x11, INET4_BLOCK + tlv(0x05, b"u" * 128)),
        ProxyHeader(2, "PROXY", "TCP4", ("1.2.3.4", 1111), ("5.6.7.8", 2222), ((5, b"u" * 128),)),
    ),
    (
        "v2-crc32c",
        CRC_HEADER,
        ProxyHeader(
            2, "PROXY", "TCP4", ("1.2.3.4", 1111), ("5.6.7.8", 2222), ((3, bytes.fromhex("d17a2c97")),)
        ),
    ),
    ("v2-local", SIG + b"\x20\x00\x00\x00", LOCAL),
    ("v2-local-block-ignored", v2(0x20, 0x11, INET4_BLOCK + b"\xff\xff"), LOCAL),
    ("v2-local-family-ignored-no-block", v2(0x20, 0x21, b""), LOCAL),
    ("v2-proxy-unspec", v2(0x21, 0x00, b"junk"), ProxyHeader(2, "PROXY", "UNKNOWN", None, None)),
    (
        "v2-unix-falls-back-to-unspec",
        v2(0x21, 0x31, UNIX_BLOCK + tlv(0x02, b"svc")),
        ProxyHeader(2, "PROXY", "UNKNOWN", None, None, ((2, b"svc"),)),
    ),
]
GOOD_IDS = [c[0] for c in GOOD_HEADERS]


@pytest.mark.parametrize(("wire", "expected"), [c[1:] for c in GOOD_HEADERS], ids=GOOD_IDS)
def test_parse_good_header_with_trailing_payload(wire: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(wire + PAYLOAD) == (expected, len(wire))
    assert parse_proxy_header(wire) == (expected, len(wire))


@pytest.mark.parametrize("wire", [c[1] for c in GOOD_HEADERS], ids=GOOD_IDS)
def test_every_prefix_of_a_good_header_needs_more(wire: bytes) -> None:
    for n in range(len(wire)):
        assert parse_proxy_header(wire[:n]) is None, f"prefix of {n} bytes"


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_accepts_every_buffer_type(kind: type[bytes] | type[bytearray] | type[memoryview]) -> None:
    wire = v2(0x21, 0x11, INET4_BLOCK)
    assert parse_proxy_header(kind(wire + PAYLOAD)) == (TCP4, len(wire))
    assert parse_proxy_header(kind(wire[:20])) is None


def test_consumed_length_locates_the_payload() -> None:
    data = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + PAYLOAD
    result = parse_proxy_header(data)
    assert result is not None
    assert data[result[1] :] == PAYLOAD


def test_v1_lowers_ipv6_hex_but_keeps_it_canonical() -> None:
    result = parse_proxy_header(b"PROXY TCP6 FE80::1 FE80::2 1 2\r\n")
    assert result is not None
    assert result[0].source == ("fe80::1", 1)


# --------------------------------------------------------------------------------------- malformed

BAD_HEADERS: list[tuple[str, bytes, str]] = [
    # signatures
    ("http-request", b"GET / HTTP/1.1\r\n", "first byte 0x47"),
    ("tls-hello", b"\x16\x03\x01\x02\x00", "first byte 0x16"),
    ("v1-lower-case", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "first byte 0x70"),
    ("v1-no-space", b"PROXYTCP4", "bad v1 signature: byte 5"),
    ("v1-typo", b"PROX TCP4", "bad v1 signature: byte 4"),
    ("v2-bad-signature-byte", SIG[:5] + b"\x01", "bad v2 signature: byte 5"),
    ("v2-signature-then-v1", b"\r\n\r\nPROXY", "bad v2 signature: byte 4"),
    # v1 framing
    ("v1-bare-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    ("v1-bare-cr", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed by LF"),
    ("v1-nul", b"PROXY TCP4 1.2.3.4\x00", "non-printable byte 0x00"),
    ("v1-non-ascii", b"PROXY UNKNOWN \xc3\xa9\r\n", "non-printable byte 0xc3"),
    ("v1-tab", b"PROXY TCP4\t1.2.3.4", "non-printable byte 0x09"),
    ("v1-108-bytes", UNKNOWN_107[:-2] + b"f\r\n", "no CRLF within its first 107 bytes"),
    ("v1-108-bytes-no-crlf", b"PROXY UNKNOWN " + b"x" * 94, "no CRLF within its first 107 bytes"),
    # v1 tokens
    ("v1-unknown-protocol", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol 'U"),
    ("v1-empty-protocol", b"PROXY \r\n", "protocol"),
    ("v1-unknown-glued", b"PROXY UNKNOWNX\r\n", "protocol 'UNKNOWNX'"),
    ("v1-tcp4-lower", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol 't"),
    ("v1-missing-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "exactly 4 fields"),
    ("v1-extra-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more than 4 fields"),
    ("v1-double-space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "destination address is empty"),
    ("v1-two-spaces-after-proxy", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "protocol ''"),
    ("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "more than 4 fields"),
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "source port '01'.* leading zero"),
    ("v1-port-double-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "destination port '00'.* leading zero"),
    ("v1-port-65536", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
    ("v1-port-six-digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "not a decimal port"),
    ("v1-port-sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "not a decimal port"),
    ("v1-port-hex", b"PROXY TCP6 ::1 ::2 1 ff\r\n", "not a decimal port"),
    ("v1-ipv4-leading-zero", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-ipv4-octet-256", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-ipv4-three-octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-ipv4-too-long", b"PROXY TCP4 100.100.100.1000 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-tcp4-with-ipv6", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "TCP4 line has an IPv6 source address '::1'"),
    (
        "v1-tcp6-with-ipv4",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "TCP6 line has an IPv4 source address '1.2.3.4'",
    ),
    ("v1-tcp6-with-ipv4-dest", b"PROXY TCP6 ::1 1234 1 2\r\n", "not an IPv6 address"),
    ("v1-ipv6-uncompressed", b"PROXY TCP6 2001:db8:0:0:0:0:0:1 ::1 1 2\r\n", "canonical form"),
    ("v1-ipv6-leading-zeros", b"PROXY TCP6 2001:0db8::1 ::1 1 2\r\n", "canonical form"),
    ("v1-ipv6-single-zero-compressed", b"PROXY TCP6 2001:db8::1:1:1:1:1 ::1 1 2\r\n", "canonical form"),
    ("v1-ipv6-dotted", b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n", "expected '::ffff:102:304'"),
    ("v1-ipv6-scope", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "'fe80::1%eth0' is not in canonical form"),
    ("v1-ipv6-two-double-colons", b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "not an IPv6 address"),
    # v2 fixed header
    ("v2-version-1", SIG + b"\x11\x11", "version nibble is 1"),
    ("v2-version-3", SIG + b"\x31", "version nibble is 3"),
    ("v2-command-2", SIG + b"\x22", "command 2"),
    ("v2-command-f", SIG + b"\x2f\x11\x00\x0c", "command 15"),
    ("v2-family-4", SIG + b"\x21\x41", "family/protocol byte 0x41"),
    ("v2-proto-3", SIG + b"\x21\x13", "family/protocol byte 0x13"),
    ("v2-inet-unspec-proto", SIG + b"\x21\x10", "family/protocol byte 0x10"),
    ("v2-local-bad-family", SIG + b"\x20\x45\x00\x00", "family/protocol byte 0x45"),
    ("v2-too-long", SIG + b"\x21\x11\x02\x09", "537 bytes, over the 536-byte limit"),
    ("v2-max-len", SIG + b"\x21\x00\xff\xff", "over the 536-byte limit"),
    # v2 address block and TLVs
    ("v2-tcp4-short-block", v2(0x21, 0x11, INET4_BLOCK[:11]), "is 11 bytes, family 0x11 needs at least 12"),
    ("v2-tcp6-v4-sized-block", v2(0x21, 0x21, INET4_BLOCK), "is 12 bytes, family 0x21 needs at least 36"),
    ("v2-udp6-empty-block", SIG + b"\x21\x22\x00\x00", "is 0 bytes, family 0x22 needs at least 36"),
    ("v2-unix-short-block", v2(0x21, 0x32, UNIX_BLOCK[:200]), "family 0x32 needs at least 216"),
    ("v2-tlv-truncated-head", v2(0x21, 0x11, INET4_BLOCK + b"\x01\x00"), "truncated: 2 bytes left"),
    ("v2-tlv-overruns", v2(0x21, 0x11, INET4_BLOCK + b"\x01\x00\x05abc"), "declares 5 bytes but only 3"),
    (
        "v2-tlv-overruns-by-one",
        v2(0x21, 0x11, INET4_BLOCK + b"\x01\x00\x04abc"),
        "declares 4 bytes but only 3",
    ),
    (
        "v2-second-tlv-overruns",
        v2(0x21, 0x11, INET4_BLOCK + tlv(0x01, b"h2") + b"\x02\x00\x10x"),
        "offset 5 declares 16 bytes but only 1",
    ),
    ("v2-crc-wrong", CRC_HEADER[:-1] + b"\x00", "CRC32C is 0xd17a2c00"),
    ("v2-crc-short", v2(0x21, 0x11, INET4_BLOCK + tlv(0x03, b"\x00\x00")), "CRC32C TLV is 2 bytes"),
    ("v2-unique-id-129", v2(0x21, 0x11, INET4_BLOCK + tlv(0x05, b"u" * 129)), "UNIQUE_ID TLV is 129 bytes"),
    ("v2-ssl-short", v2(0x21, 0x11, INET4_BLOCK + tlv(0x20, b"\x01\x00")), "SSL TLV is 2 bytes"),
    (
        "v2-ssl-sub-tlv-overruns",
        v2(0x21, 0x11, INET4_BLOCK + tlv(0x20, b"\x01" + bytes(4) + b"\x21\x00\x09TLS")),
        "SSL sub-TLV type 0x21",
    ),
]


@pytest.mark.parametrize(("data", "match"), [c[1:] for c in BAD_HEADERS], ids=[c[0] for c in BAD_HEADERS])
def test_malformed_header_is_an_error(data: bytes, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(data + PAYLOAD)
    # The error does not depend on bytes after the header: the bare header already fails or is
    # at most an incomplete prefix (never a success).
    with contextlib.suppress(ProxyHeaderError):
        assert parse_proxy_header(data) is None


def test_enough_malformed_cases() -> None:
    assert len(BAD_HEADERS) >= 25


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"X", "first byte"),
        (b"PX", "bad v1 signature: byte 1"),
        (b"\r\n\r\n\x00\r\n\x51\x55\x49\x54\x0b", "bad v2 signature: byte 11"),
        (SIG + b"\x31", "version nibble"),
        (SIG + b"\x21\x44", "family"),
        (SIG + b"\x21\x11\x00\x0b", "needs at least 12"),
        (SIG + b"\x21\x11\x02\x09", "over the 536-byte limit"),
        (b"PROXY TCP5", "protocol 'TCP5'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "leading zero"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "more than 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r", "exactly 4 fields"),
        (b"PROXY TCP4 01.2.3.4 ", "not an IPv4 address"),
        (b"PROXY TCP6 ::g", "cannot be an IPv6"),
    ],
)
def test_error_is_raised_before_the_header_is_complete(data: bytes, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(data)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0",  # "0" may be the whole source port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",  # a complete line waiting for its LF
        b"PROXY UNKNOWN anything at all\r",
    ],
)
def test_valid_prefix_is_not_rejected_early(data: bytes) -> None:
    assert parse_proxy_header(data) is None


def test_max_length_bounds_v2() -> None:
    wire = v2(0x21, 0x11, INET4_BLOCK + tlv(0xE0, bytes(509)))  # 16 + 12 + 3 + 509 = 540 bytes
    with pytest.raises(ProxyHeaderError, match="540 bytes, over the 536-byte limit"):
        parse_proxy_header(wire[:16])
    result = parse_proxy_header(wire, max_length=540)
    assert result is not None
    assert result[1] == 540
    with pytest.raises(ProxyHeaderError, match="over the 539-byte limit"):
        parse_proxy_header(wire, max_length=539)


def test_max_length_bounds_v1() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert len(line) == 47
    assert parse_proxy_header(line, max_length=47) == (
        ProxyHeader(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
        47,
    )
    with pytest.raises(ProxyHeaderError, match="no CRLF within its first 46 bytes"):
        parse_proxy_header(line, max_length=46)
    assert parse_proxy_header(line[:45], max_length=46) is None


def test_max_length_below_the_v2_fixed_part_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        parse_proxy_header(b"PROXY UNKNOWN\r\n", max_length=15)


def test_empty_input_needs_more() -> None:
    assert parse_proxy_header(b"") is None


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value
    assert crc32c(b"") == 0


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(pp.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    outside_core = {name.split(".")[0] for name in imported if not name.startswith("sluice.core.")}
    assert outside_core <= {"__future__", "dataclasses", "ipaddress", "struct", "typing"}
    assert imported - outside_core == {"sluice.core.proxy_tlv"}
