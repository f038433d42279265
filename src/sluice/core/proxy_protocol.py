"""The HAProxy PROXY protocol, versions 1 and 2: build and parse, sans-IO.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

`parse_proxy_header(data)` looks at the first bytes a connection received and answers one of:

- `(header, consumed)`: a complete, valid header; the payload starts at `data[consumed:]`;
- `None`: `data` is a valid but incomplete prefix of a header, so read more and call again;
- `ProxyHeaderError`: `data` can never become a valid header. The error is raised as soon as the
  offending byte arrives (a wrong signature byte, a v1 character that cannot appear at that point, a
  v2 version/command/family byte, a v2 length over `max_length`), so an error on a prefix is also
  an error on every extension of it.

Strictness choices, all from the spec's "any sequence which does not exactly match the protocol must
be discarded":

- v1 is one line of printable US-ASCII ended by CRLF, at most 107 bytes; a bare CR or LF is an error.
  Addresses are in canonical form: IPv4 dotted decimal without leading zeros, IPv6 as RFC 5952
  (hex case is free, as the spec says, and the parsed address comes back in lower case). Ports are
  decimal without leading zeros. For UNKNOWN the rest of the line is ignored, as the spec requires.
- v2 family/protocol bytes other than 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32 are rejected, whatever
  the command. LOCAL ignores the address block (and any TLVs in it) as the spec requires; so does
  PROXY with AF_UNSPEC (the header then has `source=None`). AF_UNIX (0x31/0x32) is not supported and
  falls back to UNSPEC as the spec allows (`transport="UNKNOWN"`, no addresses) but its 216-byte
  address block is still required and the TLVs after it are checked.
- TLVs must tile the rest of the block exactly. A PP2_TYPE_CRC32C TLV must be 4 bytes and match the
  header's checksum; PP2_TYPE_UNIQUE_ID is at most 128 bytes; PP2_TYPE_SSL carries a 5-byte prefix
  and well-formed sub-TLVs. `ProxyHeader.tlvs` lists every top-level TLV in wire order (NOOP and
  CRC32C included), values unparsed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Literal, TypeAlias

from sluice.core.proxy_tlv import TlvError, check_tlvs, crc32c, parse_tlvs

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "build_proxy_header",
    "crc32c",
    "parse_proxy_header",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # bytes, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16  # signature, ver_cmd, fam, len
DEFAULT_MAX_LENGTH: Final = 536  # bytes; the smallest MSS every TCP host supports (576 - 40)


_V2_VERSION = 0x2
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1

Transport: TypeAlias = Literal["TCP4", "TCP6", "UDP4", "UDP6", "UNKNOWN"]

# fam byte -> (transport reported, bytes of address block the family needs)
_V2_FAMILIES: Final[dict[int, tuple[Transport, int]]] = {
    0x00: ("UNKNOWN", 0),  # AF_UNSPEC: address block ignored
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNKNOWN", 216),  # AF_UNIX stream: not supported, falls back to UNSPEC
    0x32: ("UNKNOWN", 216),  # AF_UNIX dgram: same
}
_V2_FAM_BYTE: Final[dict[tuple[int, str], int]] = {
    (4, "tcp"): 0x11,
    (4, "udp"): 0x12,
    (6, "tcp"): 0x21,
    (6, "udp"): 0x22,
}

_V2_FIXED = struct.Struct("!12sBBH")
_V2_INET4 = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_HEXTETS = struct.Struct("!8H")

_V1_PROTOCOLS: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
_DIGITS: Final = frozenset(b"0123456789")
_V1_ADDRESS_CHARS: Final[dict[bytes, frozenset[int]]] = {
    b"TCP4": frozenset(b"0123456789."),
    b"TCP6": frozenset(b"0123456789abcdefABCDEF:"),
}
_V1_ADDRESS_MAX: Final[dict[bytes, int]] = {b"TCP4": 15, b"TCP6": 39}  # characters
_CR, _LF = 0x0D, 0x0A


class ProxyHeaderError(ValueError):
    """The bytes are not, and can never become, a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY protocol header."""

    version: Literal[1, 2]
    """1 for the text format, 2 for the binary one."""
    command: Literal["PROXY", "LOCAL"]
    """PROXY: the addresses are the original client's. LOCAL (v2 only): use the real endpoints."""
    transport: Transport
    """UNKNOWN for v1 UNKNOWN, v2 LOCAL, v2 AF_UNSPEC and v2 AF_UNIX."""
    source: tuple[str, int] | None
    """(address, port) of the original client; None when transport is UNKNOWN."""
    destination: tuple[str, int] | None
    """(address, port) the client connected to; None when transport is UNKNOWN."""
    tlvs: tuple[tuple[int, bytes], ...] = ()
    """v2 (type, value) pairs in wire order; always empty for v1, LOCAL and AF_UNSPEC."""


# --------------------------------------------------------------------------------------------- build


def build_proxy_header(
    version: Literal[1, 2],
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    transport: Literal["tcp", "udp"] = "tcp",
    *,
    local: bool = False,
) -> bytes:
    """Return the header bytes announcing a connection from `source` to `destination`.

    The address family (IPv4 or IPv6) follows the addresses; both must be of the same family.
    `source=None` (and `destination=None`) builds v1 "PROXY UNKNOWN" or a v2 LOCAL header with
    AF_UNSPEC; so does `local=True` for v2. v1 carries only TCP and has no LOCAL command.
    Raises ValueError on arguments that no valid header can carry.
    """
    if version not in (1, 2):
        raise ValueError(f"PROXY protocol version must be 1 or 2, not {version!r}")
    if transport not in ("tcp", "udp"):
        raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
    if (source is None) != (destination is None):
        raise ValueError("source and destination must both be given or both be None")
    if local and source is not None:
        raise ValueError("a LOCAL header carries no addresses: pass source=None and destination=None")
    if version == 1:
        if local:
            raise ValueError("PROXY protocol v1 has no LOCAL command (use source=None for UNKNOWN)")
        if source is None or destination is None:
            return b"PROXY UNKNOWN\r\n"
        if transport != "tcp":
            raise ValueError("PROXY protocol v1 carries only TCP; use version 2 for UDP")
        src_ip, src_port = _endpoint("source", source)
        dst_ip, dst_port = _endpoint("destination", destination)
        family = _same_family(src_ip, dst_ip)
        line = f"PROXY TCP{family} {_format_ip(src_ip)} {_format_ip(dst_ip)} {src_port} {dst_port}\r\n"
        return line.encode("ascii")
    if source is None or destination is None:
        return _V2_FIXED.pack(V2_SIGNATURE, _V2_VERSION << 4 | _CMD_LOCAL, 0x00, 0)
    src_ip, src_port = _endpoint("source", source)
    dst_ip, dst_port = _endpoint("destination", destination)
    family = _same_family(src_ip, dst_ip)
    layout = _V2_INET4 if family == 4 else _V2_INET6
    block = layout.pack(src_ip.packed, dst_ip.packed, src_port, dst_port)
    fam = _V2_FAM_BYTE[family, transport]
    return _V2_FIXED.pack(V2_SIGNATURE, _V2_VERSION << 4 | _CMD_PROXY, fam, len(block)) + block


def _endpoint(role: str, endpoint: tuple[str, int]) -> tuple[IPv4Address | IPv6Address, int]:
    host, port = endpoint
    if not isinstance(host, str):
        raise ValueError(f"{role} address {host!r} is not a string")
    try:
        addr = ip_address(host)
    except ValueError:
        raise ValueError(f"{role} address {host!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, IPv6Address) and addr.scope_id is not None:
        raise ValueError(f"{role} address {host!r} has a scope id, which the PROXY protocol cannot carry")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{role} port {port!r} is not an integer in 0..65535")
    return addr, port


def _same_family(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address) -> Literal[4, 6]:
    if src.version != dst.version:
        raise ValueError(f"source is IPv{src.version} but destination is IPv{dst.version}")
    return 4 if isinstance(src, IPv4Address) else 6


def _format_ip(addr: IPv4Address | IPv6Address) -> str:
    return str(addr) if isinstance(addr, IPv4Address) else _format_ipv6(addr.packed)


def _format_ipv6(packed: bytes) -> str:
    """RFC 5952 text: lower case, no leading zeros, `::` for the first longest run of >= 2 zeros.

    Written out rather than `str(IPv6Address)` so that IPv4-mapped addresses keep the hex form on
    every Python version (3.13 switched them to dotted notation, which v1 does not allow).
    """
    hextets = _HEXTETS.unpack(packed)
    best_start, best_len, run_start = -1, 1, -1
    for i, h in enumerate((*hextets, 1)):
        if h == 0:
            if run_start < 0:
                run_start = i
        elif run_start >= 0:
            if i - run_start > best_len:
                best_start, best_len = run_start, i - run_start
            run_start = -1
    words = [f"{h:x}" for h in hextets]
    if best_start < 0:
        return ":".join(words)
    head = ":".join(words[:best_start])
    tail = ":".join(words[best_start + best_len :])
    return f"{head}::{tail}"


# --------------------------------------------------------------------------------------------- parse


def parse_proxy_header(
    data: bytes | bytearray | memoryview, *, max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[ProxyHeader, int] | None:
    """Parse the PROXY header at the start of `data` (v1 or v2, told apart by the first byte).

    Returns (header, bytes consumed), or None if `data` is a valid prefix that needs more bytes.
    Raises ProxyHeaderError as soon as `data` cannot be the start of a valid header, including a
    header longer than `max_length` bytes (a v1 line is further capped at 107 bytes).
    `max_length` must be at least 16 (the v2 fixed part); the spec's 536 fits any header without
    large TLVs.
    """
    if max_length < V2_FIXED_LENGTH:
        raise ValueError(f"max_length must be at least {V2_FIXED_LENGTH} bytes, not {max_length}")
    # Neither format can use more than max(max_length, 107) bytes: copy only those.
    head = bytes(memoryview(data)[: max(max_length, V1_MAX_LENGTH)])
    if not head:
        return None
    if head[0] == V1_PREFIX[0]:
        return _parse_v1(head, min(V1_MAX_LENGTH, max_length))
    if head[0] == V2_SIGNATURE[0]:
        return _parse_v2(head, max_length)
    raise ProxyHeaderError(
        f"not a PROXY protocol header: first byte 0x{head[0]:02x} starts neither 'PROXY ' (v1) "
        "nor the v2 signature"
    )


def _mismatch(head: bytes, expected: bytes) -> int:
    """Index of the first byte where `head` differs from `expected`, or -1 if it is a prefix of it."""
    for i, (got, want) in enumerate(zip(head, expected, strict=False)):
        if got != want:
            return i
    return -1


# v1 --------------------------------------------------------------------------------------------------


def _parse_v1(head: bytes, limit: int) -> tuple[ProxyHeader, int] | None:
    bad = _mismatch(head, V1_PREFIX)
    if bad >= 0:
        raise ProxyHeaderError(
            f"bad v1 signature: byte {bad} is {head[bad : bad + 1]!r}, expected "
            f"{V1_PREFIX[bad : bad + 1]!r} of 'PROXY '"
        )
    start = len(V1_PREFIX)
    end = min(len(head), limit)
    for i in range(start, end):
        byte = head[i]
        if byte == _CR:
            if i + 2 > limit:
                break  # the LF could only come past the limit
            if i + 1 == len(head):
                _parse_v1_line(head[start:i])  # the line is complete once the LF arrives: check it now
                return None
            if head[i + 1] != _LF:
                raise ProxyHeaderError(f"v1 line has a CR not followed by LF at byte {i}")
            return _parse_v1_line(head[start:i]), i + 2
        if byte == _LF:
            raise ProxyHeaderError(f"v1 line has a bare LF at byte {i}; it must end with CRLF")
        if not 0x20 <= byte <= 0x7E:
            raise ProxyHeaderError(f"v1 line has a non-printable byte 0x{byte:02x} at byte {i}")
    if len(head) >= limit:
        raise ProxyHeaderError(f"v1 line has no CRLF within its first {limit} bytes")
    _check_v1_partial(head[start:])
    return None


def _parse_v1_line(body: bytes) -> ProxyHeader:
    """`body` is the line between 'PROXY ' and CRLF, already known to be printable ASCII."""
    fields = body.split(b" ")
    protocol = fields[0]
    if protocol == b"UNKNOWN":
        # The spec: "the receiver must ignore anything presented before the CRLF is found".
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None)
    if protocol not in _V1_PROTOCOLS:
        raise ProxyHeaderError(f"v1 protocol {_show(protocol)} is not TCP4, TCP6 or UNKNOWN")
    checked = [_check_v1_field(protocol, i, f) for i, f in enumerate(fields[:5])]
    if len(fields) > 5:
        raise ProxyHeaderError(f"v1 {protocol.decode()} line has more than 4 fields: {_show(body)}")
    if len(fields) < 5:
        raise ProxyHeaderError(
            f"v1 {protocol.decode()} line needs exactly 4 fields after the protocol; "
            f"got {len(fields) - 1} in {_show(body)}"
        )
    _, src, dst, src_port, dst_port = checked
    transport: Transport = "TCP4" if protocol == b"TCP4" else "TCP6"
    return ProxyHeader(1, "PROXY", transport, (src, int(src_port)), (dst, int(dst_port)))


def _check_v1_partial(body: bytes) -> None:
    """Raise if an incomplete v1 line body can no longer become valid."""
    fields = body.split(b" ")
    protocol = fields[0]
    if len(fields) == 1:
        if not any(p.startswith(protocol) for p in _V1_PROTOCOLS):
            raise ProxyHeaderError(f"v1 protocol {_show(protocol)}... is not TCP4, TCP6 or UNKNOWN")
        return
    if protocol == b"UNKNOWN":
        return
    if protocol not in _V1_PROTOCOLS:
        raise ProxyHeaderError(f"v1 protocol {_show(protocol)} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) > 5:
        raise ProxyHeaderError(f"v1 {protocol.decode()} line has more than 4 fields: {_show(body)}")
    for i, field in enumerate(fields[1:-1], start=1):
        _check_v1_field(protocol, i, field)
    _check_v1_field_prefix(protocol, len(fields) - 1, fields[-1])


_V1_FIELD_NAMES: Final = (
    "protocol",
    "source address",
    "destination address",
    "source port",
    "destination port",
)


def _check_v1_field(protocol: bytes, index: int, field: bytes) -> str:
    """Validate a complete v1 field; return its canonical text (addresses) or digits (ports)."""
    name = _V1_FIELD_NAMES[index]
    if not field:
        raise ProxyHeaderError(f"v1 {name} is empty (extra or missing space)")
    if index == 0:
        return field.decode()
    if index >= 3:
        if not set(field) <= _DIGITS or len(field) > 5:
            raise ProxyHeaderError(f"v1 {name} {_show(field)} is not a decimal port")
        if field[0] == ord("0") and len(field) > 1:
            raise ProxyHeaderError(f"v1 {name} {_show(field)} has a leading zero")
        if int(field) > 0xFFFF:
            raise ProxyHeaderError(f"v1 {name} {_show(field)} is out of range 0..65535")
        return field.decode()
    return _v1_address(protocol, name, field)


def _check_v1_field_prefix(protocol: bytes, index: int, field: bytes) -> None:
    """Raise if `field`, the v1 field still being received, cannot be the start of a valid one."""
    name = _V1_FIELD_NAMES[index]
    if index >= 3:
        if not set(field) <= _DIGITS or len(field) > 5:
            raise ProxyHeaderError(f"v1 {name} {_show(field)}... is not a decimal port")
        if len(field) > 1 and field[0] == ord("0"):
            raise ProxyHeaderError(f"v1 {name} {_show(field)}... has a leading zero")
        if field and int(field) > 0xFFFF:
            raise ProxyHeaderError(f"v1 {name} {_show(field)}... is out of range 0..65535")
        return
    if not set(field) <= _V1_ADDRESS_CHARS[protocol] or len(field) > _V1_ADDRESS_MAX[protocol]:
        raise ProxyHeaderError(
            f"v1 {protocol.decode()} {name} {_show(field)}... cannot be an "
            f"IPv{protocol[-1:].decode()} address"
        )


def _v1_address(protocol: bytes, name: str, field: bytes) -> str:
    text = field.decode("ascii")
    want = 4 if protocol == b"TCP4" else 6
    try:
        addr = ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"v1 {name} {text!r} is not an IPv{want} address") from None
    if addr.version != want:
        raise ProxyHeaderError(f"v1 {protocol.decode()} line has an IPv{addr.version} {name} {text!r}")
    canonical = _format_ip(addr)
    # IPv6 hex digits may be upper or lower case (the spec says so); nothing else may differ.
    if not set(field) <= _V1_ADDRESS_CHARS[protocol] or text.lower() != canonical:
        raise ProxyHeaderError(f"v1 {name} {text!r} is not in canonical form (expected {canonical!r})")
    return canonical


def _show(raw: bytes) -> str:
    return repr(raw.decode("ascii", "backslashreplace"))


# v2 --------------------------------------------------------------------------------------------------


def _parse_v2(head: bytes, max_length: int) -> tuple[ProxyHeader, int] | None:
    bad = _mismatch(head, V2_SIGNATURE)
    if bad >= 0:
        raise ProxyHeaderError(
            f"bad v2 signature: byte {bad} is 0x{head[bad]:02x}, expected 0x{V2_SIGNATURE[bad]:02x}"
        )
    if len(head) <= len(V2_SIGNATURE):
        return None
    ver_cmd = head[12]
    if ver_cmd >> 4 != _V2_VERSION:
        raise ProxyHeaderError(f"v2 version nibble is {ver_cmd >> 4}, must be 2 (ver_cmd 0x{ver_cmd:02x})")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"v2 command {command} is neither LOCAL (0) nor PROXY (1)")
    if len(head) < 14:
        return None
    fam = head[13]
    if fam not in _V2_FAMILIES:
        raise ProxyHeaderError(
            f"v2 family/protocol byte 0x{fam:02x} is not one of "
            + ", ".join(f"0x{f:02x}" for f in _V2_FAMILIES)
        )
    if len(head) < V2_FIXED_LENGTH:
        return None
    (length,) = struct.unpack_from("!H", head, 14)
    total = V2_FIXED_LENGTH + length
    if total > max_length:
        raise ProxyHeaderError(f"v2 header is {total} bytes, over the {max_length}-byte limit")
    transport, address_length = _V2_FAMILIES[fam]
    if command == _CMD_PROXY and length < address_length:
        raise ProxyHeaderError(
            f"v2 address block is {length} bytes, family 0x{fam:02x} needs at least {address_length}"
        )
    if len(head) < total:
        return None
    if command == _CMD_LOCAL:
        # "discard the protocol block including the family which is ignored"
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None), total
    if fam == 0x00:
        # PROXY with AF_UNSPEC: "the receiver should ignore address information"
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None), total
    try:
        tlvs = parse_tlvs(head[V2_FIXED_LENGTH + address_length : total], "")
        check_tlvs(head[:total], V2_FIXED_LENGTH + address_length, tlvs)
    except TlvError as exc:
        raise ProxyHeaderError(str(exc)) from None
    block = head[V2_FIXED_LENGTH : V2_FIXED_LENGTH + address_length]
    if transport in ("TCP4", "UDP4"):
        src4, dst4, src_port, dst_port = _V2_INET4.unpack(block)
        source = (str(IPv4Address(src4)), src_port)
        destination = (str(IPv4Address(dst4)), dst_port)
    elif transport in ("TCP6", "UDP6"):
        src6, dst6, src_port, dst_port = _V2_INET6.unpack(block)
        source = (_format_ipv6(src6), src_port)
        destination = (_format_ipv6(dst6), dst_port)
    else:  # AF_UNIX: falls back to UNSPEC
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, tlvs), total
    return ProxyHeader(2, "PROXY", transport, source, destination, tlvs), total
