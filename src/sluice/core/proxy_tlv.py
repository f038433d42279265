"""PROXY protocol v2 TLVs (type-length-value entries after the address block) and CRC32c, sans-IO.

`parse_tlvs` splits a region into (type, value) pairs that must tile it exactly; `check_tlvs` checks
the TLVs whose content the spec defines (CRC32C, UNIQUE_ID, SSL and its sub-TLVs). Both raise
`TlvError`, which `sluice.core.proxy_protocol` reports as a `ProxyHeaderError` with the same text.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "TlvError",
    "check_tlvs",
    "crc32c",
    "parse_tlvs",
]

PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
UNIQUE_ID_MAX_LENGTH: Final = 128  # bytes
SSL_TLV_PREFIX_LENGTH: Final = 5  # client (1 byte) + verify (4 bytes)

_TLV_HEAD = struct.Struct("!BH")


class TlvError(ValueError):
    """A TLV region that can never be valid; the text says what is wrong and where."""


def parse_tlvs(region: bytes, where: str) -> tuple[tuple[int, bytes], ...]:
    """Split `region` into (type, value) pairs that must tile it exactly."""
    tlvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(region):
        if len(region) - offset < _TLV_HEAD.size:
            raise TlvError(
                f"v2 {where}TLV at offset {offset} is truncated: {len(region) - offset} bytes left, "
                f"a TLV needs at least {_TLV_HEAD.size}"
            )
        kind, length = _TLV_HEAD.unpack_from(region, offset)
        start = offset + _TLV_HEAD.size
        end = start + length
        if end > len(region):
            raise TlvError(
                f"v2 {where}TLV type 0x{kind:02x} at offset {offset} declares {length} bytes but only "
                f"{len(region) - start} remain"
            )
        tlvs.append((kind, region[start:end]))
        offset = end
    return tuple(tlvs)


def check_tlvs(header: bytes, tlv_start: int, tlvs: tuple[tuple[int, bytes], ...]) -> None:
    """Check the TLVs whose content the spec defines; `header` is the whole v2 header."""
    offset = tlv_start
    crc_offset = -1
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise TlvError(f"v2 CRC32C TLV is {len(value)} bytes, must be 4")
            if crc_offset >= 0:
                raise TlvError("v2 header has more than one CRC32C TLV")
            crc_offset = offset + _TLV_HEAD.size
        elif kind == PP2_TYPE_UNIQUE_ID and len(value) > UNIQUE_ID_MAX_LENGTH:
            raise TlvError(f"v2 UNIQUE_ID TLV is {len(value)} bytes, over {UNIQUE_ID_MAX_LENGTH}")
        elif kind == PP2_TYPE_SSL:
            if len(value) < SSL_TLV_PREFIX_LENGTH:
                raise TlvError(f"v2 SSL TLV is {len(value)} bytes, needs at least 5")
            parse_tlvs(value[SSL_TLV_PREFIX_LENGTH:], "SSL sub-")
        offset += _TLV_HEAD.size + len(value)
    if crc_offset >= 0:
        received = int.from_bytes(header[crc_offset : crc_offset + 4], "big")
        zeroed = header[:crc_offset] + bytes(4) + header[crc_offset + 4 :]
        computed = crc32c(zeroed)
        if received != computed:
            raise TlvError(f"v2 CRC32C is 0x{received:08x}, the header's checksum is 0x{computed:08x}")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli, RFC 4960 appendix B) as PP2_TYPE_CRC32C uses it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
