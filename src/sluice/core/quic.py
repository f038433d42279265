"""QUIC connection-ID routing (sans-IO): the server ID a backend wrote into a QUIC connection ID.

QUIC clients change address and port (NAT rebinding, migration), so the 5-tuple hash can send a
connection's later packets to another backend. A backend that encodes its server ID in the
connection IDs it chooses lets the load balancer follow the connection instead (Katran's scheme):

- A **long-header** packet (first bit 1: Initial, 0-RTT, Handshake, Retry, version negotiation)
  carries a connection ID the *client* chose: it is balanced by the flow hash as any datagram.
- A **short-header** packet (first bit 0, RFC 9000 17.3) is followed directly by the destination
  connection ID (the one the server chose; its length is not on the wire). Its first 32 bits, read
  big-endian, hold::

      bits 31..30   CID version, must be 1 (`CID_VERSION`)
      bits 29..(30 - N)  the server ID, N = ``quic.server_id_bits`` (1..`MAX_SERVER_ID_BITS`)
      the rest      free for the backend (random, its own connection state)

  With N = 16 this is Katran's version-1 layout: ``((c0 & 0x3f) << 10) | (c1 << 2) | (c2 >> 6)``.
- The connection ID must be at least `MIN_CID_LEN` bytes (what a backend should use; shorter
  short-header packets are taken as not routable). Server ID 0 means "none" and is never routed.

`read_server_id` is the one parser; the native engine's C (``engine/quic.c``) and `sluice flow`
mirror it, checked by a differential test. What an ID maps to is `ServerIds`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from sluice.core.endpoint import Endpoint

__all__ = [
    "CID_VERSION",
    "LONG_HEADER",
    "MAX_SERVER_ID_BITS",
    "MIN_CID_LEN",
    "NOT_ROUTABLE",
    "CidOutcome",
    "ServerIds",
    "build_short_header_cid",
    "read_server_id",
]

LONG_HEADER: Final = -1
"""`read_server_id`: not a short-header packet (long header, or an empty datagram): hash it."""
NOT_ROUTABLE: Final = 0
"""`read_server_id`: a short-header packet whose CID carries no server ID (too short, other CID
version, ID 0): hash it and count ``quic_fallback``."""
CID_VERSION: Final = 1
"""The CID version (top 2 bits of the connection ID's first byte) whose layout this module reads."""
MIN_CID_LEN: Final = 8
"""Bytes of destination connection ID a short-header packet must have room for."""
MAX_SERVER_ID_BITS: Final = 30
"""Most server ID bits: the version and the ID fit in the CID's first 32 bits."""
SHORT_HEADER_BIT: Final = 0x80
"""First byte: 1 = long header, 0 = short header."""

CidOutcome = Literal["hash", "quic_routed", "quic_fallback"]
"""What `ServerIds.route` decided; the last two are the VIP counters of the same names."""


def read_server_id(datagram: bytes | bytearray | memoryview, server_id_bits: int) -> int:
    """The server ID in `datagram`'s destination connection ID: `LONG_HEADER` (-1) for a packet
    that is not a short-header one, `NOT_ROUTABLE` (0) for a short-header packet without a usable
    ID, else the ID (1 .. 2**server_id_bits - 1). Never raises on any bytes."""
    if not 1 <= server_id_bits <= MAX_SERVER_ID_BITS:
        raise ValueError(f"server_id_bits must be 1..{MAX_SERVER_ID_BITS}, got {server_id_bits}")
    if len(datagram) == 0 or datagram[0] & SHORT_HEADER_BIT:
        return LONG_HEADER
    if len(datagram) < 1 + MIN_CID_LEN:
        return NOT_ROUTABLE
    word = int.from_bytes(datagram[1:5], "big")
    if word >> 30 != CID_VERSION:
        return NOT_ROUTABLE
    return (word >> (30 - server_id_bits)) & ((1 << server_id_bits) - 1)


def build_short_header_cid(server_id: int, server_id_bits: int, rest: bytes = b"") -> bytes:
    """A connection ID (`MIN_CID_LEN` bytes, then `rest`), as a backend would build it, carrying
    `server_id`: for tests, fixtures and `sluice flow` examples. The free bits are zero."""
    if not 1 <= server_id_bits <= MAX_SERVER_ID_BITS:
        raise ValueError(f"server_id_bits must be 1..{MAX_SERVER_ID_BITS}, got {server_id_bits}")
    if not 0 <= server_id < 1 << server_id_bits:
        raise ValueError(f"server id {server_id} does not fit in {server_id_bits} bits")
    word = CID_VERSION << 30 | server_id << (30 - server_id_bits)
    return word.to_bytes(4, "big") + bytes(MIN_CID_LEN - 4) + rest


@dataclass(frozen=True, slots=True)
class ServerIds:
    """Which backend a server ID names (one VIP's ``quic`` block and its backends' ``server_id``)."""

    bits: int
    """``quic.server_id_bits``."""
    backends: Mapping[int, Endpoint]
    """server ID -> backend."""

    @classmethod
    def of(cls, bits: int, pairs: Iterable[tuple[int, Endpoint]]) -> ServerIds:
        return cls(bits, dict(pairs))

    def route(self, datagram: bytes | bytearray | memoryview) -> tuple[CidOutcome, Endpoint | None]:
        """Where `datagram` goes by its connection ID: ("hash", None) for a packet that is not a
        short-header one; ("quic_routed", backend) when its server ID names one of `backends`;
        ("quic_fallback", None) otherwise (unknown or no ID): hash it. Build `backends` from the
        backends that take new flows only, so a down, drained or removed one falls back too."""
        server_id = read_server_id(datagram, self.bits)
        if server_id == LONG_HEADER:
            return "hash", None
        backend = self.backends.get(server_id)
        if backend is None:
            return "quic_fallback", None
        return "quic_routed", backend
