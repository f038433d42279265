"""SipHash-1-3 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012): the keyed flow hash.

A keyed VIP (``hash_key:``) hashes its flows with this instead of MurmurHash3, whose multicollisions
do not depend on the seed, so a client can pick ports that pile onto one backend whatever the seed.
With a secret 128-bit key the client cannot predict where a flow lands.

SipHash-1-3 (one compression round per 8-byte word, three finalisation rounds) is the variant the
Linux kernel's ``hsiphash`` is on 64-bit machines ("for hashtables", lib/siphash.c), and CPython's
and Rust's hash-flooding defence. It is chosen over SipHash-2-4 because nobody sees the output (only
which backend a flow lands on), so 8 rounds for the 40-byte flow key instead of 14; and over
HalfSipHash because HalfSipHash has a 64-bit key and 32-bit words, which save nothing on x86-64 or
in eBPF (both have 64-bit registers). The same function runs in the native engine (pick.c) and the
XDP program (bpf/flow_hash.h).

All arithmetic is modulo 2**64; the message is read as little-endian 64-bit words, the last word
holding the tail bytes and the length (mod 256) in its top byte.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 of `data` with the key (k0, k1): bytes 0..7 and 8..15 of the 16-byte key, each
    read little-endian. Returns the 64-bit result. (Several times the cost of `flow_hash`'s
    MurmurHash3 in Python, paid once per new flow of a keyed VIP; README "Flow hash and hash_key".)"""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    m = int.from_bytes(data[whole:], "little") | (len(data) & 0xFF) << 56
    v3 ^= m
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3
