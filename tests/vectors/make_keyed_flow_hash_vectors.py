"""Regenerate tests/vectors/flow_hash_keyed.json: keyed flow hash vectors (``hash_key:`` VIPs) computed
with core/flow.py: the low 32 bits of SipHash-1-3 of the 40-byte flow key.

    python tests/vectors/make_keyed_flow_hash_vectors.py           # rewrite the file
    python tests/vectors/make_keyed_flow_hash_vectors.py --check   # exit 1 if the file is not up to date

Deterministic (fixed keys, a fixed seed, no clock). Every vector says its hash key (test keys, not
secrets). The core, the native engine's pick.c (tests/dataplane/engine/test_pick_keyed.py) and the
XDP program (tests/dataplane/xdp/test_flow_hash_keyed.py) are checked against them; the unkeyed
vectors (flow_hash.json, make_flow_hash_vectors.py) are untouched by keys.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from sluice.core.flow import IPPROTO_TCP, IPPROTO_UDP, FiveTuple, HashKey, flow_hash

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by path (tests/core)
import make_flow_hash_vectors as unkeyed

PATH = Path(__file__).with_name("flow_hash_keyed.json")
SEED = 20261202
KEYS = (
    "000102030405060708090a0b0c0d0e0f",  # the SipHash paper's and the kernel's test key
    "ffffffffffffffffffffffffffffffff",
    "9c1f5e0a7b3d42e8a6f0c4d21b8e7359",
)
RANDOM_PER_KEY = 400
EDGE_PORTS = (0, 1, 65535)


def _vector(key_hex: str, t: FiveTuple) -> dict[str, Any]:
    return {
        "hash_key": key_hex,
        "src_ip": str(t.src_ip),
        "dst_ip": str(t.dst_ip),
        "src_port": t.src_port,
        "dst_port": t.dst_port,
        "proto": t.proto,
        "key_hex": t.key().hex(),
        "hash": flow_hash(t, HashKey.from_hex(key_hex)),
    }


def _tuples(rng: random.Random) -> list[FiveTuple]:
    tuples: list[FiveTuple] = []
    for v6 in (False, True):  # edge ports, both families, both protocols
        for sp in EDGE_PORTS:
            for dp in EDGE_PORTS:
                for proto in (IPPROTO_TCP, IPPROTO_UDP):
                    tuples.append(
                        FiveTuple(unkeyed.random_ip(rng, v6), unkeyed.random_ip(rng, v6), sp, dp, proto)
                    )
    for i in range(RANDOM_PER_KEY):  # random flows: two in three IPv4
        v6 = i % 3 == 2
        tuples.append(
            FiveTuple(
                unkeyed.random_ip(rng, v6),
                unkeyed.random_ip(rng, v6),
                rng.randrange(1, 65536),
                rng.randrange(1, 65536),
                rng.choice((IPPROTO_TCP, IPPROTO_UDP)),
            )
        )
    return tuples


def build_vectors() -> dict[str, Any]:
    """The whole file's content."""
    rng = random.Random(SEED)
    return {
        "description": (
            "sluice keyed flow hash: low 32 bits of SipHash-1-3 (k0 = hash_key bytes 0..7, k1 = bytes "
            "8..15, little-endian) of the 40-byte 5-tuple key (src/sluice/core/flow.py)"
        ),
        "generator": f"tests/vectors/make_keyed_flow_hash_vectors.py (random.Random({SEED}))",
        "vectors": [_vector(key, t) for key in KEYS for t in _tuples(rng)],
    }


def render() -> str:
    return unkeyed.render_vectors(build_vectors())


def main(argv: list[str]) -> int:
    return unkeyed.write_or_check(PATH, render(), argv, Path(__file__).name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
