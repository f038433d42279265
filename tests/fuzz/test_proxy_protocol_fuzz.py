"""Property tests for the PROXY protocol codec: arbitrary and mutated bytes, prefixes, round trips."""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build_proxy_header,
    parse_proxy_header,
)

FUZZ = settings(max_examples=300, deadline=None)

ports = st.integers(0, 0xFFFF)
max_lengths = st.integers(16, 700)
ipv4: st.SearchStrategy[IPv4Address | IPv6Address] = st.ip_addresses(v=4)
ipv6: st.SearchStrategy[IPv4Address | IPv6Address] = st.ip_addresses(v=6)
TEXT_FORMS: list[Callable[[IPv4Address | IPv6Address], str]] = [
    str,
    lambda a: a.exploded,  # leading zeros, no "::"
    lambda a: str(a).upper(),
]
as_text = st.sampled_from(TEXT_FORMS)
# Types without content rules (CRC32C 0x03, UNIQUE_ID 0x05 and SSL 0x20 have their own checks).
tlv_types = st.integers(0, 255).filter(lambda t: t not in (0x03, 0x05, 0x20))
tlv_lists = st.lists(st.tuples(tlv_types, st.binary(max_size=40)), max_size=6)


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[tuple[str, int], tuple[str, int]]:
    """A (source, destination) pair of one address family, in any text form ipaddress accepts."""
    addrs = ipv4 if draw(st.booleans()) else ipv6
    src, dst = draw(addrs), draw(addrs)
    return (draw(as_text)(src), draw(ports)), (draw(as_text)(dst), draw(ports))


@st.composite
def valid_headers(draw: st.DrawFn) -> bytes:
    """A valid v1 or v2 header, v2 possibly with TLVs, AF_UNSPEC or LOCAL."""
    shape = draw(st.sampled_from(["v1", "v1-unknown", "v2", "v2-tlvs", "v2-local", "v2-unspec"]))
    if shape == "v1-unknown":
        return b"PROXY UNKNOWN" + draw(st.sampled_from([b"", b" ", b" 1.2.3.4 ::1 99 x"])) + b"\r\n"
    if shape == "v2-local":
        return build_proxy_header(2, None, None)
    if shape == "v2-unspec":
        block = draw(st.binary(max_size=40))
        return V2_SIGNATURE + b"\x21\x00" + struct.pack("!H", len(block)) + block
    source, destination = draw(endpoints())
    if shape == "v1":
        return build_proxy_header(1, source, destination)
    header = build_proxy_header(2, source, destination, draw(st.sampled_from(["tcp", "udp"])))
    if shape == "v2":
        return header
    tlvs = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in draw(tlv_lists))
    return header[:14] + struct.pack("!H", len(header) - 16 + len(tlvs)) + header[16:] + tlvs


def check_outcome(data: bytes, max_length: int) -> tuple[ProxyHeader, int] | None:
    """Parse and assert the contract: None, ProxyHeaderError, or a header within both bounds."""
    try:
        result = parse_proxy_header(data, max_length=max_length)
    except ProxyHeaderError as exc:
        assert str(exc), "an error must say what is wrong"
        return None
    if result is not None:
        header, consumed = result
        assert isinstance(header, ProxyHeader)
        assert 0 < consumed <= len(data)
        assert consumed <= max_length
        if header.version == 1:
            assert consumed <= 107
            assert data[consumed - 2 : consumed] == b"\r\n"
        assert (header.source is None) == (header.transport == "UNKNOWN") == (header.destination is None)
        if header.transport != "UNKNOWN" and header.version == 2:
            # The TLVs tile what follows the address block exactly.
            address_length = 12 if header.transport.endswith("4") else 36
            tlv_bytes = sum(3 + len(value) for _, value in header.tlvs)
            assert 16 + address_length + tlv_bytes == consumed
    return result


@FUZZ
@given(data=st.binary(max_size=600), max_length=max_lengths)
def test_arbitrary_bytes_honour_the_contract(data: bytes, max_length: int) -> None:
    check_outcome(data, max_length)


@FUZZ
@given(
    prefix=st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE + b"\x21"]),
    tail=st.binary(),
)
def test_bytes_after_a_signature_honour_the_contract(prefix: bytes, tail: bytes) -> None:
    check_outcome(prefix + tail, 536)


@FUZZ
@given(
    header=valid_headers(),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
    max_length=max_lengths,
)
def test_mutated_headers_honour_the_contract(
    header: bytes, edits: list[tuple[str, int, int]], max_length: int
) -> None:
    data = bytearray(header)
    for op, position, byte in edits:
        at = position % (len(data) + 1)
        if op == "insert":
            data.insert(at, byte)
        elif data and op == "flip":
            data[at % len(data)] ^= byte or 1
        elif data:
            del data[at % len(data)]
    check_outcome(bytes(data), max_length)


@FUZZ
@given(data=st.binary(max_size=300) | valid_headers(), cut=st.integers(0, 300), max_length=max_lengths)
def test_errors_and_results_are_decided_by_the_prefix(data: bytes, cut: int, max_length: int) -> None:
    """An error on a prefix stays an error; a parsed header does not change when more bytes arrive."""
    head = data[: min(cut, len(data))]
    try:
        early = parse_proxy_header(head, max_length=max_length)
    except ProxyHeaderError:
        try:
            late = parse_proxy_header(data, max_length=max_length)
        except ProxyHeaderError:
            return
        raise AssertionError(f"{head!r} was rejected but its extension {data!r} gave {late!r}") from None
    if early is not None:
        assert parse_proxy_header(data, max_length=max_length) == early


@FUZZ
@given(header=valid_headers(), payload=st.binary(max_size=64))
def test_valid_headers_parse_fully_and_only_fully(header: bytes, payload: bytes) -> None:
    result = parse_proxy_header(header + payload)
    assert result is not None
    assert result[1] == len(header)
    for n in range(len(header)):
        assert parse_proxy_header(header[:n]) is None


@FUZZ
@given(pair=endpoints(), version=st.sampled_from([1, 2]), transport=st.sampled_from(["tcp", "udp"]))
def test_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]], version: Literal[1, 2], transport: Literal["tcp", "udp"]
) -> None:
    source, destination = pair
    if version == 1:
        transport = "tcp"
    wire = build_proxy_header(version, source, destination, transport)
    result = parse_proxy_header(wire + b"payload")
    assert result is not None
    header, consumed = result
    assert consumed == len(wire)
    family = ip_address(source[0]).version
    assert (header.version, header.command) == (version, "PROXY")
    assert header.transport == f"{transport.upper()}{family}"
    assert header.source is not None and header.destination is not None
    assert (ip_address(header.source[0]), header.source[1]) == (ip_address(source[0]), source[1])
    assert (ip_address(header.destination[0]), header.destination[1]) == (
        ip_address(destination[0]),
        destination[1],
    )
    # What comes out is canonical: building from it gives the same bytes.
    assert build_proxy_header(version, header.source, header.destination, transport) == wire


@FUZZ
@given(pair=endpoints(), tlvs=tlv_lists)
def test_v2_tlvs_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]], tlvs: list[tuple[int, bytes]]
) -> None:
    header = build_proxy_header(2, *pair)
    region = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    wire = header[:14] + struct.pack("!H", len(header) - 16 + len(region)) + header[16:] + region
    result = parse_proxy_header(wire, max_length=len(wire))
    assert result is not None
    assert result[0].tlvs == tuple(tlvs)
    assert result[1] == len(wire)
