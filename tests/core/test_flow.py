"""The flow hash: every shared test vector, and the definition really is MurmurHash3 x86_32."""

from __future__ import annotations

import importlib.util
import json
import random
import struct
from ipaddress import ip_address
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sluice.core.flow import (
    FLOW_HASH_SEED,
    IPPROTO_TCP,
    IPPROTO_UDP,
    KEY_LEN,
    FiveTuple,
    flow_hash,
    murmur3_words,
)

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = VECTORS_DIR / "flow_hash.json"


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 over arbitrary bytes, written from Austin Appleby's reference
    (MurmurHash3.cpp), independently of sluice.core.flow: body, tail, finalisation."""
    mask = 0xFFFFFFFF
    c1, c2 = 0xCC9E2D51, 0x1B873593

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed & mask
    nblocks = len(data) // 4
    for (k,) in struct.iter_unpack("<I", data[: nblocks * 4]):
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    tail = data[nblocks * 4 :]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        h ^= rotl((k * c1) & mask, 15) * c2 & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


# Published MurmurHash3_x86_32 results (SMHasher verification set, as widely quoted).
KNOWN = [
    (b"", 0, 0x00000000),
    (b"", 1, 0x514E28B7),
    (b"", 0xFFFFFFFF, 0x81F16F39),
    (b"\xff\xff\xff\xff", 0, 0x76293B50),
    (b"!Ce\x87", 0, 0xF55B516B),
    (b"!Ce\x87", 0x5082EDEE, 0x2362F9DE),
    (b"!Ce", 0, 0x7E4A8634),
    (b"!C", 0, 0xA0F7B07A),
    (b"!", 0, 0x72661CF4),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"\x00\x00\x00", 0, 0x85F0B427),
    (b"\x00\x00", 0, 0x30F4C306),
    (b"\x00", 0, 0x514E28B7),
    (b"Hello, world!", 1234, 0xFAF6CDB3),
    (b"The quick brown fox jumps over the lazy dog", 0, 0x2E4FF723),
]


@pytest.mark.parametrize(("data", "seed", "expected"), KNOWN, ids=lambda v: repr(v)[:24])
def test_reference_murmur3_matches_published_values(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


def load_vectors() -> list[dict[str, Any]]:
    content = json.loads(VECTORS.read_text())
    assert content["flow_hash_seed"] == FLOW_HASH_SEED
    vectors: list[dict[str, Any]] = content["vectors"]
    return vectors


def as_tuple(v: dict[str, Any]) -> FiveTuple:
    return FiveTuple(
        ip_address(v["src_ip"]), ip_address(v["dst_ip"]), v["src_port"], v["dst_port"], v["proto"]
    )


def test_every_vector_matches_core_flow() -> None:
    vectors = load_vectors()
    assert len(vectors) >= 1000
    wrong = []
    for v in vectors:
        t = as_tuple(v)
        if t.key().hex() != v["key_hex"] or flow_hash(t) != v["hash"]:
            wrong.append(v)
    assert not wrong, wrong[:3]


def test_every_vector_is_murmur3_of_its_key() -> None:
    for v in load_vectors():
        key = bytes.fromhex(v["key_hex"])
        assert len(key) == KEY_LEN
        assert murmur3_32(key, FLOW_HASH_SEED) == v["hash"], v


def test_vectors_cover_families_protocols_and_edge_ports() -> None:
    vectors = load_vectors()
    tuples = [as_tuple(v) for v in vectors]
    assert {t.src_ip.version for t in tuples} == {4, 6}
    assert {t.proto for t in tuples} == {IPPROTO_TCP, IPPROTO_UDP}
    ports = {t.src_port for t in tuples} | {t.dst_port for t in tuples}
    assert {0, 1, 65535} <= ports
    # the XDP tests replay same-family vectors with non-zero ports: there must be 1000 of those
    replayable = [t for t in tuples if t.src_ip.version == t.dst_ip.version and t.src_port and t.dst_port]
    assert len(replayable) >= 1000
    assert len({v["hash"] for v in vectors}) > 0.99 * len(vectors)


def test_key_layout() -> None:
    t = FiveTuple.of(("10.0.0.1", 0x1234), ("2001:db8::1", 0xFFFF), IPPROTO_UDP)
    key = t.key()
    assert key[:16] == bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert key[16:32] == ip_address("2001:db8::1").packed
    assert key[32:] == b"\x12\x34\xff\xff\x11\x00\x00\x00"


def test_ipv4_and_its_mapped_ipv6_form_hash_alike() -> None:
    a = FiveTuple.of(("10.0.0.1", 1000), ("10.0.0.2", 80), IPPROTO_TCP)
    b = FiveTuple.of(("::ffff:10.0.0.1", 1000), ("::ffff:10.0.0.2", 80), IPPROTO_TCP)
    assert a.key() == b.key()
    assert flow_hash(a) == flow_hash(b)


def test_murmur3_words_is_murmur3_on_whole_words() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randrange(0, 12)
        data = rng.randbytes(4 * n)
        seed = rng.getrandbits(32)
        words = struct.unpack(f"<{n}I", data)
        assert murmur3_words(words, seed, len(data)) == murmur3_32(data, seed)


def test_a_changed_field_changes_the_hash() -> None:
    base = FiveTuple.of(("192.0.2.1", 40000), ("198.18.0.10", 443), IPPROTO_TCP)
    variants = [
        FiveTuple.of(("192.0.2.2", 40000), ("198.18.0.10", 443), IPPROTO_TCP),
        FiveTuple.of(("192.0.2.1", 40001), ("198.18.0.10", 443), IPPROTO_TCP),
        FiveTuple.of(("192.0.2.1", 40000), ("198.18.0.11", 443), IPPROTO_TCP),
        FiveTuple.of(("192.0.2.1", 40000), ("198.18.0.10", 444), IPPROTO_TCP),
        FiveTuple.of(("192.0.2.1", 40000), ("198.18.0.10", 443), IPPROTO_UDP),
        FiveTuple.of(("198.18.0.10", 443), ("192.0.2.1", 40000), IPPROTO_TCP),  # reversed
    ]
    assert len({flow_hash(base), *(flow_hash(v) for v in variants)}) == len(variants) + 1


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_flow_hash_vectors", VECTORS_DIR / "make_flow_hash_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_regenerates_the_file_exactly() -> None:
    assert _generator().render() == VECTORS.read_text()
