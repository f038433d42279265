"""The XDP program computes exactly core/flow.py's flow hash and picks slot = hash % M.

How the hash is made visible without a test-only map: an ipip VIP whose outer-source prefix is
0.0.0.0/0 puts the whole 32-bit flow hash into the outer source address, and a Maglev row whose slot s
holds a backend at address BASE + s reveals the chosen slot in the outer destination.
"""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, flow_hash
from sluice.dataplane.xdp.loader import XDP_TX
from sluice.dataplane.xdp.maps import FWD_IPIP, vip_key
from tests.dataplane.xdp import packets as P
from tests.dataplane.xdp.harness import CLIENT_MAC, LB_MAC, TBackend, TVip, World

VECTORS = Path(__file__).parents[2] / "vectors" / "flow_hash.json"
SLOTS = 257  # = DEFINES["MAGLEV_SIZE"]
BASE = int(IPv4Address("198.19.0.0"))
FIRST_BACKEND = 200


def _hash_world(world: World) -> TVip:
    backends = [
        TBackend(FIRST_BACKEND + s, str(IPv4Address(BASE + s)), "02:00:00:00:ff:fe") for s in range(SLOTS)
    ]
    v = TVip(
        "hash",
        7,
        "198.18.200.1",
        1,
        IPPROTO_TCP,
        FWD_IPIP,
        backends,
        outer="0.0.0.0/0",
        maglev_size=SLOTS,
        slots=[b.index for b in backends],
    )
    world.add_vip(v)
    return v


def _frame(t: FiveTuple) -> bytes:
    l4 = P.tcp(t.src_port, t.dst_port, P.TCP_SYN) if t.proto == IPPROTO_TCP else P.udp(t.src_port, t.dst_port)
    return P.eth(
        LB_MAC,
        CLIENT_MAC,
        P.ethertype_of(str(t.src_ip)),
        P.ip_packet(str(t.src_ip), str(t.dst_ip), t.proto, l4),
    )


def _program_hash_and_slot(world: World, v: TVip, t: FiveTuple) -> tuple[int, int]:
    key = vip_key(str(t.dst_ip), t.dst_port, t.proto)
    meta = world.maps.vips.lookup(vip_key(v.addr, v.port, v.proto))
    assert meta is not None
    world.maps.vips.update(key, meta)
    try:
        r = world.run(_frame(t))
    finally:
        world.maps.vips.delete(key)
    assert r.verdict == XDP_TX
    outer = r.data[14:34]
    return int.from_bytes(outer[12:16]), int.from_bytes(outer[16:20]) - BASE


def _check(world: World, tuples: list[FiveTuple], hashes: list[int]) -> None:
    v = _hash_world(world)
    mismatches = []
    for t, h in zip(tuples, hashes, strict=True):
        got_hash, got_slot = _program_hash_and_slot(world, v, t)
        if (got_hash, got_slot) != (h, h % SLOTS):
            mismatches.append((t, h, got_hash, got_slot))
    assert not mismatches, mismatches[:5]


def _random_tuples(n: int) -> list[FiveTuple]:
    rng = random.Random(20260101)
    out = []
    for i in range(n):
        if i % 3 == 2:
            src, dst = (ip_address(rng.getrandbits(128)) for _ in range(2))
        else:
            src, dst = (ip_address(rng.getrandbits(32)) for _ in range(2))
        out.append(
            FiveTuple(
                src,
                dst,
                rng.randrange(1, 65536),
                rng.randrange(1, 65536),
                rng.choice((IPPROTO_TCP, IPPROTO_UDP)),
            )
        )
    return out


def test_program_hash_equals_core_flow_hash_for_random_tuples(world: World) -> None:
    tuples = _random_tuples(1200)
    _check(world, tuples, [flow_hash(t) for t in tuples])


def test_program_hash_matches_shared_vectors(world: World) -> None:
    if not VECTORS.exists():
        pytest.fail(f"{VECTORS} is missing (generated with core/flow.py)")
    vectors = json.loads(VECTORS.read_text())
    if isinstance(vectors, dict):
        vectors = vectors.get("vectors", [])
    tuples, hashes = [], []
    for vec in vectors:
        t = FiveTuple(
            ip_address(vec["src_ip"]),
            ip_address(vec["dst_ip"]),
            vec["src_port"],
            vec["dst_port"],
            vec["proto"],
        )
        same_family = t.src_ip.version == t.dst_ip.version
        if t.proto in (IPPROTO_TCP, IPPROTO_UDP) and same_family and t.src_port and t.dst_port:
            assert t.key().hex() == vec["key_hex"]
            tuples.append(t)
            raw = vec["hash"]
            hashes.append(int(raw, 0) if isinstance(raw, str) else int(raw))
    assert len(tuples) >= 1000
    _check(world, tuples, hashes)
