"""Differential tests of proxy_header.c against core/proxy_protocol.py (the oracle): the parse outcome
(complete / incomplete / invalid, bytes consumed, family, addresses) on a generated corpus, and the
built bytes."""

from __future__ import annotations

import ctypes
import re
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluice.core.proxy_protocol import (
    DEFAULT_MAX_LENGTH,
    ProxyHeaderError,
    build_proxy_header,
    parse_proxy_header,
)

from .cbuild import ENGINE_DIR, ProxyAddrs, c_parse, engine_c, python_parse

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_LENGTHS = (16, 17, 27, 28, 29, 51, 52, 53, 100, 106, 107, 108, 200, 252, 536, 700)
"""max_length values around the sizes that matter: v2 fixed part, IPv4/IPv6 blocks, the v1 limit."""
WHOLE = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PREFIXES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Examples per corpus test: whole headers are cheap; the prefix test parses every prefix."""


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def assert_agree(data: bytes, max_length: int) -> None:
    assert c_parse(data, max_length) == python_parse(data, max_length), (data, max_length)


def test_max_length_default_is_the_c_constant() -> None:
    header = (ENGINE_DIR / "proxy_header.h").read_text()
    match = re.search(r"#define PROXY_HEADER_MAX (\d+)", header)
    assert match and int(match.group(1)) == DEFAULT_MAX_LENGTH


# ------------------------------------------------------------------------------------- the corpus

ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.one_of(
    st.ip_addresses(v=6),
    st.sampled_from(["::", "::1", "1::", "0:0:1::", "1:0:0:1::", "::ffff:1.2.3.4", "1:0:0:2:0:0:0:3"]).map(
        IPv6Address
    ),
)


def _v6_text_forms(addr: IPv6Address) -> list[str]:
    hextets = struct.unpack("!8H", addr.packed)
    return [
        str(addr),
        str(addr).upper(),
        addr.exploded,  # leading zeros: not canonical
        ":".join(f"{h:x}" for h in hextets),  # no "::": canonical only without a zero run
    ]


@st.composite
def v1_address_text(draw: st.DrawFn, version: int) -> str:
    if version == 4:
        addr = draw(ipv4)
        return draw(
            st.sampled_from([str(addr), str(addr).replace(".", ".0", 1), f"{addr}.1", str(addr)[:-1]])
        )
    return draw(st.sampled_from(_v6_text_forms(IPv6Address(draw(ipv6)))))


V1_TOKENS = [
    "TCP4",
    "TCP6",
    "UNKNOWN",
    "TCP",
    "UDP4",
    "",
    "0",
    "00",
    "01",
    "65535",
    "65536",
    "99999",
    "123456",
    "1.2.3.4",
    "01.2.3.4",
    "256.1.1.1",
    "::",
    "::1",
    ":::",
    "1::2::3",
    "FE80::1",
    "fe80::01",
    "::ffff:1.2.3.4",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::",
    "1:0:0:0:0:0:0:8",
    "x",
    "255.255.255.255",
    "255.255.255.2555",  # 16 characters: too long for IPv4 even as a prefix
    "0000:0000:0000:0000:0000:0000:0000:0000",
    "0000:0000:0000:0000:0000:0000:0000:00000",  # 40 characters: too long for IPv6
]


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    """A v1 line: valid (canonical or not), or fields drawn from tricky tokens."""
    if draw(st.booleans()):
        version = draw(st.sampled_from([4, 6]))
        fields = [
            f"TCP{version}",
            draw(v1_address_text(version)),
            draw(v1_address_text(version)),
            str(draw(ports)),
            str(draw(ports)),
        ]
    else:
        fields = draw(st.lists(st.sampled_from(V1_TOKENS), min_size=0, max_size=7))
    return (
        b"PROXY " + " ".join(fields).encode() + draw(st.sampled_from([b"\r\n", b"\r\n", b"\r", b"\n", b""]))
    )


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


SPECIMEN_TLVS = [
    _tlv(0x04, b""),  # NOOP
    _tlv(0x05, b""),
    _tlv(0x05, bytes(128)),  # UNIQUE_ID at its limit
    _tlv(0x05, bytes(129)),  # one over
    _tlv(0x20, bytes(5)),  # SSL: the 5-byte prefix alone
    _tlv(0x20, bytes(4)),  # too short for it
    _tlv(0x20, bytes(5) + _tlv(0x21, b"TLSv1.3")),
    _tlv(0x20, bytes(5) + _tlv(0x21, b"x") + _tlv(0x22, b"")),
    _tlv(0x20, bytes(5) + b"\x21\x00\x08abc"),  # a sub-TLV longer than what is left
    _tlv(0x20, bytes(5) + b"\x21\x00"),  # a truncated sub-TLV head
]
"""TLVs at the edges of the content rules (UNIQUE_ID <= 128 bytes, SSL prefix and sub-TLVs)."""


@st.composite
def tlvs(draw: st.DrawFn) -> bytes:
    """A few TLVs without content rules around one at the edge of a rule."""
    plain = [_tlv(draw(st.sampled_from([0x01, 0x02, 0x30, 0xEE])), draw(st.binary(max_size=20)))]
    items = plain * draw(st.integers(0, 1)) + draw(st.lists(st.sampled_from(SPECIMEN_TLVS), max_size=2))
    return b"".join(draw(st.permutations(items)))


FAMILY_BLOCK = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
"""v2 fam byte -> address block size."""


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    """A v2 header: mostly well framed (PROXY, a known family, its block), else any command/family;
    TLVs and a right, wrong, duplicated or short CRC32C."""
    if draw(st.integers(0, 3)) > 0:
        command = draw(st.sampled_from([0x21, 0x21, 0x21, 0x20]))
        fam = draw(st.sampled_from([0x11, 0x12, 0x21, 0x22, 0x11, 0x21, 0x31, 0x00]))
        size = FAMILY_BLOCK[fam]
    else:
        command = draw(st.sampled_from([0x20, 0x21, 0x22, 0x11]))
        fam = draw(st.sampled_from([*FAMILY_BLOCK, 0x13, 0x41]))
        size = max(0, FAMILY_BLOCK.get(fam, 0) - draw(st.integers(0, 4)))  # maybe too short
    block = draw(st.binary(min_size=size, max_size=size))
    rest = draw(tlvs())
    crc = draw(st.sampled_from(["none", "none", "right", "right", "wrong", "twice", "short"]))
    at = draw(st.integers(0, len(rest)))
    if crc == "short":
        rest = rest[:at] + b"\x03\x00\x02\x00\x00" + rest[at:]
    elif crc != "none":
        rest = rest[:at] + b"\x03\x00\x04\x00\x00\x00\x00" * (2 if crc == "twice" else 1) + rest[at:]
    # where `at` falls inside a TLV the framing breaks: one more invalid case
    body = block + rest
    header = V2_SIGNATURE + bytes([command, fam]) + struct.pack("!H", len(body)) + body
    if crc in ("right", "wrong"):
        offset = 16 + len(block) + at + 3
        value = crc32c(header) ^ (0 if crc == "right" else 1 << draw(st.integers(0, 31)))
        header = header[:offset] + struct.pack("!I", value) + header[offset + 4 :]
    return header


@st.composite
def built_headers(draw: st.DrawFn) -> bytes:
    """build_proxy_header's output for v1/v2, v4/v6, tcp/udp and the address-less forms."""
    version: Literal[1, 2] = draw(st.sampled_from([1, 2]))
    if draw(st.integers(0, 5)) == 0:
        return build_proxy_header(version, None, None)
    addrs = ipv4 if draw(st.booleans()) else ipv6
    source = (str(draw(addrs)), draw(ports))
    destination = (str(draw(addrs) if addrs is ipv4 else draw(ipv6)), draw(ports))
    transport: Literal["tcp", "udp"] = "tcp" if version == 1 else draw(st.sampled_from(["tcp", "udp"]))
    return build_proxy_header(version, source, destination, transport)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A header, then truncated, mutated (bytes replaced, inserted, removed) and/or extended."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from([0x20, 0x0D, 0x0A, 0x3A, 0x2E, 0x30, 0x41, 0x00, 0xFF, 0x7F, 0x03]))
        byte = draw(st.one_of(st.just(byte), st.integers(0, 255)))
        if op == "replace" and at < len(data):
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif op == "delete" and at < len(data):
            del data[at]
        elif op == "truncate":
            del data[at:]
        elif op == "append":
            data += draw(st.binary(max_size=40))
    return bytes(data)


corpus = mutated(st.one_of(v1_lines(), v2_headers(), built_headers()))
max_lengths = st.one_of(st.sampled_from(MAX_LENGTHS), st.integers(16, 1000))


@WHOLE
@given(st.one_of(v1_lines(), v2_headers(), built_headers()), max_lengths)
def test_c_parse_agrees_with_python_on_whole_headers(data: bytes, max_length: int) -> None:
    """Unmutated headers (most valid), alone and followed by payload."""
    assert_agree(data, max_length)
    assert_agree(data + b"payload\r\n", max_length)


@PREFIXES
@given(corpus, max_lengths)
@example(b"", 16)
@example(b"PROXY UNKNOWN\r\n", 16)
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 31)
@example(b"PROXY TCP6 ::1 ::2 1 2\r\n", 536)
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12), 28)
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12), 27)
def test_c_parse_agrees_with_python_on_every_prefix(data: bytes, max_length: int) -> None:
    """Each input, and every prefix of it (what a reader sees as bytes arrive)."""
    for end in range(len(data) + 1):
        assert_agree(data[:end], max_length)


def test_generated_corpus_covers_complete_incomplete_and_invalid() -> None:
    """A fixed sample of the corpus hits every outcome and every family (the corpus is not vacuous)."""
    seen: set[tuple[str, int]] = set()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(st.one_of(v1_lines(), v2_headers(), built_headers()))
    def collect(data: bytes) -> None:
        kind, _, family, *_ = python_parse(data, DEFAULT_MAX_LENGTH)
        seen.add((kind, family))
        kind, *_ = python_parse(data[: len(data) // 2], DEFAULT_MAX_LENGTH)
        seen.add((kind, 0))

    collect()
    assert {("complete", 0), ("complete", 4), ("complete", 6), ("incomplete", 0), ("invalid", 0)} <= seen


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65535\r\nGET", ("complete", 36, 4)),
        (b"PROXY TCP6 FE80::1 ::ffff:102:304 0 1\r\n", ("complete", 39, 6)),
        (b"PROXY UNKNOWN whatever\r\n", ("complete", 24, 0)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", ("incomplete", 0, 0)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 02\r", ("invalid", 0, 0)),
        (b"PROXY TCP6 fe80::01 ::1 1 2\r\n", ("invalid", 0, 0)),
        (b"PROXY TCP4 1.2", ("incomplete", 0, 0)),
        (b"PROXY TCP4 1.2:", ("invalid", 0, 0)),
        (V2_SIGNATURE + b"\x20\x00\x00\x00", ("complete", 16, 0)),
        (V2_SIGNATURE + b"\x21\x22\x00\x24" + bytes(36), ("complete", 52, 6)),
        (V2_SIGNATURE + b"\x21\x31\x00\x10" + bytes(16), ("invalid", 0, 0)),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(11), ("incomplete", 0, 0)),
        (b"GET / HTTP/1.1\r\n", ("invalid", 0, 0)),
    ],
)
def test_c_parse_known_answers(data: bytes, want: tuple[str, int, int]) -> None:
    """Hand-checked answers, so a shared misreading of the spec would not pass unnoticed."""
    got = c_parse(data, DEFAULT_MAX_LENGTH)
    assert got[:3] == want
    assert got == python_parse(data, DEFAULT_MAX_LENGTH)


def test_c_parse_reads_nothing_past_len() -> None:
    """A header cut short inside a bigger buffer: only the first `len` bytes count."""
    full = build_proxy_header(2, ("10.0.0.1", 1), ("10.0.0.2", 2))
    buf = (ctypes.c_uint8 * len(full)).from_buffer_copy(full)
    out = ProxyAddrs()
    for cut in range(len(full)):
        assert engine_c().proxy_header_parse(buf, cut, DEFAULT_MAX_LENGTH, ctypes.byref(out)) == 0
    assert engine_c().proxy_header_parse(buf, len(full), DEFAULT_MAX_LENGTH, ctypes.byref(out)) == len(full)


# ------------------------------------------------------------------------------------------ build


def c_build(
    version: int, udp: bool, family: int, src: bytes, src_port: int, dst: bytes, dst_port: int
) -> bytes:
    addrs = ProxyAddrs(family=family, src_port=src_port, dst_port=dst_port)
    addrs.src[:] = list(src.ljust(16, b"\0"))
    addrs.dst[:] = list(dst.ljust(16, b"\0"))
    out = (ctypes.c_uint8 * 200)()
    n = int(engine_c().proxy_header_build(out, len(out), version, int(udp), ctypes.byref(addrs)))
    if n < 0:
        return b""
    # the exact size fits; one byte less does not
    tight = (ctypes.c_uint8 * n)()
    assert engine_c().proxy_header_build(tight, n, version, int(udp), ctypes.byref(addrs)) == n
    assert bytes(tight) == bytes(out)[:n]
    if n > 0:
        assert engine_c().proxy_header_build(tight, n - 1, version, int(udp), ctypes.byref(addrs)) == -1
    return bytes(out)[:n]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([1, 2]),
    st.sampled_from(["tcp", "udp"]),
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
)
@example(
    1, "tcp", (IPv6Address("1:2:3:4:5:6:7:8"), IPv6Address("ffff:ffff::ffff:ffff:ffff:ffff")), 65535, 65535
)
@example(1, "tcp", (IPv6Address("0:0:1::"), IPv6Address("1:0:0:2:0:0:0:3")), 0, 1)
@example(2, "udp", (IPv4Address("255.255.255.255"), IPv4Address("0.0.0.0")), 0, 0)
def test_c_build_equals_python_byte_for_byte(
    version: Literal[1, 2],
    transport: Literal["tcp", "udp"],
    pair: tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address],
    src_port: int,
    dst_port: int,
) -> None:
    src, dst = pair
    got = c_build(version, transport == "udp", src.version, src.packed, src_port, dst.packed, dst_port)
    try:
        want = build_proxy_header(version, (str(src), src_port), (str(dst), dst_port), transport)
    except ValueError:
        assert version == 1 and transport == "udp"
        assert got == b""
        return
    assert got == want
    header, consumed = parse_proxy_header(got) or pytest.fail("the built header does not parse")
    assert consumed == len(got)
    assert header.source is not None and ip_address(header.source[0]) == src


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_c_build_without_addresses_equals_python(
    version: Literal[1, 2], transport: Literal["tcp", "udp"]
) -> None:
    """family 0: v1 "PROXY UNKNOWN" (whatever the transport, as Python does), v2 LOCAL."""
    want = build_proxy_header(version, None, None, transport)
    assert c_build(version, transport == "udp", 0, b"", 0, b"", 0) == want


@pytest.mark.parametrize(
    ("version", "udp", "family"), [(3, 0, 4), (0, 0, 4), (2, 2, 4), (2, 0, 5), (1, 0, 10)]
)
def test_c_build_rejects_what_no_header_carries(version: int, udp: int, family: int) -> None:
    addrs = ProxyAddrs(family=family)
    out = (ctypes.c_uint8 * 200)()
    assert engine_c().proxy_header_build(out, len(out), version, udp, ctypes.byref(addrs)) == -1


def test_python_build_rejects_v1_udp() -> None:
    """The C build's -1 for v1 UDP mirrors this ValueError."""
    with pytest.raises(ValueError, match="only TCP"):
        build_proxy_header(1, ("1.2.3.4", 1), ("1.2.3.5", 2), "udp")
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n")
