"""The 5-tuple and sluice's one flow hash.

The flow hash is shared by every data plane: the proxy schedulers call `flow_hash` in Python and the
XDP program computes the same function in C (`bpf/flow_hash.h`), so `sluice flow` can answer where a
packet goes in either data plane. Test vectors live in tests/vectors/flow_hash.json.

Definition (all integers unsigned 32-bit, arithmetic modulo 2**32):

1. Build a 40-byte key:
     bytes  0..15  source address as 16 bytes (IPv4 as IPv4-mapped IPv6, ::ffff:a.b.c.d)
     bytes 16..31  destination address, same form
     bytes 32..33  source port, network byte order
     bytes 34..35  destination port, network byte order
     byte  36      IP protocol number (6 TCP, 17 UDP)
     bytes 37..39  zero
2. Read the key as ten little-endian 32-bit words k[0..9].
3. MurmurHash3 x86_32 over those words with seed FLOW_HASH_SEED:
     for each k:  k *= 0xcc9e2d51; k = rotl(k, 15); k *= 0x1b873593
                  h ^= k; h = rotl(h, 13); h = h * 5 + 0xe6546b64
     h ^= 40   (the key length in bytes)
     h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16

A keyed VIP (``hash_key:``, a `HashKey`) replaces step 2 and 3: the hash is the low 32 bits of
SipHash-1-3 (core/siphash.py) of the same 40-byte key, with k0 = key bytes 0..7 and k1 = key bytes
8..15 read little-endian (what the Linux kernel's hsiphash returns on 64-bit machines). Vectors:
tests/vectors/flow_hash_keyed.json. Unkeyed VIPs keep MurmurHash3 unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from sluice.core.siphash import siphash13

IPPROTO_TCP = 6
IPPROTO_UDP = 17
FLOW_HASH_SEED = 0x51CE_F10E
KEY_LEN = 40
HASH_KEY_LEN = 16
"""Bytes of a `HashKey` (SipHash's 128-bit key)."""
ADDRESS_CACHE_SIZE = 4096
"""Host strings whose parsed address `parse_address` keeps."""
DST_CACHE_SIZE = 256
"""Destination addresses (VIPs) whose scrambled key words `flow_hash` keeps."""

_MASK = 0xFFFFFFFF

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class FiveTuple:
    """One flow as the load balancer sees it (client -> VIP)."""

    src_ip: IPAddress
    dst_ip: IPAddress
    src_port: int
    dst_port: int
    proto: int  # IPPROTO_TCP or IPPROTO_UDP

    @classmethod
    def of(cls, src: tuple[str, int], dst: tuple[str, int], proto: int) -> FiveTuple:
        """Build from (host, port) pairs as sockets report them."""
        return cls(parse_address(src[0]), parse_address(dst[0]), src[1], dst[1], proto)

    def key(self) -> bytes:
        """The 40-byte hash key (see the module docstring)."""
        return (
            _ip16(self.src_ip)
            + _ip16(self.dst_ip)
            + struct.pack("!HHB3x", self.src_port, self.dst_port, self.proto)
        )


@dataclass(frozen=True, slots=True)
class HashKey:
    """A VIP's secret flow-hash key: 16 bytes shared by every node of the VIP. Its repr and str never
    show the bytes (configs, errors and logs print objects); compare keys with ==."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != HASH_KEY_LEN:
            raise ValueError(f"a hash key is {HASH_KEY_LEN} bytes, got {len(self.secret)}")
        if not any(self.secret):
            raise ValueError("a hash key of zeros is no secret")

    @classmethod
    def from_hex(cls, text: str) -> HashKey:
        """The key written as 32 hex digits (e.g. `openssl rand -hex 16`). The error never repeats
        the text: it is (nearly) the secret."""
        digits = text.strip()
        if len(digits) != 2 * HASH_KEY_LEN or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(
                f"expected {2 * HASH_KEY_LEN} hex digits ({HASH_KEY_LEN} random bytes, e.g. from "
                f"`openssl rand -hex {HASH_KEY_LEN}`), got {len(digits)} characters"
            )
        return cls(bytes.fromhex(digits))

    @property
    def k0(self) -> int:
        """SipHash's k0: bytes 0..7, little-endian."""
        return int.from_bytes(self.secret[:8], "little")

    @property
    def k1(self) -> int:
        """SipHash's k1: bytes 8..15, little-endian."""
        return int.from_bytes(self.secret[8:], "little")

    def __str__(self) -> str:
        return "HashKey(<secret>)"


def client_flow(
    proto: int,
    client_ip: IPAddress,
    client_port: int,
    vip_ip: IPAddress,
    vip_port: int,
    *,
    source_ip_only: bool = False,
) -> FiveTuple:
    """The FiveTuple a new flow from a client to a VIP is balanced by, in every data plane and in
    `sluice flow`. `source_ip_only` (UDP ``hash: source_ip``) zeroes both ports, so every port of
    one client IP lands on the same backend."""
    if source_ip_only:
        return FiveTuple(client_ip, vip_ip, 0, 0, proto)
    return FiveTuple(client_ip, vip_ip, client_port, vip_port, proto)


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def parse_address(host: str) -> IPAddress:
    """`ipaddress.ip_address` of a host string as sockets report it, cached: a new connection or
    session comes from an address seen before far more often than not, and parsing costs microseconds.
    """
    return ip_address(host)


def _ip16(ip: IPAddress) -> bytes:
    if isinstance(ip, IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def _mix(k: int) -> int:
    """The per-word scramble of MurmurHash3 (k *= c1; k = rotl(k, 15); k *= c2)."""
    k = (k * 0xCC9E2D51) & _MASK
    k = ((k << 15) | (k >> 17)) & _MASK
    return (k * 0x1B873593) & _MASK


def _step(h: int, mixed: int) -> int:
    """One round of MurmurHash3 with an already scrambled word."""
    h ^= mixed
    h = ((h << 13) | (h >> 19)) & _MASK
    return (h * 5 + 0xE6546B64) & _MASK


def murmur3_words(words: tuple[int, ...], seed: int, length: int) -> int:
    """MurmurHash3 x86_32 over whole 32-bit words (no tail), `length` in bytes."""
    h = seed
    for k in words:
        h = _step(h, _mix(k))
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


# An IPv4 address is ::ffff:a.b.c.d: its first three key words are constant (0, 0, 0xffff0000 read
# little-endian), so the state after them (source) and their scrambled form (destination) are too.
_V4_PREFIX_MIXED: Final = (_mix(0), _mix(0), _mix(0xFFFF0000))
_V4_PREFIX_STATE: Final = _step(_step(_step(FLOW_HASH_SEED, _mix(0)), _mix(0)), _mix(0xFFFF0000))


@lru_cache(maxsize=DST_CACHE_SIZE)
def _mixed_destination(address: int, v4: bool) -> tuple[int, ...]:
    """The four scrambled key words of a destination (a VIP: few distinct values, hence cached)."""
    if v4:
        return (*_V4_PREFIX_MIXED, _mix(int.from_bytes(address.to_bytes(4, "big"), "little")))
    x = int.from_bytes(address.to_bytes(16, "big"), "little")
    return tuple(_mix((x >> shift) & _MASK) for shift in (0, 32, 64, 96))


def keyed_flow_hash(flow: FiveTuple, key: HashKey) -> int:
    """The 32-bit flow hash of a keyed VIP: the low 32 bits of SipHash-1-3 of the 40-byte key."""
    return siphash13(key.k0, key.k1, flow.key()) & _MASK


def flow_hash(flow: FiveTuple, key: HashKey | None = None) -> int:
    """sluice's 32-bit flow hash (see the module docstring for the exact definition): MurmurHash3,
    or `keyed_flow_hash` when the VIP has a `key`.

    Unkeyed, bit-identical to ``murmur3_words(struct.unpack("<10I", flow.key()), FLOW_HASH_SEED, KEY_LEN)``,
    computed without building the key: the constant IPv4 prefix is folded in advance and the
    destination's words are cached.
    """
    if key is not None:
        return keyed_flow_hash(flow, key)
    src = flow.src_ip
    if src.version == 4:
        h = _V4_PREFIX_STATE
        words: tuple[int, ...] = (int.from_bytes(src.packed, "little"),)
    else:
        h = FLOW_HASH_SEED
        x = int.from_bytes(src.packed, "little")
        words = (x & _MASK, (x >> 32) & _MASK, (x >> 64) & _MASK, x >> 96)
    for k in words:
        k = (k * 0xCC9E2D51) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * 0x1B873593) & _MASK
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    dst = flow.dst_ip
    for mixed in _mixed_destination(int(dst), dst.version == 4):
        h ^= mixed
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    sp, dp = flow.src_port, flow.dst_port
    # bytes 32..35 (both ports, network order) read little-endian, then byte 36 (the protocol)
    for k in ((sp >> 8) | (sp & 0xFF) << 8 | (dp >> 8) << 16 | (dp & 0xFF) << 24, flow.proto):
        k = (k * 0xCC9E2D51) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * 0x1B873593) & _MASK
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    h ^= KEY_LEN
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)
