"""The XDP program hashes a keyed VIP's new flows (``hash_key:``, vip_meta VIP_F_HASH_KEYED) exactly
as core/flow.py does: SipHash-1-3 under the VIP's key, checked on the shared keyed vectors through
BPF_PROG_TEST_RUN, and an unkeyed VIP beside it keeps MurmurHash3.

The hash is made visible as in test_flow_hash.py: an ipip VIP with outer-source prefix 0.0.0.0/0
puts the whole 32-bit hash in the outer source address, and slot s holds the backend BASE + s."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from sluice.core.flow import IPPROTO_TCP, FiveTuple, HashKey, flow_hash
from sluice.dataplane.xdp.maps import FWD_IPIP, VIP_F_HASH_KEYED, vip_key
from sluice.dataplane.xdp.vipstate import hash_key_of
from tests.dataplane.xdp.harness import TBackend, TVip, World
from tests.dataplane.xdp.test_flow_hash import BASE, FIRST_BACKEND, SLOTS, _program_hash_and_slot

KEYED = Path(__file__).parents[2] / "vectors" / "flow_hash_keyed.json"
KEY = HashKey.from_hex("a3c1e5f7092b4d6f8193a5b7c9d0e2f4")


def _keyed_world(world: World, key: HashKey | None) -> TVip:
    """The hash VIP of test_flow_hash.py, keyed with `key` (written again: the last call wins)."""
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
        hash_key=key,
    )
    world.add_vip(v)
    return v


def _syn_tuples(n: int) -> list[FiveTuple]:
    """TCP flows: a SYN is always hashed (never answered from the connection table)."""
    rng = random.Random(20261203)
    out = []
    for i in range(n):
        bits = 128 if i % 3 == 2 else 32
        src, dst = (ip_address(rng.getrandbits(bits)) for _ in range(2))
        out.append(FiveTuple(src, dst, rng.randrange(1, 65536), rng.randrange(1, 65536), IPPROTO_TCP))
    return out


def test_program_keyed_hash_matches_the_keyed_vectors(world: World) -> None:
    by_key: dict[str, list[tuple[FiveTuple, int]]] = {}
    for vec in json.loads(KEYED.read_text())["vectors"]:
        t = FiveTuple(
            ip_address(vec["src_ip"]),
            ip_address(vec["dst_ip"]),
            vec["src_port"],
            vec["dst_port"],
            vec["proto"],
        )
        if t.src_port and t.dst_port:  # a port 0 packet is not a flow the program sees
            assert t.key().hex() == vec["key_hex"]
            by_key.setdefault(vec["hash_key"], []).append((t, vec["hash"]))
    assert len(by_key) >= 3 and sum(map(len, by_key.values())) >= 1000
    mismatches = []
    for key_hex, cases in by_key.items():
        v = _keyed_world(world, HashKey.from_hex(key_hex))
        for t, h in cases:
            got = _program_hash_and_slot(world, v, t)
            if got != (h, h % SLOTS):
                mismatches.append((key_hex, t, h, got))
    assert not mismatches, mismatches[:5]


def test_a_keyed_vip_moves_flows_and_unkeyed_it_hashes_as_before(world: World) -> None:
    tuples = _syn_tuples(300)
    keyed = _keyed_world(world, KEY)
    keyed_got = [_program_hash_and_slot(world, keyed, t) for t in tuples]
    assert keyed_got == [(flow_hash(t, KEY), flow_hash(t, KEY) % SLOTS) for t in tuples]
    unkeyed = _keyed_world(world, None)
    unkeyed_got = [_program_hash_and_slot(world, unkeyed, t) for t in tuples]
    assert unkeyed_got == [(flow_hash(t), flow_hash(t) % SLOTS) for t in tuples]
    assert sum(k[1] != u[1] for k, u in zip(keyed_got, unkeyed_got, strict=True)) > 0.9 * len(tuples)


def test_the_vip_entry_carries_the_key_and_reads_back(world: World) -> None:
    v = _keyed_world(world, KEY)
    meta = world.maps.vips.lookup(vip_key(v.addr, v.port, v.proto))
    assert meta is not None and meta.flags & VIP_F_HASH_KEYED
    assert hash_key_of(meta) == KEY
    v = _keyed_world(world, None)
    meta = world.maps.vips.lookup(vip_key(v.addr, v.port, v.proto))
    assert meta is not None and hash_key_of(meta) is None
